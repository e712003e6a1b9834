"""The local side of versioned batches: what is where (`status`), and archiving / restoring batches.

Archived batches move from `data/raw/pose-factory/` to `data/archive/pose-factory/` with `dvc move`,
so they stay versioned and pushed, but leave the pipeline's batch list in params.yaml.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pose_factory.bucket.backends import Storage
from pose_factory.bucket.batches import list_batches
from pose_factory.core import contract
from pose_factory.core.errors import BatchNotFoundError, RepositoryError
from pose_factory.core.layout import MANIFEST_NAME
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvcrepo, params

STATUS_JSON_VERSION = 1

# The command that resolves each state of a batch ({batch} is its id); None when there is nothing to do.
# One place for every state `status` can report: add a state here with the command that gets out of it.
NEXT_COMMAND: dict[str, str | None] = {
    "in-bucket-only": "pose-sync pull {batch}",
    "uploading": "pose-sync pull {batch}  (once `pose-sync list` shows it complete)",
    "changed-in-bucket": "pose-sync pull {batch}",
    "not-pushed": "dvc push",
    "archived": None,
    "up-to-date": None,
}


def next_command(state: str, batch_id: str) -> str | None:
    """The command that resolves a batch's state, or None when there is nothing to do."""
    command = NEXT_COMMAND.get(state)
    return command.format(batch=batch_id) if command else None


def getting_started(local_bucket: bool) -> str:
    """What to run when the bucket holds no batch yet: a newcomer is never left without a next command."""
    make_one = ("`pose-sync generate --out data/pod-outbox` (it prints the batch id), then `pose-sync publish "
                "data/pod-outbox/<batch id>`, then `pose-sync pull-latest`")
    if local_bucket:
        return (f"to try it without an account, make a batch as a pod would: {make_one}; to use your R2 bucket, "
                "set CLOUDFLARE_R2_ACCESS_KEY_ID, CLOUDFLARE_R2_SECRET_ACCESS_KEY, CLOUDFLARE_R2_ACCOUNT_ID and "
                "POSE_FACTORY_R2_BUCKET (README: 'Connect a real R2 bucket')")
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
    remote: str | None  # complete | uploading | None (not in the bucket)
    local: bool
    archived: bool
    pushed: bool | None  # data in the DVC remote; None when not local
    changed_in_remote: bool
    state: str  # one word for people: see _summary_state

    @property
    def next(self) -> str | None:
        """The command that resolves this state (NEXT_COMMAND)."""
        return next_command(self.state, self.batch_id)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "next": self.next}


def _summary_state(s: BatchState) -> str:
    if s.archived:
        return "archived"
    if not s.local:
        return "in-bucket-only" if s.remote == "complete" else "uploading"
    if s.changed_in_remote:
        return "changed-in-bucket"
    if s.pushed is False:
        return "not-pushed"
    return "up-to-date"


def status(storage: Storage, settings: Settings) -> list[BatchState]:
    """Every batch known to the bucket, the mirror or the archive, and how they differ."""
    remote = {b.batch_id: b for b in list_batches(storage, settings)}
    local = local_batches(settings.mirror_dir)
    archived = local_batches(settings.archive_dir)
    tracked = [settings.mirror_dir / f"{b}.dvc" for b in local if (settings.mirror_dir / f"{b}.dvc").exists()]
    tracked += [settings.archive_dir / f"{b}.dvc" for b in archived if (settings.archive_dir / f"{b}.dvc").exists()]
    unpushed = dvcrepo.not_pushed(settings.root, tracked) if tracked else set()
    states = []
    for batch_id in sorted(set(remote) | set(local) | set(archived)):
        folder = settings.archive_dir / batch_id if batch_id in archived else settings.mirror_dir / batch_id
        is_local = batch_id in local or batch_id in archived
        changed = False
        if is_local and batch_id in remote and remote[batch_id].status == "complete":
            manifest = folder / MANIFEST_NAME
            if manifest.is_file():
                changed = _remote_manifest_sha(storage, settings, batch_id) != contract.sha256_bytes(
                    manifest.read_bytes())
        state = BatchState(batch_id, remote[batch_id].status if batch_id in remote else None, batch_id in local,
                           batch_id in archived, (batch_id not in unpushed) if is_local else None, changed, "")
        state.state = _summary_state(state)
        states.append(state)
    return states


def _remote_manifest_sha(storage: Storage, settings: Settings, batch_id: str) -> str | None:
    from pose_factory.bucket.batches import batch_prefix, read_marker

    marker = read_marker(storage, batch_prefix(settings, batch_id) + "_complete.json")
    return marker["manifest_sha256"] if marker else None


def status_json(states: list[BatchState]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    return {"version": STATUS_JSON_VERSION, "summary": counts, "batches": [s.as_dict() for s in states]}


def _move(settings: Settings, batch_id: str, source_dir: Path, dest_dir: Path, verb: str) -> tuple[Path, Path]:
    dvcrepo.require_repository(settings.root)
    source = source_dir / batch_id
    if not (source_dir / f"{batch_id}.dvc").exists():
        other = dest_dir / f"{batch_id}.dvc"
        hint = (f"it is already in {dest_dir.relative_to(settings.root)}" if other.exists()
                else "`pose-sync status` lists the batches and where they are")
        raise BatchNotFoundError(f"cannot {verb} {batch_id}: it is not tracked in "
                                 f"{source_dir.relative_to(settings.root)}", where=str(source), hint=hint)
    if not source.is_dir():
        raise RepositoryError(f"the data of {batch_id} is not in the workspace", where=str(source),
                              hint="run `dvc checkout` (or `dvc pull`) first")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dvcrepo.move(settings.root, source, dest_dir / batch_id)
    return source_dir, dest_dir


def archive(settings: Settings, batch_id: str) -> list[str]:
    """Move a batch to data/archive/ (still versioned) and out of the pipeline's list."""
    _move(settings, batch_id, settings.mirror_dir, settings.archive_dir, "archive")
    params.register(settings, archive=[batch_id])
    return _changed_paths(settings)


def restore(settings: Settings, batch_id: str) -> list[str]:
    """Move an archived batch back to data/raw/ and into the pipeline's list."""
    _move(settings, batch_id, settings.archive_dir, settings.mirror_dir, "restore")
    params.register(settings, unarchive=[batch_id])
    return _changed_paths(settings)


def _changed_paths(settings: Settings) -> list[str]:
    return [line[3:] for line in dvcrepo.git_status(settings.root)]
