"""What makes `pull`, `archive` and `restore` transactions: one lock per repository, one journal per batch.

Each of these commands holds the repository lock (`data/raw/.pose-sync/lock`) from start to end, so two
never interleave their edits of the mirror, `params.yaml` or DVC's files. Before it changes anything a
reader could see, a command writes a journal `data/raw/.pose-sync/journal/<batch>.json` naming the end
state it is heading for, updates its `step` as it goes, and removes it last. A journal that is still
there when the lock is free is the trace of a command that was killed: the next `pull`, `archive` or
`restore` settles it first (see settle), and `status` reports the batch as interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pose_factory.core import contract
from pose_factory.core.errors import DiskError, RepositoryError
from pose_factory.core.fsutil import atomic_write_path, exclusive_lock, lock_holder
from pose_factory.core.settings import Settings

JOURNAL_VERSION = 1
COMMANDS = ("pull", "archive", "restore")


@dataclass
class Journal:
    command: str  # pull | archive | restore
    batch_id: str
    step: str  # pull: fetching, verified, swapped; archive/restore: moving
    manifest_sha256: str | None = None  # pull: the version being installed
    pid: int = field(default_factory=os.getpid)
    version: int = JOURNAL_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _journal_dir(settings: Settings) -> Path:
    return settings.layout.journal_dir


def ensure_transaction_dir(settings: Settings) -> Path:
    """Create data/raw/.pose-sync/ with a .gitignore that hides the whole folder from git."""
    folder = settings.transaction_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ignore = folder / ".gitignore"
        if not ignore.exists():
            with atomic_write_path(ignore) as tmp:
                tmp.write_text("# pose-sync's lock, journals and staging: never part of a dataset version\n*\n")
    except OSError as exc:
        raise DiskError(f"cannot write in the data folder: {exc.strerror}", where=str(folder),
                        hint="make the data folder writable (and check the disk is not full)") from None
    return folder


@contextmanager
def locked(settings: Settings, command: str) -> Iterator[None]:
    """Hold the repository lock for the duration of a command that changes the mirror."""
    ensure_transaction_dir(settings)
    with exclusive_lock(settings.layout.lock_file, command):
        yield


def holder(settings: Settings) -> tuple[int, str] | None:
    """(pid, command) of a running pull/archive/restore in this repository, if any."""
    return lock_holder(settings.layout.lock_file)


def write(settings: Settings, journal: Journal) -> None:
    """Record (atomically) where a command is; written before each step a crash must be able to resume."""
    path = _journal_dir(settings) / f"{journal.batch_id}.json"
    try:
        with atomic_write_path(path) as tmp:
            tmp.write_bytes(contract.dumps(journal.as_dict()))
    except OSError as exc:
        raise DiskError(f"cannot write the journal: {exc.strerror}", where=str(path),
                        hint="make the data folder writable (and check the disk is not full)") from None


def remove(settings: Settings, batch_id: str) -> None:
    """The command finished (or was undone): forget its journal."""
    (_journal_dir(settings) / f"{batch_id}.json").unlink(missing_ok=True)


def pending(settings: Settings) -> list[Journal]:
    """Every journal left in the repository, oldest batch id first."""
    folder = _journal_dir(settings)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            journal = Journal(**{k: data[k] for k in ("command", "batch_id", "step", "manifest_sha256", "pid",
                                                     "version")})
        except (OSError, ValueError, KeyError, TypeError):
            raise RepositoryError("a pose-sync journal is unreadable", where=str(path),
                                  hint="it is written atomically, so it was edited by hand: delete it and run "
                                       "`pose-sync status`") from None
        if journal.command not in COMMANDS or journal.batch_id != path.stem:
            raise RepositoryError(f"a pose-sync journal names command {journal.command!r} for "
                                  f"{journal.batch_id!r}", where=str(path),
                                  hint="delete it and run `pose-sync status`")
        found.append(journal)
    return found


def settle(settings: Settings) -> list[dict[str, str]]:
    """Finish or undo every command a crash interrupted (the caller holds the lock).

    A pull is completed when its verified batch was already swapped into the mirror (the swap is its
    commit point), else rolled back, its staging kept so the next pull resumes. An archive or restore is
    always completed: every step is local and repeatable. Returns what was done, per batch.
    """
    from pose_factory.dataset import mirror, pull

    outcomes = []
    for journal in pending(settings):
        if journal.command == "pull":
            outcome = pull.finish_interrupted(settings, journal)
        else:
            outcome = mirror.finish_interrupted(settings, journal)
        outcomes.append({"batch_id": journal.batch_id, "command": journal.command, "outcome": outcome})
    return outcomes
