"""One storage interface, two backends: a Cloudflare R2 / S3 bucket through boto3, and a local folder
acting as the bucket (the embedded default, no account needed).

Keys are POSIX paths inside the bucket. Every key is checked before it touches the local disk, so a
key that tries to climb out of its folder is refused rather than written.

Bucket content is untrusted: small documents are read with a size cap, the local folder never opens
anything but a regular file (a FIFO would block for ever), and an S3 body cut mid-stream is fetched
again (botocore retries failed requests, not bodies that break while they are read).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import random
import shutil
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

from pose_factory.core.envnames import ENV_ACCESS_KEY, ENV_ACCOUNT_ID, ENV_BUCKET, ENV_ENDPOINT, ENV_SECRET_KEY
from pose_factory.core.errors import (
    CredentialsError,
    DocumentTooLargeError,
    ObjectMissingError,
    StorageError,
    UnsafeKeyError,
)
from pose_factory.core.fsutil import (
    PARTIAL_SUFFIX,
    STALE_PARTIAL_S,
    STREAM_CHUNK,
    atomic_write_path,
    check_relative_path,
    file_md5,
)
from pose_factory.core.settings import R2Credentials, Settings, resolve_backend

T = TypeVar("T")

# Single PUTs up to this size; above it, multipart with equal parts (R2 wants all but the last equal).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """An object in the bucket: key, size and a content fingerprint (MD5 for single-part uploads).

    A listing may leave the fingerprint out (None) where computing it costs a read of the object (the
    local folder); `head()` always has it.
    """

    key: str
    size: int
    etag: str | None


def check_key(key: str) -> str:
    """Return key if it is a safe object key (see check_relative_path)."""
    return check_relative_path(key, where=f"object key {key!r}")


def is_folder_marker(key: str, size: int) -> bool:
    """A zero-byte `some/folder/` object: S3 consoles and tools create these to show empty folders."""
    return key.endswith("/") and size == 0


def too_large(key: str, size: int, max_bytes: int, where: str) -> DocumentTooLargeError:
    """The error for an object over a read cap, naming the object and the cap."""
    return DocumentTooLargeError(f"{key} is {size:,} bytes, over the {max_bytes:,}-byte cap for this document",
                                 where=where, hint="the batch was written by a broken or hostile uploader; it is "
                                                   "not read (see README, 'Bad batches in the bucket')")


def _backoff_s(attempt: int) -> float:
    """Full-jitter exponential backoff: up to 0.1 s, 0.2 s, 0.4 s ... capped at 2 s."""
    return random.uniform(0, min(2.0, 0.1 * 2 ** (attempt - 1)))


class Storage(ABC):
    """What the rest of the tool needs from a bucket."""

    kind: str
    bucket: str

    @property
    @abstractmethod
    def description(self) -> str:
        """Where this storage is, for messages: never includes a secret."""

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with prefix, in key order."""

    @abstractmethod
    def list_folders(self, prefix: str) -> list[str]:
        """The immediate sub-folder names under prefix (S3 common prefixes)."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """The object's info, or None if it does not exist."""

    def exists(self, key: str) -> bool:
        """Whether the object exists (without reading it where the backend can tell)."""
        return self.head(key) is not None

    @abstractmethod
    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        """The object's content (small objects: manifests, markers); over max_bytes is DocumentTooLargeError."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a small object."""

    @abstractmethod
    def upload_file(self, key: str, path: Path, sha256: str) -> None:
        """Upload a local file; sha256 is stored as metadata where the backend has any."""

    @abstractmethod
    def download_file(self, key: str, dest: Path) -> None:
        """Download to dest atomically (a temporary file replaced into place)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; missing is fine."""

    def ensure_bucket(self) -> None:  # noqa: B027 (optional hook: most backends need nothing)
        """Make sure the bucket can be used: the local folder is created, an R2 bucket must exist."""

    def remove_partials(self, prefix: str, older_than_s: float = STALE_PARTIAL_S) -> int:
        """Delete what killed uploads left under prefix that readers never see; return how many. An S3 upload
        leaves nothing a listing shows (R2 aborts unfinished multipart uploads itself after 7 days)."""
        return 0


class LocalFolderStorage(Storage):
    """A folder acting as the bucket: `<root>/<key>`. Writes are atomic, so readers never see half a file.

    Only regular files are objects: FIFOs, sockets and devices are skipped by listings and never opened
    (opening a FIFO blocks until a writer comes). A symlink anywhere below the root is refused, since it
    could point anywhere on disk.
    """

    kind = "local"

    def __init__(self, root: Path, bucket: str):
        self.root = root
        self.bucket = bucket

    @property
    def description(self) -> str:
        return f"local folder {self.root}"

    def _refuse_symlink(self, key: str, where: Path) -> UnsafeKeyError:
        return UnsafeKeyError(f"symlink in the bucket folder: {key!r}", where=str(where),
                              hint="the batch was written by a broken or hostile uploader; it is not pulled")

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # A symlink inside the bucket folder could point anywhere on disk: treat it like an escaping key.
        for candidate in (path, *path.parents):
            if candidate == self.root:
                break
            if candidate.is_symlink():
                raise self._refuse_symlink(key, candidate)
        return path

    def _open_regular(self, key: str) -> int:
        """A read-only descriptor on the object's file; a missing or non-regular file is ObjectMissingError."""
        path = self._path(key)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: no symlink swapped in since.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectMissingError("no such object", where=f"{self.description}: {key}") from None
        except OSError as exc:
            if path.is_symlink():
                raise self._refuse_symlink(key, path) from None
            raise exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ObjectMissingError("no such object (not a regular file)", where=f"{self.description}: {key}")
        return fd

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _files(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(key, entry) of every regular file whose key starts with prefix, partial files included."""
        # Start at the deepest folder the prefix names: listing one batch must not walk every other one.
        folder_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if folder_key:
            check_key(folder_key)
        start = self.root
        for part in [p for p in folder_key.split("/") if p]:
            start = start / part
            if start.is_symlink():  # everything under the prefix would come from somewhere else
                raise self._refuse_symlink(start.relative_to(self.root).as_posix(), start)
        if not start.is_dir():
            return
        pending = [start]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    full = Path(entry.path)
                    key = full.relative_to(self.root).as_posix()
                    if not key.startswith(prefix):
                        continue
                    if entry.is_symlink():
                        raise self._refuse_symlink(key, full)
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(full)
                    elif entry.is_file(follow_symlinks=False):
                        yield key, entry

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        # Sizes only: hashing here would read every object of the batch once more.
        found = [ObjectInfo(key, entry.stat(follow_symlinks=False).st_size, None)
                 for key, entry in self._files(prefix) if not entry.name.endswith(PARTIAL_SUFFIX)]
        yield from sorted(found, key=lambda info: info.key)

    def remove_partials(self, prefix: str, older_than_s: float = STALE_PARTIAL_S) -> int:
        """Delete the partial files (an object being written) a killed upload left under prefix; return how many.
        Only those older than older_than_s: a younger one may belong to an upload still running."""
        removed, now = 0, time.time()
        for _, entry in list(self._files(prefix)):
            if entry.name.endswith(PARTIAL_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def list_folders(self, prefix: str) -> list[str]:
        folder = self.root.joinpath(*[p for p in prefix.split("/") if p])
        if not folder.is_dir():
            return []
        # Symlinked folders are listed too (following the link only to see that it is a folder), so that
        # list shows them as bad batches instead of hiding them.
        return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())

    def head(self, key: str) -> ObjectInfo | None:
        try:
            fd = self._open_regular(key)
        except ObjectMissingError:
            return None
        with os.fdopen(fd, "rb") as handle:
            return ObjectInfo(key, os.fstat(handle.fileno()).st_size, file_md5(handle))

    def exists(self, key: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(self._path(key), follow_symlinks=False).st_mode)
        except OSError:
            return False

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        with os.fdopen(self._open_regular(key), "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise too_large(key, size, max_bytes, f"{self.description}: {key}")
            data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
        if max_bytes is not None and len(data) > max_bytes:  # grew while being read
            raise too_large(key, len(data), max_bytes, f"{self.description}: {key}")
        return data

    def put_bytes(self, key: str, data: bytes) -> None:
        with atomic_write_path(self._path(key)) as tmp:
            tmp.write_bytes(data)

    def upload_file(self, key: str, path: Path, sha256: str) -> None:
        with atomic_write_path(self._path(key)) as tmp:
            shutil.copyfile(path, tmp)

    def download_file(self, key: str, dest: Path) -> None:
        with os.fdopen(self._open_regular(key), "rb") as source, atomic_write_path(dest) as tmp:
            with tmp.open("wb") as out:
                shutil.copyfileobj(source, out, STREAM_CHUNK)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage(Storage):
    """An S3-compatible bucket (Cloudflare R2, or the local SeaweedFS server) through boto3."""

    kind = "r2"

    def __init__(self, credentials: R2Credentials, bucket: str, *, concurrency: int = 8, max_attempts: int = 8,
                 connect_timeout_s: float = 10, read_timeout_s: float = 60):
        from botocore.config import Config

        self.bucket = bucket
        self.endpoint_url = credentials.endpoint_url
        config = Config(
            region_name="auto",
            signature_version="s3v4",
            # R2 rejects botocore's default CRC32 trailers (see shared notes): only send checksums when required.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=max(10, concurrency * 2),
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            s3={"addressing_style": "path"},
            user_agent_extra="pose-factory",
        )
        self._client = _boto3_session().client(
            "s3",
            endpoint_url=credentials.endpoint_url,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=config,
        )
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        _bound_connect_retries(self._client, connect_timeout_s)

    @property
    def description(self) -> str:
        return f"bucket {self.bucket} at {self.endpoint_url}"

    @contextmanager
    def _translate(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore failures into typed errors that say what to do."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError

        where = f"{self.description}" + (f": {key}" if key else "")
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (action == "open the bucket" and status == 404):
                raise StorageError(f"bucket '{self.bucket}' does not exist", where=self.endpoint_url,
                                   hint=f"create it in the Cloudflare dashboard, or set {ENV_BUCKET} / "
                                        "'bucket' in config/local.yaml to the right name") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissingError("no such object", where=where) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Unauthorized",
                        "InvalidToken", "403") or status in (401, 403):
                raise CredentialsError(f"the store refused the credentials while trying to {action} ({code or status})",
                                       where=where, hint=f"check {ENV_ACCESS_KEY} / {ENV_SECRET_KEY} and "
                                       "that the token may read and write this bucket") from None
            raise StorageError(f"could not {action}: {code or 'HTTP ' + str(status)} after retries", where=where,
                               hint="the store is failing or overloaded; run the command again (it resumes)") from None
        except (EndpointConnectionError, ConnectTimeoutError):
            raise StorageError(f"cannot reach the S3 endpoint to {action} (tried for {self.connect_timeout_s:g} s)",
                               where=self.endpoint_url,
                               hint=f"check the network, {ENV_ACCOUNT_ID} or {ENV_ENDPOINT}") from None
        except BotoCoreError as exc:
            raise StorageError(f"could not {action}: {type(exc).__name__} after {self.max_attempts} attempts",
                               where=where, hint="the connection kept failing; check the network and run the "
                                                 "command again (it resumes)") from None

    def ensure_bucket(self) -> None:
        # Never create an R2 bucket implicitly: a typo in the bucket name must be an error, not a new bucket.
        with self._translate("open the bucket"):
            self._client.head_bucket(Bucket=self.bucket)

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translate("list objects", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    if is_folder_marker(item["Key"], item["Size"]):
                        continue  # not an object of the batch: only shows the folder in S3 consoles
                    yield ObjectInfo(item["Key"], item["Size"], item.get("ETag", "").strip('"') or None)

    def list_folders(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        names: list[str] = []
        with self._translate("list folders", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    names.append(common["Prefix"][len(prefix):].rstrip("/"))
        return sorted(names)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._translate("read object info", key):
                response = self._client.head_object(Bucket=self.bucket, Key=key)
        except ObjectMissingError:
            return None
        return ObjectInfo(key, response["ContentLength"], response.get("ETag", "").strip('"') or None)

    def head_sha256(self, key: str) -> str | None:
        """The sha256 recorded in the object's metadata at upload, if any."""
        with self._translate("read object info", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        return response.get("Metadata", {}).get("sha256")

    def _get(self, action: str, key: str, consume: Callable[[dict], T]) -> T:
        """GET an object and hand the response to consume; a body cut mid-stream is fetched again.

        botocore retries requests that fail (5xx, refused or dropped connections), but not a body that
        breaks while it is read: that is retried here, up to max_attempts in all.
        """
        from botocore.exceptions import (
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        from urllib3.exceptions import HTTPError as Urllib3Error

        cut = (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError, Urllib3Error,
               ConnectionError)
        attempt = 0
        while True:
            attempt += 1
            with self._translate(action, key):
                response = self._client.get_object(Bucket=self.bucket, Key=key)
            try:
                return consume(response)
            except cut as exc:
                if attempt >= self.max_attempts:
                    raise StorageError(f"could not {action}: the connection broke while reading the object, "
                                       f"{attempt} times ({type(exc).__name__})", where=f"{self.description}: {key}",
                                       hint="check the network and run the command again (it resumes)") from None
                time.sleep(_backoff_s(attempt))
            finally:
                response["Body"].close()

    def read_bytes(self, key: str, max_bytes: int | None = None) -> bytes:
        def consume(response: dict) -> bytes:
            size = response.get("ContentLength")
            where = f"{self.description}: {key}"
            if max_bytes is not None and size is not None and size > max_bytes:
                raise too_large(key, size, max_bytes, where)
            data = response["Body"].read() if max_bytes is None else response["Body"].read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                raise too_large(key, len(data), max_bytes, where)
            if size is not None and len(data) != size:
                from botocore.exceptions import IncompleteReadError

                raise IncompleteReadError(actual_bytes=len(data), expected_bytes=size)
            return data

        return self._get("read", key, consume)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._translate("write", key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentLength=len(data))

    def upload_file(self, key: str, path: Path, sha256: str) -> None:
        size = path.stat().st_size
        with self._translate("upload", key):
            if size < MULTIPART_THRESHOLD:
                with path.open("rb") as body:
                    self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size,
                                            Metadata={"sha256": sha256})
            else:
                from boto3.s3.transfer import TransferConfig

                transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK,
                                          max_concurrency=4, use_threads=True)
                self._client.upload_file(str(path), self.bucket, key, Config=transfer,
                                         ExtraArgs={"Metadata": {"sha256": sha256}})

    def download_file(self, key: str, dest: Path) -> None:
        with atomic_write_path(dest) as tmp:
            def consume(response: dict) -> None:
                with tmp.open("wb") as out:  # each attempt starts the file again
                    for chunk in response["Body"].iter_chunks(STREAM_CHUNK):
                        out.write(chunk)

            self._get("download", key, consume)

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)


@cache
def _boto3_session():
    """One boto3 session per process: each client made from it reuses its loaded service models (a fresh
    session spends about 0.3 s loading them again). Clients are made from the main thread only.

    Timestamps in answers stay the strings S3 sends: nothing here reads them, and botocore's dateutil
    parsing of every LastModified was half the Python time of listing a batch (70,000 keys: about 10 s).
    """
    import boto3

    session = boto3.session.Session()
    session._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    return session


def _bound_connect_retries(client, budget_s: float) -> None:
    """Retry failed connections (refused, DNS, connect timeout) only until budget_s has passed.

    botocore would retry them max_attempts times with backoff of up to 20 s each: 30 to 60 s before an
    unreachable endpoint is reported. This handler runs before botocore's own retry handler and decides
    for connection failures only: a short backoff while time remains, else the error itself.
    """
    from botocore.exceptions import ConnectionError as BotoConnectionError

    started_key = "pose_factory_started"

    def note_start(context: dict, **_: object) -> None:
        context.setdefault(started_key, time.monotonic())

    def decide(request_dict: dict, attempts: int, caught_exception: BaseException | None = None, **_: object
               ) -> float | None:
        if not isinstance(caught_exception, BotoConnectionError):
            return None  # botocore's handler decides (5xx, throttling, dropped connections)
        started = request_dict.get("context", {}).get(started_key)
        remaining = budget_s - (time.monotonic() - started) if started is not None else 0
        if remaining <= 0:
            raise caught_exception
        return min(_backoff_s(attempts), remaining)

    client.meta.events.register("before-call.s3", note_start)
    client.meta.events.register_first("needs-retry.s3", decide)


def open_storage(settings: Settings, backend: str | None = None) -> Storage:
    """The storage the settings (and an optional CLI choice: auto, local, r2) point at."""
    kind, credentials = resolve_backend(settings, backend)
    if kind == "local":
        return LocalFolderStorage(settings.local_bucket_dir / settings.bucket, settings.bucket)
    assert credentials is not None
    return S3Storage(credentials, settings.bucket, concurrency=settings.concurrency,
                     max_attempts=settings.max_attempts, connect_timeout_s=settings.connect_timeout_s,
                     read_timeout_s=settings.read_timeout_s)


def run_parallel(function: Callable[[T], None], items: list[T], workers: int) -> None:
    """Call function on every item from a pool of threads; at the first failure, start no more and raise it.

    Ctrl-C cancels every queued call too, so it stops after the calls already running instead of after the
    whole list. The waiting thread wakes every quarter second: the kernel may hand SIGINT to a worker thread,
    and Python runs its handler only when the main thread next runs Python code.
    """
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        futures = [pool.submit(function, item) for item in items]
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done):
                break
        for future in pending:
            future.cancel()
        for future in futures:
            if future.done() and not future.cancelled():
                future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def join_key(*parts: str) -> str:
    """Join key parts with single slashes."""
    return posixpath.join(*[p.strip("/") for p in parts if p.strip("/")])
