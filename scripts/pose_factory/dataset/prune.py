"""`pose-sync prune-bucket`: keep each versioned batch once in R2, in the DVC remote, not also under `batches/`.

A batch is pruned only when every check below passes; anything else keeps it, with the reason:

1. the bucket holds it complete (marker and manifest agree), and that exact version (the marker's manifest
   sha256) is the one a `.dvc` file committed at HEAD records: the `.dir` listing it names holds
   manifest.json with the md5 of the bucket's manifest, and exactly the manifest's files;
2. the DVC remote holds every object of that listing with the manifest's size, and the `.dir` object
   itself, found in one listing of the remote (not assumed from a push log), and the manifest object's
   bytes there hash to the marker's sha256;
3. each bucket object's MD5 is the md5 the listing names for its path and each remote object's MD5 is its
   own name: the content, not only the names, is the same in both places. On S3 the listings' ETags give
   the MD5s for free (single-part uploads, which is every file DVC pushes under 100 MiB; a multipart
   object is checked by size only); a local-folder store has no ETags, so its objects are read and hashed.

Then, in this order: the tombstone `batches/<id>/_pruned.json` (pruned.schema.json: the manifest sha256,
the commit, the .dvc record, the remote), the completion marker (no pull starts after this), every file,
manifest.json last. The tombstone comes first because it is true from the moment it exists (the checks
passed) and it is all a rerun needs: with it, a rerun finishes the deletions without the manifest, which
may be gone already; without it (tombstone last), a crash mid-way would leave a batch that is neither
complete nor marked pruned and that no later run could prove safe to finish. `list` and `status` show the
batch as pruned from the tombstone on, and `pull` says how to get the version back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pose_factory.bucket.backends import LocalFolderStorage, ObjectInfo, ObjectMissingError, Storage, run_parallel
from pose_factory.bucket.batches import (
    batch_prefix,
    describe_batch,
    fetch_remote_manifest,
    inspect_tombstone,
    list_batches,
    read_marker,
)
from pose_factory.core import contract, killpoint
from pose_factory.core.errors import BatchNotFoundError, PoseFactoryError, RepositoryError, ToolError
from pose_factory.core.fsutil import md5_bytes, sha256_bytes
from pose_factory.core.layout import COMPLETE_MARKER_NAME, MANIFEST_NAME, TOMBSTONE_NAME
from pose_factory.core.progress import Progress
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvccache, dvcremote, dvcrepo

if TYPE_CHECKING:
    from pose_factory.core.models import Manifest

PRUNE_JSON_VERSION = 1


@dataclass
class PrunedBatch:
    batch_id: str
    action: str  # pruned | would-prune | already-pruned | kept
    reason: str = ""  # why it was kept
    objects_deleted: int = 0
    bytes_freed: int = 0
    git_commit: str = ""


@dataclass
class PruneReport:
    batches: list[PrunedBatch] = field(default_factory=list)
    dry_run: bool = False
    dvc_remote: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"version": PRUNE_JSON_VERSION, "dry_run": self.dry_run, "dvc_remote": self.dvc_remote,
                "batches": [asdict(b) for b in self.batches]}


class _Keep(Exception):
    """This batch stays in the bucket, for this reason."""


def _committed(settings: Settings, batch_id: str) -> tuple[str, dict[str, Any], str]:
    """(path of the .dvc file, its output record, the commit that last changed it) as HEAD has them."""
    root = settings.root
    for folder in (settings.mirror_dir, settings.archive_dir):
        rel = (folder / f"{batch_id}.dvc").relative_to(root).as_posix()
        try:
            text = dvcrepo.git(root, "show", f"HEAD:{rel}")
        except ToolError:
            continue
        out = dvcrepo.parse_recorded_out(text)
        if out is None or not out["md5"].endswith(".dir"):
            raise _Keep(f"{rel} at HEAD does not record a folder")
        commit = dvcrepo.git(root, "log", "-n", "1", "--format=%H", "HEAD", "--", rel).strip()
        return rel, {k: out[k] for k in dvccache.DVC_OUT_KEYS if k in out}, commit
    raise _Keep("no version of it is committed in git (pull it with --commit, or commit its .dvc file)")


def _listing(settings: Settings, remote: dvcremote.DvcRemote, dir_md5: str) -> dvccache.Md5s:
    """The files a .dir object lists: from the local cache when it holds it intact, else from the remote."""
    local = dvcrepo.cache_object(settings.root, dir_md5)
    data = local.read_bytes() if local.is_file() else b""
    if md5_bytes(data) != dir_md5.removesuffix(".dir"):
        try:
            data = remote.storage.read_bytes(remote.key(dir_md5))
        except ObjectMissingError:
            raise _Keep("the DVC remote does not hold the version committed in git (run `dvc push`)") from None
        if md5_bytes(data) != dir_md5.removesuffix(".dir"):
            raise _Keep(f"the DVC remote's listing {dir_md5} is damaged ({dvcremote.repair_hint([dir_md5])})")
    return dvccache.read_listing(data, remote.key(dir_md5))


def _single_part_md5(info: ObjectInfo | None) -> str | None:
    """An object's MD5 when its listing says it (an S3 ETag of a single-part upload)."""
    if info is None or not info.etag or "-" in info.etag or len(info.etag) != 32:
        return None
    return info.etag.lower()


@dataclass
class _Plan:
    batch_id: str
    manifest: Manifest
    manifest_bytes: bytes
    dvc_file: str
    out: dict[str, Any]
    commit: str
    files: dvccache.Md5s  # rel -> (size from the manifest, md5 from the committed listing)


def _prepare(storage: Storage, settings: Settings, remote: dvcremote.DvcRemote, batch_id: str) -> _Plan:
    """Check 1 (module docstring): the bucket's complete version is the one committed at HEAD."""
    try:
        manifest, manifest_bytes, _ = fetch_remote_manifest(storage, settings, batch_id, False)
    except BatchNotFoundError:
        raise _Keep("not in the bucket") from None
    except PoseFactoryError as exc:
        raise _Keep(f"not complete in the bucket: {exc.message}") from None
    dvc_file, out, commit = _committed(settings, batch_id)
    listed = _listing(settings, remote, out["md5"])
    manifest_md5 = md5_bytes(manifest_bytes)
    if listed.get(MANIFEST_NAME, (0, ""))[1] != manifest_md5:
        raise _Keep(f"the bucket holds another version than the one committed in {commit[:12]} "
                    "(pull and commit it first)")
    sizes = {entry["path"]: entry["size"] for entry in manifest["files"]}
    sizes[MANIFEST_NAME] = len(manifest_bytes)
    if set(listed) != set(sizes):
        raise _Keep(f"the version committed in {commit[:12]} does not list exactly the manifest's files")
    files = {rel: (sizes[rel], md5) for rel, (_, md5) in listed.items()}
    return _Plan(batch_id, manifest, manifest_bytes, dvc_file, out, commit, files)


def _verify(storage: Storage, settings: Settings, remote: dvcremote.DvcRemote, found: dict[str, tuple[int, str | None]],
            plan: _Plan) -> tuple[dict[str, Any], list[str], int]:
    """Checks 2 and 3 against the remote's listing; return (tombstone to write, keys to delete, their bytes)."""
    missing = [rel for rel, (size, md5) in plan.files.items()
               if md5 not in found or found[md5][0] != size or found[md5][1] not in (None, md5)]
    dir_md5 = plan.out["md5"]
    dir_missing = dir_md5 not in found or found[dir_md5][1] not in (None, dir_md5.removesuffix(".dir"))
    if missing or dir_missing:
        count = len(missing) + dir_missing
        # What `dvc push` would skip must go first: objects there with other bytes, and the .dir object when it is
        # there (damaged, or listing files that are not all there).
        there = [plan.files[rel][1] for rel in missing if plan.files[rel][1] in found]
        delete = there + ([dir_md5] if dir_md5 in found else [])
        raise _Keep(f"{count} object(s) of the version committed in {plan.commit[:12]} are not in the DVC remote, "
                    f"e.g. {missing[0] if missing else plan.out['md5']} ({dvcremote.repair_hint(delete)})")
    manifest_sha = sha256_bytes(plan.manifest_bytes)
    try:
        if sha256_bytes(remote.storage.read_bytes(remote.key(plan.files[MANIFEST_NAME][1]))) != manifest_sha:
            raise _Keep("the DVC remote's manifest.json is not the bucket's")
    except ObjectMissingError:
        raise _Keep("the DVC remote lost manifest.json while it was checked") from None
    prefix = batch_prefix(settings, plan.batch_id)
    objects = {info.key: info for info in storage.list_objects(prefix)}
    read = _local_md5s(storage, [prefix + rel for rel in plan.files if prefix + rel in objects])
    for rel, (_, md5) in plan.files.items():
        etag = read.get(prefix + rel) or _single_part_md5(objects.get(prefix + rel))
        if etag is not None and etag != md5:
            raise _Keep(f"{rel} in the bucket is not the file the committed version records")
    marker = read_marker(storage, prefix + COMPLETE_MARKER_NAME) or {}
    if marker.get("manifest_sha256") != manifest_sha:
        raise _Keep("the batch changed in the bucket while it was checked")
    totals = plan.manifest["totals"]
    tombstone = {"version": 1, "batch_id": plan.batch_id, "manifest_sha256": manifest_sha, "git_commit": plan.commit,
                 "dvc_file": plan.dvc_file, "dvc": plan.out, "dvc_remote": remote.url,
                 "project": plan.manifest["project"], "created_at": plan.manifest["created_at"],
                 "samples": totals["samples"], "files": totals["files"], "bytes": totals["bytes"],
                 "pruned_at": contract.utc_now()}
    keys = [key for key in objects if key != prefix + TOMBSTONE_NAME]
    return tombstone, keys, sum(objects[key].size for key in keys)


def _remote_objects(remote: dvcremote.DvcRemote, wanted: set[str]) -> dict[str, tuple[int, str | None]]:
    """{oid: (size, MD5 if the listing gives one)} of the wanted objects the remote holds: one listing,
    keeping only what the batches need (a remote of many versions lists millions of objects)."""
    found = {}
    for info in remote.storage.list_objects(remote.prefix):
        rest = info.key[len(remote.prefix):]
        oid = rest[:2] + rest[3:] if len(rest) > 3 and rest[2] == "/" else ""
        if oid in wanted:
            found[oid] = (info.size, _single_part_md5(info))
    read = _local_md5s(remote.storage, [remote.key(oid) for oid in found])
    return {oid: (size, read.get(remote.key(oid), md5)) for oid, (size, md5) in found.items()}


def _local_md5s(storage: Storage, keys: list[str]) -> dict[str, str]:
    """{key: MD5} of objects in a local-folder store, each read once: it has no ETags, and its content is
    checked, not assumed (on S3 the listing's ETags are the MD5s). Empty for other stores."""
    if not isinstance(storage, LocalFolderStorage) or not keys:
        return {}

    def md5(_: str, data: bytes) -> str:
        return md5_bytes(data)

    return contract.map_files(storage.root, keys, md5)


def _delete(storage: Storage, settings: Settings, batch_id: str, keys: list[str], progress: Progress) -> int:
    """Delete a batch's objects after its tombstone: the marker first, the manifest last."""
    prefix = batch_prefix(settings, batch_id)
    marker, manifest = prefix + COMPLETE_MARKER_NAME, prefix + MANIFEST_NAME
    if marker in keys:
        storage.delete(marker)
        killpoint.reached("prune:after-unmark")
    files = [k for k in keys if k not in (marker, manifest)]
    with progress.task(f"prune {batch_id}", len(files)) as bar:
        def one(key: str) -> None:
            killpoint.reached("prune:delete")
            storage.delete(key)
            bar.advance()

        run_parallel(one, files, settings.concurrency * 2)
    killpoint.reached("prune:before-manifest")
    if manifest in keys:
        storage.delete(manifest)
    return len(keys)


def _leftovers(storage: Storage, settings: Settings, tombstone: dict[str, Any]) -> list[str] | None:
    """What a pruning a crash cut short left of the tombstone's version; None when the prefix holds a new
    render (publish removes the stale tombstone once it has uploaded everything)."""
    prefix = batch_prefix(settings, tombstone["batch_id"])
    keys = [info.key for info in storage.list_objects(prefix) if info.key != prefix + TOMBSTONE_NAME]
    marker = read_marker(storage, prefix + COMPLETE_MARKER_NAME)
    if marker is not None and marker["manifest_sha256"] != tombstone["manifest_sha256"]:
        return None
    if prefix + MANIFEST_NAME in keys and marker is None:
        try:
            if sha256_bytes(storage.read_bytes(prefix + MANIFEST_NAME, contract.MAX_MANIFEST_BYTES)) \
                    != tombstone["manifest_sha256"]:
                return None
        except ObjectMissingError:
            pass
    return keys


def prune_bucket(storage: Storage, settings: Settings, batch_ids: list[str] | None = None, *, dry_run: bool = False,
                 progress: Progress | None = None) -> PruneReport:
    """Delete from the bucket each batch whose exact version is committed in git and stored in the DVC remote."""
    dvcrepo.require_repository(settings.root)
    progress = progress or Progress(enabled=False)
    report = PruneReport(dry_run=dry_run)
    remote = dvcremote.default_remote(settings)
    if remote is None:
        raise RepositoryError("the default DVC remote is not one pose-sync can list (R2 through s3://, or a local "
                              "folder)", where=str(settings.root / ".dvc" / "config"),
                              hint="run `pose-sync init`; nothing is pruned that could not be checked")
    report.dvc_remote = remote.url
    storage.ensure_bucket()
    if batch_ids:
        chosen = list(dict.fromkeys(batch_ids))
    else:
        chosen = [b.batch_id for b in list_batches(storage, settings) if b.status in ("complete", "pruned")]
    plans: list[_Plan] = []
    for batch_id in chosen:
        prefix = batch_prefix(settings, batch_id)
        try:
            listed = describe_batch(storage, settings, batch_id)
        except BatchNotFoundError:
            report.batches.append(PrunedBatch(batch_id, "kept", "not in the bucket"))
            continue
        tombstone = inspect_tombstone(storage, prefix + TOMBSTONE_NAME)[0] if listed.status == "pruned" else None
        if tombstone is not None:
            keys = _leftovers(storage, settings, tombstone)
            if not keys:
                report.batches.append(PrunedBatch(batch_id, "already-pruned", git_commit=tombstone["git_commit"]))
                continue
            entry = PrunedBatch(batch_id, "would-prune" if dry_run else "pruned", git_commit=tombstone["git_commit"])
            if not dry_run:  # a pruning a crash cut short: the tombstone says the checks had passed
                entry.objects_deleted = _delete(storage, settings, batch_id, keys, progress)
            report.batches.append(entry)
            continue
        try:
            plans.append(_prepare(storage, settings, remote, batch_id))
        except _Keep as kept:
            report.batches.append(PrunedBatch(batch_id, "kept", str(kept)))
    if plans:
        wanted = {md5 for plan in plans for _, md5 in plan.files.values()} | {plan.out["md5"] for plan in plans}
        found = _remote_objects(remote, wanted)
        killpoint.reached("prune:after-listing")
    for plan in plans:
        try:
            tombstone, keys, size = _verify(storage, settings, remote, found, plan)
        except _Keep as kept:
            report.batches.append(PrunedBatch(plan.batch_id, "kept", str(kept)))
            continue
        entry = PrunedBatch(plan.batch_id, "would-prune" if dry_run else "pruned", objects_deleted=len(keys),
                            bytes_freed=size, git_commit=plan.commit)
        if not dry_run:
            storage.put_bytes(batch_prefix(settings, plan.batch_id) + TOMBSTONE_NAME, contract.dumps(tombstone))
            killpoint.reached("prune:after-tombstone")
            _delete(storage, settings, plan.batch_id, keys, progress)
        report.batches.append(entry)
    report.batches.sort(key=lambda b: b.batch_id)
    return report
