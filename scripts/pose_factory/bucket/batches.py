"""Batches in the bucket: publish one (the pod-side upload) and list them.

Publish order is what makes a half-uploaded batch recognisable: an old completion marker is removed
first, then manifest.json, then every file, then stale objects of an earlier render, and the marker
`_complete.json` last. Re-running after an interruption uploads only what is missing or different.

What the bucket holds is untrusted input, judged one batch at a time: a batch with a hostile or broken
object is listed as `invalid` with its problem, and every other batch is listed and pulled as usual.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pose_factory.bucket.backends import (
    ObjectInfo,
    ObjectMissingError,
    S3Storage,
    Storage,
    check_key,
    join_key,
    run_parallel,
)
from pose_factory.core import contract, killpoint, schemas
from pose_factory.core.errors import (
    BatchNotFoundError,
    BatchPrunedError,
    CredentialsError,
    IntegrityError,
    PoseFactoryError,
    SchemaError,
    StorageError,
    UnsafeKeyError,
)
from pose_factory.core.fsutil import check_relative_path, md5_bytes
from pose_factory.core.layout import COMPLETE_MARKER_NAME, MANIFEST_NAME, TOMBSTONE_NAME
from pose_factory.core.progress import Progress
from pose_factory.core.settings import Settings

if TYPE_CHECKING:
    from pose_factory.core.models import Job, Manifest

LIST_JSON_VERSION = 1
PUBLISH_JSON_VERSION = 1


def batch_prefix(settings: Settings, batch_id: str) -> str:
    """`<batches prefix><batch_id>/`."""
    return join_key(settings.prefixes.batches, batch_id) + "/"


def _checked_prefix(settings: Settings, batch_id: str) -> str:
    """The batch's prefix, refusing a folder name that cannot be a batch id.

    Its manifest's batch_id must equal the folder name and match the contract's pattern, so a folder named
    otherwise (control characters, bidi overrides, markup, undecodable bytes) can never be pulled.
    """
    if not contract.is_batch_id(batch_id):
        raise UnsafeKeyError(f"folder name {batch_id!r} is not a batch id (YYYY-MM-DD_project, lower-case)",
                             where=batch_prefix(settings, batch_id),
                             hint="the batch was written by a broken or hostile uploader; it is not pulled")
    return check_key(batch_prefix(settings, batch_id).rstrip("/")) + "/"


@dataclass(frozen=True)
class PublishResult:
    batch_id: str
    destination: str
    files: int
    uploaded: int
    skipped: int
    uploaded_bytes: int
    removed_stale: int
    already_complete: bool

    def as_json(self) -> dict[str, Any]:
        return {"version": PUBLISH_JSON_VERSION, **asdict(self)}


def _same_object(storage: Storage, remote: ObjectInfo | None, size: int, sha256: str, md5: str) -> bool:
    """True when the object in the bucket already holds exactly this content."""
    if remote is None or remote.size != size:
        return False
    if remote.etag is None:  # the listing had no fingerprint (local folder): ask for this object's
        remote = storage.head(remote.key)
        if remote is None:
            return False
    if remote.etag and "-" not in remote.etag:
        return remote.etag == md5
    # Multipart ETags are not an MD5 of the content: fall back to the sha256 stored at upload.
    return isinstance(storage, S3Storage) and storage.head_sha256(remote.key) == sha256


def publish_batch(storage: Storage, settings: Settings, batch_dir: Path, *, progress: Progress | None = None
                  ) -> PublishResult:
    """Verify a local batch against its manifest, upload it, and mark it complete last."""
    progress = progress or Progress(enabled=False)
    batch_dir = batch_dir.resolve()
    manifest = contract.load_manifest(batch_dir)
    batch_id = manifest["batch_id"]
    if batch_dir.name != batch_id:
        raise IntegrityError(f"the folder is named {batch_dir.name!r} but its manifest says batch_id {batch_id!r}",
                             where=str(batch_dir / MANIFEST_NAME), hint="rename the folder to its batch id")
    digests = contract.verify_batch(batch_dir, manifest, with_md5=True)  # MD5s to compare with S3 ETags
    manifest_bytes = (batch_dir / MANIFEST_NAME).read_bytes()
    marker = contract.completion_marker(manifest, manifest_bytes)
    prefix = batch_prefix(settings, batch_id)
    marker_key, manifest_key = prefix + COMPLETE_MARKER_NAME, prefix + MANIFEST_NAME

    storage.ensure_bucket()
    storage.remove_partials(prefix)  # what an earlier, killed publish of this batch left
    remote = {info.key: info for info in storage.list_objects(prefix)}
    existing_marker = read_marker(storage, marker_key) if marker_key in remote else None
    if existing_marker and existing_marker.get("manifest_sha256") != marker["manifest_sha256"]:
        # A new render of the same batch: un-mark first, so nobody pulls a mix of two renders.
        storage.delete(marker_key)
        existing_marker = None
        killpoint.reached("publish:after-unmark")

    wanted = {prefix + rel: (rel, *digests[rel]) for rel in digests}
    to_upload = [(key, rel, size, sha) for key, (rel, size, sha, md5) in wanted.items()
                 if not _same_object(storage, remote.get(key), size, sha, md5)]
    stale = sorted(k for k in remote if k not in wanted and k not in (manifest_key, marker_key))
    if existing_marker and (to_upload or stale):
        # Same manifest but damaged or missing objects: un-mark while repairing.
        storage.delete(marker_key)
        existing_marker = None
    manifest_md5 = md5_bytes(manifest_bytes)
    if not _same_object(storage, remote.get(manifest_key), len(manifest_bytes), marker["manifest_sha256"],
                        manifest_md5):
        storage.put_bytes(manifest_key, manifest_bytes)
    killpoint.reached("publish:after-manifest")
    total_bytes = sum(size for _, _, size, _ in to_upload)
    with progress.task(f"publish {batch_id}", total_bytes, "bytes") as bar:
        def upload(item: tuple[str, str, int, str]) -> None:
            key, rel, size, sha = item
            killpoint.reached("publish:upload")
            storage.upload_file(key, batch_dir / rel, sha)
            bar.advance(size)

        run_parallel(upload, to_upload, settings.concurrency)
    for key in stale:
        storage.delete(key)
    killpoint.reached("publish:before-marker")
    already = existing_marker is not None and not to_upload and not stale
    if not already:
        storage.put_bytes(marker_key, contract.dumps(marker))
    return PublishResult(batch_id, f"{storage.description}: {prefix}", len(wanted), len(to_upload),
                         len(wanted) - len(to_upload), total_bytes, len(stale), already)


def inspect_marker(storage: Storage, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """(marker, None) for a well-formed completion marker, (None, problem) for a damaged one, (None, None)
    when there is none. Read with a size cap and a bounded parser."""
    return _inspect(storage, key, "complete", COMPLETE_MARKER_NAME)


def inspect_tombstone(storage: Storage, key: str) -> tuple[dict[str, Any] | None, str | None]:
    """Like inspect_marker, for the tombstone `_pruned.json` prune-bucket leaves (pruned.schema.json)."""
    return _inspect(storage, key, "pruned", TOMBSTONE_NAME)


def _inspect(storage: Storage, key: str, schema: str, name: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        document = schemas.parse_json(storage.read_bytes(key, contract.MAX_MARKER_BYTES), key)
    except ObjectMissingError:
        return None, None
    except SchemaError as exc:
        return None, f"damaged {name}: {exc.message}"
    found = schemas.problems(document, schema, key)
    if found:
        return None, f"damaged {name}: {found[0].field}: expected {found[0].expected}, found {found[0].found}"
    return document, None


def read_marker(storage: Storage, key: str) -> dict[str, Any] | None:
    """The completion marker if it exists and is well-formed; a damaged marker counts as absent."""
    return inspect_marker(storage, key)[0]


@dataclass(frozen=True)
class BatchListing:
    batch_id: str
    project: str | None
    created_at: str | None
    samples: int | None
    files: int | None
    bytes: int | None
    status: str  # complete | uploading | pruned | invalid (see `problem`)
    problem: str | None = None
    manifest_sha256: str | None = None  # of the version a complete batch's marker (or a pruned one's tombstone) names
    pruned: dict[str, Any] | None = None  # pruned: the commit and .dvc record to get the version back from DVC

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def day(self) -> str:
        return (self.created_at or self.batch_id)[:10]


def _invalid(batch_id: str, problem: str) -> BatchListing:
    return BatchListing(batch_id, None, None, None, None, None, "invalid", problem)


def describe_batch(storage: Storage, settings: Settings, batch_id: str) -> BatchListing:
    """What the bucket holds for one batch id: complete (marker), uploading, or invalid with its problem.

    Raises only for the store itself failing (StorageError, CredentialsError) and for an id with no
    object at all (BatchNotFoundError); anything wrong with the batch's own objects is its `problem`.
    """
    try:
        return _describe(storage, settings, batch_id)
    except (BatchNotFoundError, CredentialsError):
        raise
    except StorageError as exc:
        if isinstance(exc, ObjectMissingError):
            return _invalid(batch_id, exc.message)
        raise
    except PoseFactoryError as exc:
        return _invalid(batch_id, str(exc))


def pruned_listing(tombstone: dict[str, Any]) -> BatchListing:
    """A pruned batch as list shows it, from its tombstone."""
    return BatchListing(tombstone["batch_id"], tombstone["project"], tombstone["created_at"], tombstone["samples"],
                        tombstone["files"], tombstone["bytes"], "pruned", manifest_sha256=tombstone["manifest_sha256"],
                        pruned={k: tombstone[k] for k in ("git_commit", "dvc_file", "dvc", "dvc_remote", "pruned_at")})


def _describe(storage: Storage, settings: Settings, batch_id: str) -> BatchListing:
    prefix = _checked_prefix(settings, batch_id)
    marker, marker_problem = inspect_marker(storage, prefix + COMPLETE_MARKER_NAME)
    tombstone, tombstone_problem = (None, None) if marker_problem else inspect_tombstone(storage,
                                                                                         prefix + TOMBSTONE_NAME)
    if tombstone_problem:
        return _invalid(batch_id, tombstone_problem)
    if tombstone is not None and tombstone["batch_id"] != batch_id:
        return _invalid(batch_id, f"{TOMBSTONE_NAME} says batch_id {tombstone['batch_id']!r}")
    if marker is not None:
        if marker["batch_id"] != batch_id:
            return _invalid(batch_id, f"{COMPLETE_MARKER_NAME} says batch_id {marker['batch_id']!r}")
        if tombstone is not None and tombstone["manifest_sha256"] == marker["manifest_sha256"]:
            return pruned_listing(tombstone)  # being pruned: the tombstone comes first, the marker goes next
        return BatchListing(batch_id, marker["project"], marker["created_at"], marker["samples"], marker["files"],
                            marker["bytes"], "complete", manifest_sha256=marker["manifest_sha256"])
    if marker_problem:
        return _invalid(batch_id, marker_problem)
    manifest_key = prefix + MANIFEST_NAME
    try:
        manifest_bytes = storage.read_bytes(manifest_key, contract.MAX_MANIFEST_BYTES)
        if tombstone is not None and contract.sha256_bytes(manifest_bytes) == tombstone["manifest_sha256"]:
            return pruned_listing(tombstone)
        manifest = contract.parse_manifest_bytes(manifest_bytes, manifest_key)
    except ObjectMissingError:
        if tombstone is not None:
            return pruned_listing(tombstone)
        if not any(True for _ in storage.list_objects(prefix)):
            raise BatchNotFoundError(f"no batch {batch_id!r}", where=storage.description,
                                     hint="run `pose-sync list` to see the batches there") from None
        return BatchListing(batch_id, None, None, None, None, None, "uploading", "no manifest.json yet")
    except SchemaError as exc:
        return _invalid(batch_id, f"bad manifest: {exc.message}")
    if manifest["batch_id"] != batch_id:
        return _invalid(batch_id, f"{MANIFEST_NAME} says batch_id {manifest['batch_id']!r}")
    totals = manifest["totals"]
    return BatchListing(batch_id, manifest["project"], manifest["created_at"], totals["samples"], totals["files"],
                        totals["bytes"], "uploading")


def pruned_error(tombstone: dict[str, Any], storage: Storage) -> BatchPrunedError:
    """What pull says about a pruned batch: where its version is, and the commands that bring it back."""
    batch_id, commit, dvc_file = tombstone["batch_id"], tombstone["git_commit"], tombstone["dvc_file"]
    return BatchPrunedError(f"{batch_id} was pruned from the bucket: the version committed in {commit[:12]} is "
                            f"stored in the DVC remote {tombstone['dvc_remote']}", tombstone=tombstone,
                            where=storage.description,
                            hint=f"`pose-sync fetch {batch_id}` brings it back (`git checkout {commit[:12]} -- "
                                 f"{dvc_file}` first if this commit has no {Path(dvc_file).name}); plain `dvc pull` "
                                 "works too")


def list_batches(storage: Storage, settings: Settings, *, project: str | None = None, since: date | None = None,
                 until: date | None = None) -> list[BatchListing]:
    """Every batch under the batches prefix, optionally filtered, newest first; bad ones as `invalid` rows.

    Batches are described in parallel (settings.concurrency at a time): each costs one or two requests,
    and a bucket of a few hundred batches would otherwise take as many round trips one after the other.
    """
    def describe(batch_id: str) -> BatchListing | None:
        try:
            return describe_batch(storage, settings, batch_id)
        except BatchNotFoundError:
            return None

    folders = storage.list_folders(settings.prefixes.batches)
    with ThreadPoolExecutor(max(1, min(settings.concurrency, len(folders)))) as pool:
        futures = [pool.submit(describe, batch_id) for batch_id in folders]
        try:
            described = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    found = []
    for listing in described:
        if listing is None:
            continue
        if project and listing.project != project:
            continue
        if since and listing.day < since.isoformat():
            continue
        if until and listing.day > until.isoformat():
            continue
        found.append(listing)
    return sorted(found, key=lambda b: (b.created_at or "", b.batch_id), reverse=True)


def list_json(storage: Storage, batches: list[BatchListing]) -> dict[str, Any]:
    """The versioned `list --json` document."""
    return {"version": LIST_JSON_VERSION, "backend": storage.kind, "bucket": storage.bucket,
            "batches": [b.as_dict() for b in batches]}


def fetch_remote_manifest(storage: Storage, settings: Settings, batch_id: str, allow_incomplete: bool
                          ) -> tuple[Manifest, bytes, list[str]]:
    """Fetch and check what the bucket holds for a batch before a pull; return (manifest, its bytes, object keys).

    Everything that can be refused is refused here, before a byte is downloaded: unsafe keys, a marker of
    another batch or another manifest, a manifest over its size cap, nested too deep or breaking the schema,
    and paths that cannot all be written on a laptop (see contract.path_problems).
    """
    prefix = _checked_prefix(settings, batch_id)
    keys = [info.key for info in storage.list_objects(prefix)]
    if not keys:
        raise BatchNotFoundError(f"no batch {batch_id!r}", where=storage.description,
                                 hint="`pose-sync list` shows the batches there")
    for key in keys:
        check_key(key)  # a key with '..', a backslash or an empty segment would escape the batch folder
    marker, marker_problem = inspect_marker(storage, prefix + COMPLETE_MARKER_NAME)
    if prefix + TOMBSTONE_NAME in keys:
        tombstone, _ = inspect_tombstone(storage, prefix + TOMBSTONE_NAME)
        if tombstone is not None and (marker is None or marker["manifest_sha256"] == tombstone["manifest_sha256"]):
            raise pruned_error(tombstone, storage)
    if marker is not None and marker["batch_id"] != batch_id:
        raise IntegrityError(f"{COMPLETE_MARKER_NAME} says batch_id {marker['batch_id']!r}",
                             where=prefix + COMPLETE_MARKER_NAME,
                             hint="the marker belongs to another batch; re-publish this batch from the pod")
    if prefix + MANIFEST_NAME not in keys:
        raise IntegrityError("the batch has no manifest.json yet: it is still uploading", where=f"{prefix}",
                             hint="wait for the pod to finish, then pull again")
    manifest_bytes = storage.read_bytes(prefix + MANIFEST_NAME, contract.MAX_MANIFEST_BYTES)
    if marker is None and not allow_incomplete:
        if marker_problem:
            raise IntegrityError(marker_problem, where=prefix + COMPLETE_MARKER_NAME,
                                 hint="re-publish the batch from the pod, or pass --allow-incomplete to pull it "
                                      "if every file its manifest lists is there")
        raise IntegrityError("the batch is still uploading (no _complete.json)", where=prefix,
                             hint="wait for the pod to finish, or pass --allow-incomplete to pull it if every "
                                  "file its manifest lists is already there")
    if marker is not None and marker["manifest_sha256"] != contract.sha256_bytes(manifest_bytes):
        raise IntegrityError("_complete.json belongs to another manifest: the batch is being re-uploaded",
                             where=prefix + COMPLETE_MARKER_NAME, hint="wait for the upload to finish, then pull again")
    manifest = contract.parse_manifest_bytes(manifest_bytes, prefix + MANIFEST_NAME)
    if manifest["batch_id"] != batch_id:
        raise IntegrityError(f"manifest.json says batch_id {manifest['batch_id']!r}", where=prefix + MANIFEST_NAME,
                             hint="the batch folder in the bucket is misnamed; fix it on the pod side")
    for entry in manifest["files"]:
        check_relative_path(entry["path"], where=f"{prefix}{MANIFEST_NAME}: files[].path")
    clashes = contract.path_problems([entry["path"] for entry in manifest["files"]])
    if clashes:
        raise UnsafeKeyError(f"{len(clashes)} path(s) in manifest.json cannot all be written as files here or on a "
                             f"Mac:\n" + schemas.summarise(clashes), where=prefix + MANIFEST_NAME,
                             hint="paths must differ by more than case, no path may also be a folder, names are at "
                                  f"most {contract.MAX_NAME_BYTES} bytes; fix the batch on the pod side")
    listed = {prefix + entry["path"] for entry in manifest["files"]}
    missing = sorted(listed - set(keys))
    if missing:
        raise IntegrityError(f"{len(missing)} file(s) listed in manifest.json are not in the bucket, e.g. "
                             f"{missing[0][len(prefix):]}", where=prefix,
                             hint="the upload is incomplete; run `pose-sync publish` again on the pod")
    return manifest, manifest_bytes, keys


# --- batches rendered in shards by several pods (`job submit --pods K`) ------------------------------------
#
# Each pod renders a contiguous range of the job's samples as a partial batch folder (same batch id, its own
# samples and files, a manifest of those only) and publishes it with `publish_shard`: its files go straight to
# their final keys under `batches/<id>/` (nothing to copy later), then a shard record (that partial manifest
# plus MD5s) under the job's prefix, last. The laptop's `job watch` assembles: `assemble_batch` checks every
# shard's objects against its record (sizes and ETags from one listing, no download), writes the one
# manifest.json of the batch, removes objects of an earlier render, and the completion marker last.

SHARD_RECORD_VERSION = 1


def complete_manifest(storage: Storage, settings: Settings, batch_id: str) -> Manifest | None:
    """The batch's manifest when the batch is complete in the bucket (marker there and matching), else None."""
    prefix = batch_prefix(settings, batch_id)
    marker = read_marker(storage, prefix + COMPLETE_MARKER_NAME)
    if not marker or marker.get("batch_id") != batch_id:
        return None
    try:
        data = storage.read_bytes(prefix + MANIFEST_NAME)
    except ObjectMissingError:
        return None
    if marker["manifest_sha256"] != contract.sha256_bytes(data):
        return None
    try:
        return contract.parse_manifest_bytes(data, prefix + MANIFEST_NAME)
    except SchemaError:
        return None


def publish_shard(storage: Storage, settings: Settings, shard_dir: Path, record_key: str, identity: dict[str, Any],
                  *, progress: Progress | None = None) -> dict[str, Any]:
    """Upload one rendered shard (a partial batch folder) to its batch's final keys, then its shard record last."""
    progress = progress or Progress(enabled=False)
    shard_dir = shard_dir.resolve()
    manifest = contract.load_manifest(shard_dir)
    batch_id = manifest["batch_id"]
    if shard_dir.name != batch_id:
        raise IntegrityError(f"the folder is named {shard_dir.name!r} but its manifest says batch_id {batch_id!r}",
                             where=str(shard_dir / MANIFEST_NAME))
    digests = contract.verify_batch(shard_dir, manifest, with_md5=True)
    prefix = batch_prefix(settings, batch_id)
    storage.ensure_bucket()
    storage.remove_partials(prefix)
    remote = {info.key: info for info in storage.list_objects(prefix)}
    to_upload = [(prefix + rel, rel, size, sha) for rel, (size, sha, md5) in digests.items()
                 if not _same_object(storage, remote.get(prefix + rel), size, sha, md5)]
    if to_upload and prefix + COMPLETE_MARKER_NAME in remote:
        # New content under a batch marked complete: un-mark it first, so nobody pulls a mix of two renders.
        storage.delete(prefix + COMPLETE_MARKER_NAME)
    with progress.task(f"publish shard of {batch_id}", sum(item[2] for item in to_upload), "bytes") as bar:
        def upload(item: tuple[str, str, int, str]) -> None:
            key, rel, size, sha = item
            storage.upload_file(key, shard_dir / rel, sha)
            bar.advance(size)

        run_parallel(upload, to_upload, settings.concurrency)
    record = {"version": SHARD_RECORD_VERSION, **identity, "batch_id": batch_id, "manifest": manifest,
              "md5": {rel: md5 for rel, (_, _, md5) in digests.items()}}
    storage.put_bytes(record_key, contract.dumps(record))
    return record


def shard_problems(storage: Storage, settings: Settings, batch_id: str, records: list[dict[str, Any]]
                   ) -> dict[int, str]:
    """Shard index -> what is wrong with its objects in the bucket (missing, other size or content)."""
    prefix = batch_prefix(settings, batch_id)
    remote = {info.key: info for info in storage.list_objects(prefix)}
    problems: dict[int, str] = {}
    for record in records:
        bad = [entry["path"] for entry in record["manifest"]["files"]
               if not _same_object(storage, remote.get(prefix + entry["path"]), entry["size"], entry["sha256"],
                                   record["md5"].get(entry["path"], ""))]
        if bad:
            problems[record["shard"]] = f"{len(bad)} file(s) missing or changed in the bucket, e.g. {bad[0]}"
    return problems


def merge_shard_manifests(job: Job, batch_id: str, manifests: list[Manifest]) -> Manifest:
    """One batch manifest from the partial manifests of its shards; the same shards always give the same bytes."""
    first = manifests[0]
    for part in manifests:
        for name in ("conventions", "image", "modalities"):
            if part[name] != first[name] or part["batch_id"] != batch_id or part["job"] != job:
                raise IntegrityError(f"the shards of {batch_id} disagree on {name}, batch_id or job",
                                     where=batch_id, hint="render the job again")
    samples = sorted((s for part in manifests for s in part["samples"]), key=lambda s: s["sample_id"])
    expected = [contract.sample_id(i) for i in range(job["samples"])]
    if [s["sample_id"] for s in samples] != expected:
        raise IntegrityError(f"the shards of {batch_id} hold {len(samples)} samples, not the job's "
                             f"{job['samples']} in order", where=batch_id, hint="render the missing shard again")
    files = sorted((f for part in manifests for f in part["files"]), key=lambda f: f["path"])
    if len({f["path"] for f in files}) != len(files):
        raise IntegrityError(f"two shards of {batch_id} list the same file", where=batch_id)
    return {"schema_version": first["schema_version"], "batch_id": batch_id, "project": job["project"],
            "created_at": max(part["created_at"] for part in manifests), "job": job, "software": first["software"],
            "conventions": first["conventions"], "image": first["image"], "modalities": first["modalities"],
            "samples": samples, "files": files,
            "totals": {"samples": len(samples), "files": len(files), "bytes": sum(f["size"] for f in files)}}


@dataclass(frozen=True)
class AssembleResult:
    batch_id: str
    shards: int
    samples: int
    files: int
    removed_stale: int
    already_complete: bool


def assemble_batch(storage: Storage, settings: Settings, job: Job, batch_id: str,
                   records: list[dict[str, Any]]) -> AssembleResult:
    """Check every shard in the bucket, then write the batch's manifest once and its completion marker last."""
    from pose_factory.core import killpoint

    problems = shard_problems(storage, settings, batch_id, records)
    if problems:
        index, problem = sorted(problems.items())[0]
        raise IntegrityError(f"shard {index} of {batch_id}: {problem}", where=batch_prefix(settings, batch_id),
                             hint="render that shard again")
    manifest = merge_shard_manifests(job, batch_id, [r["manifest"] for r in sorted(records, key=lambda r: r["shard"])])
    schemas.check(manifest, "manifest", f"{batch_id}/{MANIFEST_NAME} (assembled)")
    manifest_bytes = contract.dumps(manifest)
    marker = contract.completion_marker(manifest, manifest_bytes)
    prefix = batch_prefix(settings, batch_id)
    marker_key, manifest_key = prefix + COMPLETE_MARKER_NAME, prefix + MANIFEST_NAME
    keys = {info.key for info in storage.list_objects(prefix)}
    wanted = {prefix + f["path"] for f in manifest["files"]}
    stale = sorted(k for k in keys if k not in wanted and k not in (manifest_key, marker_key))
    existing = read_marker(storage, marker_key) if marker_key in keys else None
    totals = manifest["totals"]
    if (existing and existing.get("manifest_sha256") == marker["manifest_sha256"] and not stale
            and contract.sha256_bytes(storage.read_bytes(manifest_key)) == marker["manifest_sha256"]):
        return AssembleResult(batch_id, len(records), totals["samples"], totals["files"], 0, True)
    if existing:
        storage.delete(marker_key)
    killpoint.reached("assemble:before-manifest")
    storage.put_bytes(manifest_key, manifest_bytes)
    killpoint.reached("assemble:after-manifest")
    for key in stale:
        storage.delete(key)
    storage.put_bytes(marker_key, contract.dumps(marker))
    return AssembleResult(batch_id, len(records), totals["samples"], totals["files"], len(stale), False)
