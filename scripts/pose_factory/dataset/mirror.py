"""The local side of versioned batches: what is where (`status`), and archiving / restoring batches.

Archived batches move from `data/raw/pose-factory/` to `data/archive/pose-factory/`, so they stay
versioned and pushed, but leave the pipeline's batch list in params.yaml. The move is done here, not by
`dvc move`, as steps that a rerun can finish from any point (see journal.py): the batch's folder moves by
one rename (or a copy that becomes visible by one rename, across filesystems); its `.dvc` file is the same
bytes in both places, since it names the folder relative to itself; the `.gitignore` entries and
params.yaml follow. A command killed at any step is completed by the next archive, restore or pull.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pose_factory.bucket.backends import Storage
from pose_factory.bucket.batches import list_batches
from pose_factory.core import contract, killpoint
from pose_factory.core.envnames import ENV_ACCESS_KEY, ENV_ACCOUNT_ID, ENV_BUCKET, ENV_SECRET_KEY
from pose_factory.core.errors import BatchNotFoundError, IntegrityError, PoseFactoryError, RepositoryError
from pose_factory.core.fsutil import atomic_write_path, move_dir, recover_swap, remove_tree
from pose_factory.core.layout import ARCHIVE, MANIFEST_NAME, MIRROR, POD_OUTBOX
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvccache, dvcremote, dvcrepo, journal, params
from pose_factory.dataset.journal import Journal

if TYPE_CHECKING:
    from pose_factory.core.models import Manifest

STATUS_JSON_VERSION = 1  # fields and states were only added since

# The command that resolves each state of a batch ({batch} is its id); None when there is nothing to do.
# One place for every state `status` can report: add a state here with the command that gets out of it.
NEXT_COMMAND: dict[str, str | None] = {
    "in-bucket-only": "pose-sync pull {batch}",
    "uploading": "pose-sync pull {batch}  (once `pose-sync list` shows it complete)",
    "invalid-in-bucket": "pose-sync publish BATCH_DIR  (on the pod: re-publish it; it is not pulled as it is)",
    "changed-in-bucket": "pose-sync pull {batch}",
    "not-pushed": "dvc push",
    "archived": None,
    # Deleted from the bucket by prune-bucket; the version is in the DVC remote and in git ({commit}).
    "pruned": "git checkout {commit} -- {dvc_file} && pose-sync fetch {batch}",
    "up-to-date": None,
    # Left half-done by a killed command (its journal is there): the same command finishes it.
    "interrupted-pull": "pose-sync pull {batch}",
    "interrupted-archive": "pose-sync archive {batch}",
    "interrupted-restore": "pose-sync restore {batch}",
    # The command is running now (it holds the repository lock): nothing to do but wait.
    "pull-running": None,
    "archive-running": None,
    "restore-running": None,
    # Folder, .dvc file and params.yaml disagree (by hand, or by a version without journals).
    "untracked": "pose-sync pull {batch}",  # re-verified against the bucket, then tracked
    "untracked-archive": f"dvc add {ARCHIVE}/{{batch}}",
    "unregistered": "pose-sync pull {batch}",
    "unregistered-archive": "pose-sync archive {batch}",
    "not-checked-out": "pose-sync fetch {batch}",
    "modified": "pose-sync pull {batch} --repair",  # a file changed in place: see README, verify and repair
    # The .dvc file records no folder (cut short, edited by hand): the committed one is in git.
    "damaged-dvc-file": "git checkout -- {dvc_file}",
}


def next_command(state: str, batch_id: str, **fields: str) -> str | None:
    """The command that resolves a batch's state, or None when there is nothing to do."""
    command = NEXT_COMMAND.get(state)
    return command.format(batch=batch_id, **fields) if command else None


def getting_started(local_bucket: bool) -> str:
    """What to run when the bucket holds no batch yet: a newcomer is never left without a next command."""
    make_one = (f"`pose-sync generate --out {POD_OUTBOX}` (it prints the batch id), then `pose-sync publish "
                f"{POD_OUTBOX}/<batch id>`, then `pose-sync pull-latest`")
    if local_bucket:
        return (f"to try it without an account, make a batch as a pod would: {make_one}; to use your R2 bucket, "
                f"set {ENV_ACCESS_KEY}, {ENV_SECRET_KEY}, {ENV_ACCOUNT_ID} and {ENV_BUCKET} (README: 'Connect a "
                "real R2 bucket')")
    return f"render one on RunPod (`pose-sync job submit JOB_FILE`), or publish one from here: {make_one}"


def local_batches(folder: Path) -> list[str]:
    """Batch ids with a folder or a .dvc file in a mirror folder."""
    if not folder.is_dir():
        return []
    names = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    names |= {p.name.removesuffix(".dvc") for p in folder.glob("*.dvc")}
    return sorted(names)


@dataclass
class BatchState:
    batch_id: str
    remote: str | None  # complete | uploading | invalid | None (not in the bucket)
    local: bool
    archived: bool
    pushed: bool | None  # data in the DVC remote; None when not local
    changed_in_remote: bool
    state: str  # one word for people: see _summary_state
    tracked: bool = False  # a .dvc file records it
    registered: bool = False  # listed in params.yaml (batches: in the mirror, archived: in the archive)
    workspace: str | None = None  # how the folder differs from its .dvc file (DVC's word), None when it agrees
    problem: str | None = None  # what is wrong with the batch in the bucket (remote == "invalid")
    pruned: dict[str, Any] | None = None  # remote == "pruned": the tombstone's commit and .dvc record

    @property
    def next(self) -> str | None:
        """The command that resolves this state (NEXT_COMMAND)."""
        pruned = self.pruned or {}
        dvc_file = pruned.get("dvc_file") or f"{ARCHIVE if self.archived else MIRROR}/{self.batch_id}.dvc"
        return next_command(self.state, self.batch_id, commit=str(pruned.get("git_commit", ""))[:12],
                            dvc_file=str(dvc_file))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "next": self.next}


def _summary_state(s: BatchState) -> str:
    if not (s.local or s.archived):
        return {"complete": "in-bucket-only", "invalid": "invalid-in-bucket", "pruned": "pruned"}.get(s.remote or "",
                                                                                                     "uploading")
    if not s.tracked:
        return "untracked-archive" if s.archived else "untracked"
    if s.workspace == "deleted":
        return "not-checked-out"
    if s.workspace == dvcrepo.DAMAGED_DVC_FILE:
        return "damaged-dvc-file"
    if s.workspace:
        return "modified"
    if not s.registered:
        return "unregistered-archive" if s.archived else "unregistered"
    if s.archived:
        return "archived"
    if s.changed_in_remote:
        return "changed-in-bucket"
    if s.pushed is False:
        return "not-pushed"
    return "up-to-date"


def _registered(settings: Settings) -> tuple[set[str], set[str]]:
    document = params.check_readable(settings)  # a broken params.yaml is named, not shown as "unregistered"

    def ids(key: str) -> set[str]:
        return set(document.get(key) or [])

    return ids("batches"), ids("archived")


def status(storage: Storage, settings: Settings, *, deep: bool = False) -> list[BatchState]:
    """Every batch known to the bucket, the mirror or the archive, and how they differ. Reads, never writes.

    A tracked batch counts as unchanged when its seal holds (dvccache.sealed: every folder of the batch has
    the inode and mtime it had when pose-sync last put it in step with its .dvc file; with deep, every file
    too); only the others are asked of DVC, whose `status` walks and stats every file. Whether a version
    was pushed is one request per batch for its `.dir` object, which DVC pushes after all the files it
    lists (dvcremote); DVC answers for remotes pose-sync does not read itself.
    """
    remote = {b.batch_id: b for b in list_batches(storage, settings)}
    local = local_batches(settings.mirror_dir)
    archived = local_batches(settings.archive_dir)
    journals = {j.batch_id: j for j in journal.pending(settings)}
    running = journal.holder(settings)
    in_batches, in_archived = _registered(settings)
    tracked = [settings.mirror_dir / f"{b}.dvc" for b in local if (settings.mirror_dir / f"{b}.dvc").exists()]
    tracked += [settings.archive_dir / f"{b}.dvc" for b in archived if (settings.archive_dir / f"{b}.dvc").exists()]
    # While a command runs, its batches are in flux: ask only about the others.
    steady = [f for f in tracked if f.name.removesuffix(".dvc") not in journals]
    dir_md5s = _recorded(steady)
    unsealed = [f for f in steady
                if not (dir_md5s.get(f) and dvccache.sealed(settings.seal_dir, f.with_name(f.name.removesuffix(".dvc")),
                                                            dir_md5s[f], deep=deep))]
    workspace = {f.name.removesuffix(".dvc"): problem
                 for f, problem in dvcrepo.workspace_status(settings.root, unsealed).items()}
    unpushed = _not_pushed(settings, steady, dir_md5s)
    states = []
    for batch_id in sorted(set(remote) | set(local) | set(archived) | set(journals)):
        is_archived = batch_id in archived and batch_id not in local
        folder = (settings.archive_dir if is_archived else settings.mirror_dir) / batch_id
        is_local = batch_id in local or batch_id in archived
        changed = False
        if is_local and batch_id in remote and remote[batch_id].status == "complete":
            manifest = folder / MANIFEST_NAME
            if manifest.is_file():
                changed = remote[batch_id].manifest_sha256 != contract.sha256_bytes(manifest.read_bytes())
        state = BatchState(batch_id, remote[batch_id].status if batch_id in remote else None, batch_id in local,
                           is_archived, (batch_id not in unpushed) if is_local else None, changed, "",
                           tracked=folder.with_name(f"{batch_id}.dvc").exists(),
                           registered=batch_id in (in_archived if is_archived else in_batches),
                           workspace=workspace.get(batch_id),
                           problem=remote[batch_id].problem if batch_id in remote else None,
                           pruned=remote[batch_id].pruned if batch_id in remote else None)
        if batch_id in journals:
            command = journals[batch_id].command
            state.state = f"{command}-running" if running else f"interrupted-{command}"
        else:
            state.state = _summary_state(state)
        states.append(state)
    return states


def _recorded(dvc_files: list[Path]) -> dict[Path, str]:
    """The .dir md5 each .dvc file records (a damaged one is left out: workspace_status names it)."""
    found = {}
    for dvc_file in dvc_files:
        try:
            found[dvc_file] = dvccache.read_dvc_file(dvc_file)["md5"]
        except PoseFactoryError:
            pass
    return found


def _not_pushed(settings: Settings, dvc_files: list[Path], dir_md5s: dict[Path, str]) -> set[str]:
    """Batch ids whose recorded version is not in the default DVC remote: its .dir object is missing there."""
    # A damaged .dvc file records no version to look for (status shows it as damaged): not pushed, so that
    # nothing (prune-bucket) counts on it; DVC is not asked about it, which would fail for every batch.
    damaged = {f.name.removesuffix(".dvc") for f in dvc_files if dvcrepo.recorded_out(f) is None}
    dvc_files = [f for f in dvc_files if f.name.removesuffix(".dvc") not in damaged]
    if not dvc_files:
        return damaged
    remote = dvcremote.default_remote(settings)
    if remote is None or any(f not in dir_md5s for f in dvc_files):
        return damaged | dvcrepo.not_pushed(settings.root, dvc_files)
    from pose_factory.bucket.backends import run_parallel

    missing: set[str] = set()

    def check(dvc_file: Path) -> None:
        if not remote.has(dir_md5s[dvc_file]):
            missing.add(dvc_file.name.removesuffix(".dvc"))

    run_parallel(check, dvc_files, settings.concurrency)
    return missing | damaged


def status_json(states: list[BatchState], *, deep: bool = False) -> dict[str, Any]:
    """The versioned `status --json` document; "deep" says whether every file was compared (--deep)."""
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    return {"version": STATUS_JSON_VERSION, "deep": deep, "summary": counts,
            "batches": [s.as_dict() for s in states]}


# --- archive / restore ----------------------------------------------------------------------------------

def _places(settings: Settings, command: str) -> tuple[Path, Path]:
    """(from, to) for a command."""
    if command == "archive":
        return settings.mirror_dir, settings.archive_dir
    return settings.archive_dir, settings.mirror_dir


def _move_steps(settings: Settings, command: str, batch_id: str) -> None:
    """The steps of an archive or restore, each one a no-op when already done, so a rerun finishes the move."""
    source_dir, dest_dir = _places(settings, command)
    source, dest = source_dir / batch_id, dest_dir / batch_id
    source_dvc, dest_dvc = source_dir / f"{batch_id}.dvc", dest_dir / f"{batch_id}.dvc"
    dvcrepo.ensure_gitignored(dest_dir, batch_id)
    recover_swap(dest)  # a cross-filesystem copy a crash cut short
    if source.exists() and dest.exists():
        remove_tree(source)  # the copy became visible at dest by its last rename: the source is a leftover
    elif source.exists():
        move_dir(source, dest, step=command)
    killpoint.reached(f"{command}:after-move")
    if source_dvc.exists():
        with atomic_write_path(dest_dvc) as tmp:
            tmp.write_bytes(source_dvc.read_bytes())  # `path:` is relative to the .dvc file: same bytes
        source_dvc.unlink()
    killpoint.reached(f"{command}:after-dvc-file")
    dvcrepo.remove_gitignore_entry(source_dir, batch_id)
    if command == "archive":
        params.register(settings, archive=[batch_id])
    else:
        params.register(settings, unarchive=[batch_id])
    killpoint.reached(f"{command}:after-params")
    journal.remove(settings, batch_id)


def finish_interrupted(settings: Settings, entry: Journal) -> str:
    """Complete an archive or restore a crash interrupted (every step is local and repeatable)."""
    _move_steps(settings, entry.command, entry.batch_id)
    return "completed"


def _paths_of(settings: Settings, batch_id: str) -> list[Path]:
    return [settings.mirror_dir / f"{batch_id}.dvc", settings.archive_dir / f"{batch_id}.dvc",
            settings.mirror_dir / ".gitignore", settings.archive_dir / ".gitignore", settings.params_file]


def _move(settings: Settings, command: str, batch_id: str) -> list[str]:
    dvcrepo.require_repository(settings.root)
    source_dir, dest_dir = _places(settings, command)
    with journal.locked(settings, command):
        params.check_editable(settings)
        settled = journal.settle(settings)
        if any(s["batch_id"] == batch_id and s["command"] == command for s in settled):
            return _changed(settings, batch_id)  # this very command had been interrupted: now it is done
        source, source_dvc = source_dir / batch_id, source_dir / f"{batch_id}.dvc"
        dest, dest_dvc = dest_dir / batch_id, dest_dir / f"{batch_id}.dvc"
        where = dest_dir.relative_to(settings.root).as_posix()
        if not source_dvc.exists():
            if dest_dvc.exists() and dest.exists():
                wanted = params.read_params(settings).get("archived" if command == "archive" else "batches") or []
                if batch_id not in wanted:  # moved, not yet registered (by hand or by an older version)
                    params.register(settings, **{"archive" if command == "archive" else "unarchive": [batch_id]})
                    return _changed(settings, batch_id)
                raise BatchNotFoundError(f"cannot {command} {batch_id}: it is already in {where}",
                                         where=str(dest), hint="`pose-sync status` lists the batches and where they "
                                                               "are")
            raise BatchNotFoundError(f"cannot {command} {batch_id}: it is not tracked in "
                                     f"{source_dir.relative_to(settings.root)}", where=str(source),
                                     hint="`pose-sync status` lists the batches and where they are")
        if not source.is_dir():
            raise RepositoryError(f"the data of {batch_id} is not in the workspace", where=str(source),
                                  hint="run `dvc checkout` (or `dvc pull`) first")
        if dest.exists() or dest_dvc.exists():
            raise RepositoryError(f"{batch_id} is in both {source_dir.relative_to(settings.root)} and {where}",
                                  where=str(dest), hint="keep one: remove the other folder and its .dvc file by "
                                                        "hand (`git status` shows which one git records)")
        journal.write(settings, Journal(command, batch_id, "moving"))
        _move_steps(settings, command, batch_id)
    return _changed(settings, batch_id)


def _changed(settings: Settings, batch_id: str) -> list[str]:
    """What this archive/restore changed, as git sees it (not every other untracked file of the project)."""
    try:
        changed = dvcrepo.uncommitted(settings.root, _paths_of(settings, batch_id))
    except PoseFactoryError:
        return []
    return [p.relative_to(settings.root).as_posix() for p in changed]


def archive(settings: Settings, batch_id: str) -> list[str]:
    """Move a batch to data/archive/ (still versioned) and out of the pipeline's list; return the paths to commit."""
    return _move(settings, "archive", batch_id)


def restore(settings: Settings, batch_id: str) -> list[str]:
    """Move an archived batch back to data/raw/ and into the pipeline's list; return the paths to commit."""
    return _move(settings, "restore", batch_id)


def verify(settings: Settings, batch: str) -> tuple[Manifest, Path]:
    """Check a batch folder, or a batch id in the mirror or the archive, against its manifest.

    Returns (manifest, folder); raises IntegrityError naming each file that differs, with the way back
    to the pulled version when the batch is tracked here.
    """
    folder = Path(batch)
    if not folder.is_dir():
        candidates = [d / batch for d in (settings.mirror_dir, settings.archive_dir)] if "/" not in batch else []
        found = next((c for c in candidates if c.is_dir()), None)
        if found is None:
            raise BatchNotFoundError(f"no batch folder or local batch {batch!r}", where=str(settings.mirror_dir),
                                     hint=f"give a batch folder, or the id of a batch in {MIRROR} or {ARCHIVE} "
                                          "(`pose-sync status` lists them)")
        folder = found
    manifest = contract.load_manifest(folder)
    try:
        contract.verify_batch(folder, manifest)
    except IntegrityError as exc:
        if folder.with_name(f"{folder.name}.dvc").exists():
            exc.hint = (f"`pose-sync pull {folder.name} --repair` brings back the version that was pulled "
                        "(the DVC cache may hold the edit too)")
        raise
    return manifest, folder
