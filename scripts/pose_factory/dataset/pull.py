"""`pose-sync pull`: bring complete batches from the bucket into the read-only mirror and version them.

A pull is a transaction (see journal.py): a batch counts as pulled only when its folder, its `.dvc`
file and its `params.yaml` registration agree. Under the repository lock, it first settles whatever a
killed pull, archive or restore left half-done, then checks what can be checked before a byte is
downloaded (params.yaml well-formed and writable, the data folders writable, the bucket's batch safe and
complete, enough free disk). Per batch it downloads into `data/raw/.pose-sync/staging/<batch>/` (files
already there and verified are kept, so an interrupted pull resumes; anything the manifest does not list
is removed), verifies every file's size and sha256, makes it read-only and journals it as verified. Then
it swaps the folder into `data/raw/pose-factory/<batch>/` (the commit point: a pull killed after it is
completed by the next run, one killed before it is rolled back), `dvc add`s it and registers it.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pose_factory.bucket import rclone
from pose_factory.bucket.backends import S3Storage, Storage, run_parallel
from pose_factory.bucket.batches import batch_prefix, fetch_remote_manifest, list_batches
from pose_factory.core import contract, killpoint
from pose_factory.core.errors import (
    BatchesFailedError,
    BatchNotFoundError,
    BatchPrunedError,
    DiskError,
    IntegrityError,
    PoseFactoryError,
    RepositoryError,
    ToolError,
    UsageError,
)
from pose_factory.core.fsutil import (
    atomic_write_path,
    check_relative_path,
    content_digests,
    make_read_only,
    md5_bytes,
    recover_swap,
    remove_tree,
    swap_dir,
)
from pose_factory.core.layout import MANIFEST_NAME
from pose_factory.core.progress import Progress, human_bytes
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvccache, dvcrepo, journal, params
from pose_factory.dataset.journal import Journal

if TYPE_CHECKING:
    from pose_factory.core.models import FileEntry, Manifest

PULL_JSON_VERSION = 1
ENGINES = ("auto", "boto3", "rclone")
# Free space kept on top of what a pull needs: DVC's state database, journals, git objects.
DISK_RESERVE = 64 * 1024 * 1024


def resolve_engine(engine: str, storage: Storage) -> str:
    """auto: rclone for an S3 bucket (boto3 spends a core on each request's Python work: rclone pulls
    2,000 files 3x faster here), plain file copies for the local folder ("copy": no boto3 involved)."""
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}", where="--engine", hint="use auto, boto3 or rclone")
    if engine == "auto":
        engine = "rclone" if isinstance(storage, S3Storage) else "boto3"
    return "copy" if engine == "boto3" and not isinstance(storage, S3Storage) else engine


@dataclass
class PulledBatch:
    batch_id: str
    action: str  # pulled | updated | up-to-date | registered | repaired | intact | archived
    files: int = 0
    downloaded: int = 0
    reused: int = 0
    bytes: int = 0
    path: str = ""
    dvc_file: str = ""


@dataclass
class PullReport:
    batches: list[PulledBatch] = field(default_factory=list)
    engine: str = "boto3"
    commit: str | None = None
    to_commit: list[str] = field(default_factory=list)
    # What an earlier, interrupted pull / archive / restore left and this run settled first.
    recovered: list[dict[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"version": PULL_JSON_VERSION, "engine": self.engine, "commit": self.commit,
                "to_commit": self.to_commit, "recovered": self.recovered,
                "batches": [asdict(b) for b in self.batches]}


def choose_batches(storage: Storage, settings: Settings, *, batch_ids: list[str] | None = None, latest: bool = False,
                   project: str | None = None, since: date | None = None, until: date | None = None,
                   allow_incomplete: bool = False) -> list[str]:
    """The batch ids a pull command means: named ones, the latest, or every one matching the filters."""
    if batch_ids:
        for batch_id in batch_ids:
            check_relative_path(batch_id, where="batch id")
            if "/" in batch_id:
                raise UsageError(f"{batch_id!r} is not a batch id", where="BATCH_ID", hint="e.g. 2026-11-28_run-cycle")
        return list(dict.fromkeys(batch_ids))
    listed = list_batches(storage, settings, project=project, since=since, until=until)
    # A batch listed as invalid (a hostile or broken object) is never chosen by a filter; naming it shows why.
    eligible = [b for b in listed if b.status == "complete" or (allow_incomplete and b.status == "uploading")]
    if not eligible:
        filters = ", ".join(f for f in (project and f"project {project}", since and f"since {since}",
                                        until and f"until {until}") if f) or "no filter"
        hint = "`pose-sync list` shows what is there and what is still uploading"
        if not listed and filters == "no filter":
            from pose_factory.dataset.mirror import getting_started

            hint = "the bucket holds no batch yet: " + getting_started(not isinstance(storage, S3Storage))
        raise BatchNotFoundError(f"no complete batch matches ({filters})", where=storage.description, hint=hint)
    return [eligible[0].batch_id] if latest else [b.batch_id for b in eligible]


def _local_manifest_sha(folder: Path) -> str | None:
    manifest = folder / MANIFEST_NAME
    return contract.sha256_bytes(manifest.read_bytes()) if manifest.is_file() else None


Digests = dict[str, tuple[int, str, str]]


def _clean_staging(staging: Path, entries: list[FileEntry]) -> set[str]:
    """Remove from staging all the manifest does not list: temp files of killed transfers (`.partial`,
    rclone's), files of an older render, anything that is not a regular file. Staging is never a trap.
    Return the listed files that are there (one walk, not a stat per manifest entry)."""
    listed = {e["path"] for e in entries} | {MANIFEST_NAME}
    kept: set[str] = set()
    folders = {"/".join(path.split("/")[:i]) for path in listed for i in range(1, path.count("/") + 1)}
    for dirpath, dirnames, filenames in os.walk(staging):
        base = Path(dirpath)
        rel_base = base.relative_to(staging).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        for name in list(dirnames):
            if (base / name).is_symlink() or prefix + name not in folders:
                remove_tree(base / name)
                dirnames.remove(name)
        for name in filenames:
            path = base / name
            if prefix + name not in listed or not stat.S_ISREG(path.lstat().st_mode):
                path.unlink()
            else:
                kept.add(prefix + name)
    return kept


def _verify_staged(staging: Path, entries: list[FileEntry], there: set[str]
                   ) -> tuple[list[FileEntry], Digests]:
    """Split manifest entries into (still to fetch, digests of those already verified in staging); `there`:
    the listed files staging holds (_clean_staging)."""
    present = [e for e in entries if e["path"] in there]
    digests = contract.hash_files(staging, [e["path"] for e in present], with_md5=True,
                                  sizes={e["path"]: e["size"] for e in present}) if present else {}
    good = {e["path"] for e in present if digests[e["path"]][0] == e["size"] and digests[e["path"]][1] == e["sha256"]}
    for entry in present:
        if entry["path"] not in good:
            (staging / entry["path"]).unlink()
    return [e for e in entries if e["path"] not in good], {rel: digests[rel] for rel in good}


class _Arrived:
    """Digests of downloaded files (sha256 for the manifest and md5 for DVC, in one read), each computed by the
    boto3 download thread that has just written the file, beside the other downloads.

    Not with rclone: to learn when each file is whole it must log a line per file (INFO), which cost rclone
    50.5 CPU seconds against 46.6 at NOTICE for a 70,000-file batch (one run each, benchmarks/README.md), more
    than the hashing it would move (about 1 s); its downloads are hashed once rclone ends."""

    def __init__(self, staging: Path, todo: list[FileEntry]):
        self.base = str(staging) + os.sep
        self.sizes = {e["path"]: e["size"] for e in todo}
        self.digests: Digests = {}

    def __call__(self, rel: str) -> None:
        self.digests[rel] = content_digests(contract.read_file(self.base + rel, self.sizes[rel]), with_md5=True)


def _download_boto3(storage: Storage, settings: Settings, prefix: str, staging: Path, todo: list[FileEntry],
                    bar, arrived: _Arrived) -> None:
    def fetch(entry: FileEntry) -> None:
        killpoint.reached("pull:transfer")
        storage.download_file(prefix + entry["path"], staging / entry["path"])
        arrived(entry["path"])
        bar.advance(entry["size"])

    # Downloads are mostly waiting on the network: twice the upload concurrency costs the store little.
    run_parallel(fetch, todo, settings.concurrency * 2)


def _check_downloaded(staging: Path, todo: list[FileEntry], where: str, arrived: Digests) -> Digests:
    """Compare what was just downloaded with the manifest (digests from `arrived`, the rest hashed now);
    return the digests."""
    rest = [e["path"] for e in todo if e["path"] not in arrived]
    sizes = {e["path"]: e["size"] for e in todo}
    digests = {**arrived, **(contract.hash_files(staging, rest, with_md5=True, sizes=sizes) if rest else {})}
    problems = []
    for entry in todo:
        size, sha, _ = digests[entry["path"]]
        if size != entry["size"]:
            problems.append(f"{entry['path']}: size differs: expected {entry['size']} bytes, found {size} bytes")
        elif sha != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs: expected {entry['sha256'][:16]}..., "
                            f"found {sha[:16]}...")
    if problems:
        for entry in todo:
            (staging / entry["path"]).unlink(missing_ok=True)
        raise IntegrityError(f"{len(problems)} downloaded file(s) do not match manifest.json:\n"
                             + "\n".join(f"  - {p}" for p in problems[:5])
                             + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""),
                             where=where, hint="the bucket holds damaged files; re-publish the batch from the pod")
    return digests


# --- checks before the first byte ---------------------------------------------------------------------

def check_ready(settings: Settings) -> None:
    """What a pull needs besides the bucket, checked before downloading: params.yaml and writable folders."""
    params.check_editable(settings)
    folders = [settings.mirror_dir, settings.staging_dir, settings.root / ".dvc"]
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DiskError(f"cannot create the folder: {exc.strerror}", where=str(folder),
                            hint="make the data folder writable") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DiskError("the folder is not writable", where=str(folder),
                            hint="make it writable (chmod u+w), or run as the user who owns the project")


def _check_disk_space(settings: Settings, batch_id: str, folder: Path, download_bytes: int, total_bytes: int) -> None:
    """Refuse a pull that cannot fit: what is still to download, plus the batch again if DVC's cache copies."""
    need = download_bytes + (total_bytes if dvcrepo.cache_copies(settings.root, folder) else 0)
    free = shutil.disk_usage(folder).free
    if need + DISK_RESERVE > free:
        raise DiskError(f"not enough disk space to pull {batch_id}: it needs {human_bytes(need)} "
                        f"(+{human_bytes(DISK_RESERVE)} spare), {human_bytes(free)} is free", where=str(folder),
                        hint="free space on that disk (`dvc gc` drops cached versions no commit uses), or move "
                             "the project to a bigger disk")


# --- one batch ------------------------------------------------------------------------------------------

@dataclass
class _Planned:
    pulled: PulledBatch
    manifest_sha: str = ""
    staged: Path | None = None  # a verified folder to swap into the mirror
    register: bool = False
    md5s: dvccache.Md5s | None = None  # of every staged file, manifest.json included: what `dvc add` would hash


def _stage(storage: Storage, settings: Settings, batch_id: str, manifest: Manifest, manifest_bytes: bytes, *,
           engine: str, progress: Progress) -> _Planned:
    """Decide what a batch needs; when it needs data, download and verify it into staging."""
    final = settings.mirror_dir / batch_id
    dvc_file = settings.mirror_dir / f"{batch_id}.dvc"
    rel_final = final.relative_to(settings.root).as_posix()
    entries = manifest["files"]
    remote_sha = contract.sha256_bytes(manifest_bytes)
    local_sha = _local_manifest_sha(final)
    if local_sha == remote_sha and dvc_file.exists():
        problems = _workspace_problems(settings, final, dvc_file)
        if problems:
            raise IntegrityError(f"{batch_id} no longer matches the version that was pulled "
                                 f"({next(iter(problems.values()))}): a file was changed in place",
                                 where=str(final), hint=f"`pose-sync verify {batch_id}` lists the files; "
                                                        f"`pose-sync pull {batch_id} --repair` restores them")
        registered = batch_id in (params.read_params(settings).get("batches") or [])
        return _Planned(PulledBatch(batch_id, "up-to-date" if registered else "registered", len(entries), 0,
                                    len(entries), 0, rel_final), remote_sha, register=not registered)
    staging = settings.staging_dir / batch_id
    rclone.stop_orphan(staging.with_name(batch_id + ".rclone-pid"), str(staging))  # a killed pull's (macOS)
    if (final.exists() or final.is_symlink()) and not dvc_file.exists():
        # Left untracked by an older version or by hand: its files are re-verified like staged ones.
        if staging.exists() or final.is_symlink():
            remove_tree(final)
        else:
            os.rename(final, staging)
    staging.mkdir(parents=True, exist_ok=True)
    todo, verified = _verify_staged(staging, entries, _clean_staging(staging, entries))
    reused = len(verified)
    total = sum(e["size"] for e in todo)
    _check_disk_space(settings, batch_id, staging, total, manifest["totals"]["bytes"])
    journal.write(settings, Journal("pull", batch_id, "fetching", remote_sha))
    prefix = batch_prefix(settings, batch_id)
    where = f"{storage.description}: {prefix}"
    try:
        arrived = _Arrived(staging, todo)
        with progress.task(f"pull {batch_id}", total, "bytes") as bar:
            if engine == "rclone" and todo:
                rclone.copy_files(storage, settings, prefix, staging, [e["path"] for e in todo], bar, total)
            elif todo:
                _download_boto3(storage, settings, prefix, staging, todo, bar, arrived)
        verified.update(_check_downloaded(staging, todo, where, arrived.digests))
        with atomic_write_path(staging / MANIFEST_NAME) as tmp:
            tmp.write_bytes(manifest_bytes)
        contract.verify_batch(staging, manifest, known=verified)  # nothing extra, nothing missing, no symlink
    except PoseFactoryError:
        journal.remove(settings, batch_id)  # failed and said so: nothing is left half-done in the mirror
        raise
    base = str(staging) + os.sep
    for entry in entries:  # read-only as DVC keeps its cache objects (it is one inode with them once hardlinked)
        os.chmod(base + entry["path"], dvccache.CACHE_MODE)  # strings: 70,000 pathlib joins cost a second
    os.chmod(base + MANIFEST_NAME, dvccache.CACHE_MODE)
    journal.write(settings, Journal("pull", batch_id, "verified", remote_sha))
    killpoint.reached("pull:after-verify")
    action = "updated" if local_sha and dvc_file.exists() else "pulled"
    md5s = {rel: (size, md5) for rel, (size, _, md5) in verified.items()}
    md5s[MANIFEST_NAME] = (len(manifest_bytes), md5_bytes(manifest_bytes))
    return _Planned(PulledBatch(batch_id, action, len(entries), len(todo), reused, total, rel_final), remote_sha,
                    staging, register=True, md5s=md5s)


def _pruned_but_here(settings: Settings, batch_id: str, pruned: BatchPrunedError) -> _Planned:
    """A batch pruned from the bucket is up to date when the mirror holds the very version that was pruned;
    otherwise pull says where the version is (BatchPrunedError's hint)."""
    final, dvc_file = settings.mirror_dir / batch_id, settings.mirror_dir / f"{batch_id}.dvc"
    sha = pruned.tombstone["manifest_sha256"]
    if not dvc_file.exists() or _local_manifest_sha(final) != sha or _workspace_problems(settings, final, dvc_file):
        raise pruned
    registered = batch_id in (params.read_params(settings).get("batches") or [])
    files = int(pruned.tombstone["files"])
    return _Planned(PulledBatch(batch_id, "up-to-date" if registered else "registered", files, 0, files, 0,
                                final.relative_to(settings.root).as_posix()), sha, register=not registered)


def _workspace_problems(settings: Settings, folder: Path, dvc_file: Path) -> dict[Path, str]:
    """How a tracked batch differs from its .dvc file: nothing when its seal still holds file by file
    (one lstat per file, no read), else DVC's own answer."""
    try:
        dir_md5 = dvccache.read_dvc_file(dvc_file)["md5"]
    except RepositoryError:
        dir_md5 = ""
    if dir_md5 and dvccache.sealed(settings.seal_dir, folder, dir_md5, deep=True):
        return {}
    return dvcrepo.workspace_status(settings.root, [dvc_file])


def _install(settings: Settings, planned: list[_Planned]) -> None:
    """Swap the verified batches into the mirror (the commit point), track them, register them."""
    swapped, md5s = [], {}
    for plan in planned:
        if plan.staged is None:
            continue
        batch_id = plan.pulled.batch_id
        final = settings.mirror_dir / batch_id
        dvcrepo.ensure_gitignored(settings.mirror_dir, batch_id)  # never committed to git as images
        dvccache.unseal(settings.seal_dir, batch_id)
        swap_dir(plan.staged, final, step="pull")
        journal.write(settings, Journal("pull", batch_id, "swapped", plan.manifest_sha))
        killpoint.reached("pull:after-swap")
        swapped.append(final)
        if plan.md5s is not None:
            md5s[final] = plan.md5s
    dvcrepo.track(settings.root, swapped, md5s, step="pull", seal_dir=settings.seal_dir)
    killpoint.reached("pull:after-dvc-add")
    to_register = [p.pulled.batch_id for p in planned if p.register]
    if to_register:
        params.register(settings, add=to_register)
    killpoint.reached("pull:after-params")
    for plan in planned:
        journal.remove(settings, plan.pulled.batch_id)


def finish_interrupted(settings: Settings, entry: Journal) -> str:
    """Settle a pull a crash interrupted: "completed" if its batch had entered the mirror, else "rolled back"."""
    final = settings.mirror_dir / entry.batch_id
    recover_swap(final)
    if entry.step in ("verified", "swapped") and _local_manifest_sha(final) == entry.manifest_sha256:
        dvcrepo.ensure_gitignored(settings.mirror_dir, entry.batch_id)
        dvcrepo.track(settings.root, [final], step="pull", seal_dir=settings.seal_dir)  # md5s: read once more
        params.register(settings, add=[entry.batch_id])
        remove_tree(settings.staging_dir / entry.batch_id)  # after an atomic exchange: the version it replaced
        journal.remove(settings, entry.batch_id)
        return "completed"
    journal.remove(settings, entry.batch_id)  # the mirror still holds the previous state; staging is kept
    return "rolled back"


# --- repair -----------------------------------------------------------------------------------------------

def repair_batch(storage: Storage, settings: Settings, batch_id: str) -> PulledBatch:
    """Bring a tracked batch back to the version its .dvc file records, files and DVC cache objects alike.

    A file edited in place (root ignores the read-only bit) is also edited in DVC's cache when the cache
    hardlinks, so the cache cannot restore it. Damaged cache objects are dropped and fetched again: from the
    bucket when it still holds the same version (same manifest.json), else from the DVC remote; then
    `dvc checkout --force` puts the workspace back and the batch is verified against its manifest.
    """
    tracked_in = next((d for d in (settings.mirror_dir, settings.archive_dir) if (d / f"{batch_id}.dvc").exists()),
                      None)
    if tracked_in is None:
        raise RepositoryError(f"{batch_id} is not tracked here: there is no pulled version to repair",
                              where=str(settings.mirror_dir / f"{batch_id}.dvc"),
                              hint=f"pull it: `pose-sync pull {batch_id}`")
    root = settings.root
    dvc_file, folder = tracked_in / f"{batch_id}.dvc", tracked_in / batch_id
    problems = dvcrepo.workspace_status(root, [dvc_file])  # DVC also drops cache objects that lost their content
    files = dvcrepo.tracked_files(root, dvc_file)
    damaged = dvcrepo.damaged_objects(root, files)
    if damaged:
        _refill_from_bucket(storage, settings, batch_id, dict(files), damaged)
        missing = dvcrepo.damaged_objects(root, damaged)
        if missing:
            try:
                dvcrepo.fetch_objects(root, [dvc_file])
            except ToolError:
                pass
            missing = dvcrepo.damaged_objects(root, missing)
        if missing:
            raise IntegrityError(f"cannot repair {batch_id}: {len(missing)} file(s) of the version its .dvc file "
                                 f"records are neither in the bucket nor in the DVC remote, e.g. {missing[0][0]}",
                                 where=str(folder),
                                 hint="push that version from a machine that has it (`dvc push`), or replace it "
                                      f"with the bucket's version: `pose-sync pull {batch_id}`")
    dvcrepo.checkout(root, [dvc_file], force=True)
    make_read_only(folder)
    contract.verify_batch(folder, contract.load_manifest(folder))
    if tracked_in == settings.mirror_dir and batch_id not in (params.read_params(settings).get("batches") or []):
        params.register(settings, add=[batch_id])
    return PulledBatch(batch_id, "repaired" if damaged or problems else "intact", len(files), len(damaged),
                       len(files) - len(damaged), 0, folder.relative_to(root).as_posix(),
                       dvc_file.relative_to(root).as_posix())


def _refill_from_bucket(storage: Storage, settings: Settings, batch_id: str, recorded: dict[str, str],
                        damaged: list[tuple[str, str]]) -> None:
    """Download the damaged files into the DVC cache when the bucket still holds the recorded version."""
    try:
        _, manifest_bytes, _ = fetch_remote_manifest(storage, settings, batch_id, False)
    except PoseFactoryError:
        return  # not in the bucket (any more): the DVC remote is the other source
    if md5_bytes(manifest_bytes) != recorded.get(MANIFEST_NAME):
        return  # the bucket holds another render now
    scratch = settings.transaction_dir / "repair" / batch_id
    prefix = batch_prefix(settings, batch_id)
    try:
        for rel, md5 in damaged:
            tmp = scratch / md5
            if rel == MANIFEST_NAME:
                scratch.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(manifest_bytes)
            else:
                storage.download_file(prefix + rel, tmp)
            if md5_bytes(tmp.read_bytes()) == md5:
                dvcrepo.install_object(settings.root, md5, tmp)
    finally:
        remove_tree(scratch)


# --- the command -------------------------------------------------------------------------------------------

def pull(storage: Storage, settings: Settings, batch_ids: list[str], *, engine: str = "auto",
         allow_incomplete: bool = False, commit: bool = False, repair: bool = False,
         progress: Progress | None = None) -> PullReport:
    """Pull batches as one transaction each (see the module docstring); optionally commit the new version."""
    engine = resolve_engine(engine, storage)
    dvcrepo.require_repository(settings.root)
    progress = progress or Progress(enabled=False)
    report = PullReport(engine=engine)
    with journal.locked(settings, "pull"):
        check_ready(settings)  # settling may write params.yaml too
        report.recovered = journal.settle(settings)
        storage.ensure_bucket()
        planned: list[_Planned] = []
        failures: dict[str, PoseFactoryError] = {}
        for batch_id in batch_ids:
            try:
                dvc_file = settings.mirror_dir / f"{batch_id}.dvc"
                if dvc_file.exists() and dvcrepo.recorded_out(dvc_file) is None:
                    raise dvcrepo.damaged_dvc_file_error(dvc_file)  # neither pose-sync nor DVC can go on from it
                if repair:
                    report.batches.append(repair_batch(storage, settings, batch_id))
                    continue
                if (settings.archive_dir / f"{batch_id}.dvc").exists():
                    report.batches.append(PulledBatch(batch_id, "archived", path=(
                        settings.archive_dir / batch_id).relative_to(settings.root).as_posix()))
                    continue
                try:
                    manifest, manifest_bytes, _ = fetch_remote_manifest(storage, settings, batch_id, allow_incomplete)
                except BatchPrunedError as pruned:
                    plan = _pruned_but_here(settings, batch_id, pruned)
                    planned.append(plan)
                    report.batches.append(plan.pulled)
                    continue
                killpoint.reached("pull:after-listing")
                plan = _stage(storage, settings, batch_id, manifest, manifest_bytes, engine=engine,
                              progress=progress)
                planned.append(plan)
                report.batches.append(plan.pulled)
            except PoseFactoryError as exc:
                if len(batch_ids) == 1:
                    raise
                failures[batch_id] = exc
        _install(settings, planned)
        for b in report.batches:
            if not b.dvc_file:
                b.dvc_file = b.path + ".dvc"
        completed = [r["batch_id"] for r in report.recovered if r["command"] == "pull" and r["outcome"] == "completed"]
        candidates = [settings.root / b.dvc_file for b in report.batches if b.action != "archived"]
        candidates += [settings.mirror_dir / f"{batch_id}.dvc" for batch_id in completed]
        if candidates:
            candidates += [settings.mirror_dir / ".gitignore", settings.params_file]
        pending = dvcrepo.uncommitted(settings.root, candidates)
        report.to_commit = sorted({p.relative_to(settings.root).as_posix() for p in pending})
        killpoint.reached("pull:before-commit")
        if commit and pending:
            names = ", ".join(dict.fromkeys([b.batch_id for b in report.batches if b.action != "archived"]
                                            + completed))
            report.commit = dvcrepo.commit(settings.root, pending, f"Pull pose batches: {names}")
    if failures:
        raise BatchesFailedError(failures, len(batch_ids))
    return report
