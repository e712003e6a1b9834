"""One storage interface, two backends: a Cloudflare R2 / S3 bucket through boto3, and a local folder
acting as the bucket (the embedded default, no account needed).

Keys are POSIX paths inside the bucket. Every key is checked before it touches the local disk, so a
key that tries to climb out of its folder is refused rather than written.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pose_factory.core.errors import CredentialsError, StorageError, UnsafeKeyError
from pose_factory.core.fsutil import PARTIAL_SUFFIX, STREAM_CHUNK, atomic_write_path, check_relative_path, file_digests
from pose_factory.core.settings import R2Credentials, Settings, resolve_backend

T = TypeVar("T")

# Single PUTs up to this size; above it, multipart with equal parts (R2 wants all but the last equal).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """An object in the bucket: key, size and a content fingerprint (MD5 for single-part uploads)."""

    key: str
    size: int
    etag: str | None


class ObjectMissingError(StorageError):
    """The object asked for does not exist."""


def check_key(key: str) -> str:
    """Return key if it is a safe object key (see check_relative_path)."""
    return check_relative_path(key, where=f"object key {key!r}")


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

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's content (small objects: manifests, markers)."""

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


class LocalFolderStorage(Storage):
    """A folder acting as the bucket: `<root>/<key>`. Writes are atomic, so readers never see half a file."""

    kind = "local"

    def __init__(self, root: Path, bucket: str):
        self.root = root
        self.bucket = bucket

    @property
    def description(self) -> str:
        return f"local folder {self.root}"

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # A symlink inside the bucket folder could point anywhere on disk: treat it like an escaping key.
        for candidate in (path, *path.parents):
            if candidate == self.root:
                break
            if candidate.is_symlink():
                raise UnsafeKeyError(f"symlink in the bucket folder: {key!r}", where=str(candidate),
                                     hint="the batch was written by a broken or hostile uploader; it is not pulled")
        return path

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames) + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
                if name.endswith(PARTIAL_SUFFIX):
                    continue
                full = Path(dirpath, name)
                key = full.relative_to(base).as_posix()
                if not key.startswith(prefix):
                    continue
                if full.is_symlink():
                    raise UnsafeKeyError(f"symlink in the bucket folder: {key!r}", where=str(full),
                                         hint="the batch was written by a broken or hostile uploader; it is not "
                                              "pulled")
                yield ObjectInfo(key, full.stat().st_size, file_digests(full)[1])

    def list_folders(self, prefix: str) -> list[str]:
        folder = self.root.joinpath(*[p for p in prefix.split("/") if p])
        if not folder.is_dir():
            return []
        return sorted(entry.name for entry in folder.iterdir() if entry.is_dir())

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        if not path.is_file():
            return None
        return ObjectInfo(key, path.stat().st_size, file_digests(path)[1])

    def read_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectMissingError("no such object", where=f"{self.description}: {key}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        with atomic_write_path(self._path(key)) as tmp:
            tmp.write_bytes(data)

    def upload_file(self, key: str, path: Path, sha256: str) -> None:
        with atomic_write_path(self._path(key)) as tmp:
            shutil.copyfile(path, tmp)

    def download_file(self, key: str, dest: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectMissingError("no such object", where=f"{self.description}: {key}")
        with atomic_write_path(dest) as tmp:
            shutil.copyfile(source, tmp)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage(Storage):
    """An S3-compatible bucket (Cloudflare R2, or the local SeaweedFS server) through boto3."""

    kind = "r2"

    def __init__(self, credentials: R2Credentials, bucket: str, *, concurrency: int = 8, max_attempts: int = 8,
                 connect_timeout_s: float = 10, read_timeout_s: float = 60):
        import boto3
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
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=credentials.endpoint_url,
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            config=config,
        )

    @property
    def description(self) -> str:
        return f"bucket {self.bucket} at {self.endpoint_url}"

    @contextmanager
    def _translate(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn botocore failures into typed errors that say what to do."""
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        where = f"{self.description}" + (f": {key}" if key else "")
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (action == "open the bucket" and status == 404):
                raise StorageError(f"bucket '{self.bucket}' does not exist", where=self.endpoint_url,
                                   hint="create it in the Cloudflare dashboard, or set POSE_FACTORY_R2_BUCKET / "
                                        "'bucket' in config/local.yaml to the right name") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissingError("no such object", where=where) from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Unauthorized",
                        "InvalidToken", "403") or status in (401, 403):
                raise CredentialsError(f"the store refused the credentials while trying to {action} ({code or status})",
                                       where=where, hint="check CLOUDFLARE_R2_ACCESS_KEY_ID / "
                                       "CLOUDFLARE_R2_SECRET_ACCESS_KEY and that the token may read and write "
                                       "this bucket") from None
            raise StorageError(f"could not {action}: {code or 'HTTP ' + str(status)} after retries", where=where,
                               hint="the store is failing or overloaded; run the command again (it resumes)") from None
        except EndpointConnectionError:
            raise StorageError(f"cannot reach the S3 endpoint to {action}", where=self.endpoint_url,
                               hint="check the network, CLOUDFLARE_R2_ACCOUNT_ID or POSE_FACTORY_R2_ENDPOINT") from None
        except BotoCoreError as exc:
            raise StorageError(f"could not {action}: {type(exc).__name__}", where=where,
                               hint="the connection failed repeatedly; check the network and run the command "
                                    "again (it resumes)") from None

    def ensure_bucket(self) -> None:
        # Never create an R2 bucket implicitly: a typo in the bucket name must be an error, not a new bucket.
        with self._translate("open the bucket"):
            self._client.head_bucket(Bucket=self.bucket)

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translate("list objects", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
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

    def read_bytes(self, key: str) -> bytes:
        with self._translate("read", key):
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

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
        with atomic_write_path(dest) as tmp, self._translate("download", key):
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with tmp.open("wb") as out:
                for chunk in body.iter_chunks(STREAM_CHUNK):
                    out.write(chunk)

    def delete(self, key: str) -> None:
        with self._translate("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)


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
