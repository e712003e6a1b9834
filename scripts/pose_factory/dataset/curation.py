"""Curation: keep or reject the samples of a batch by eye, and keep the decisions as data.

`pose-sync curate [BATCH_ID]` serves a page on 127.0.0.1 where the batch is shown as a grid and decided with the
keyboard. Every decision is written at once, atomically, to `data/curation/<batch_id>.tsv`: one line per decided sample
(sample id, keep or reject, reason, and a fingerprint of the sample's files), sorted, so that git shows a
curation as a readable diff and a killed server loses nothing already saved. A decision applies while the
sample's files are the ones it was made on: after a re-render, a changed sample's decision is kept in the file
but marked for a fresh look (and not applied) until it is decided again.

`materialize` leaves out rejected samples (`working.curation: respect`), and `diff` / `review` report how
curation changed between two versions.

The page and its server are in curation_server.py; this module is the data side, which `materialize`, `diff`
and `review` read too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pose_factory.core import contract
from pose_factory.core.errors import BatchNotFoundError, ConfigError, UsageError
from pose_factory.core.fsutil import atomic_write_path, check_relative_path, sha256_bytes
from pose_factory.core.layout import MANIFEST_NAME
from pose_factory.core.settings import Settings

if TYPE_CHECKING:
    from pose_factory.core.models import Manifest, ManifestSample

CURATION_JSON_VERSION = 1
TSV_COLUMNS = ("sample_id", "decision", "reason", "files")
DECISIONS = ("keep", "reject")
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


# --- decisions: data/curation/<batch_id>.tsv ------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    sample_id: str
    decision: str  # keep | reject
    reason: str
    files: str  # fingerprint of the sample's files when it was decided

    def as_dict(self) -> dict[str, str]:
        return {"sample_id": self.sample_id, "decision": self.decision, "reason": self.reason, "files": self.files}


def decisions_file(curation_dir: Path, batch_id: str) -> Path:
    """Where a batch's decisions live."""
    return curation_dir / f"{batch_id}.tsv"


def sample_fingerprints(manifest: Manifest) -> dict[str, str]:
    """{sample id: 16 hex digits summing up the sha256 of every file of the sample (annotation included)}."""
    sha = {f["path"]: f["sha256"] for f in manifest["files"]}
    out = {}
    for sample in manifest["samples"]:
        paths = sorted({*sample["files"].values(), sample["annotation"]})
        text = "".join(f"{path} {sha.get(path, '')}\n" for path in paths)
        out[sample["sample_id"]] = sha256_bytes(text.encode())[:16]
    return out


def parse_decisions(text: str, where: str) -> dict[str, Decision]:
    """The decisions in a curation file's text; a malformed line is an error naming the line."""
    lines = text.splitlines()
    if not lines:
        return {}
    hint = ("each line is sample_id<TAB>keep|reject<TAB>reason<TAB>files under that header; fix or delete the "
            "line (`git diff` shows what changed), then run the command again")
    if tuple(lines[0].split("\t")) != TSV_COLUMNS:
        raise ConfigError("the first line is not the header " + "\\t".join(TSV_COLUMNS), where=f"{where}:1",
                          hint=hint)
    out: dict[str, Decision] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != len(TSV_COLUMNS) or not cells[0] or cells[1] not in DECISIONS or (
                cells[3] and not _FINGERPRINT.match(cells[3])):
            raise ConfigError(f"line {number} is not a decision: {line[:80]!r}", where=f"{where}:{number}", hint=hint)
        if cells[0] in out:
            raise ConfigError(f"sample {cells[0]} is decided twice (line {number})", where=f"{where}:{number}",
                              hint=hint)
        out[cells[0]] = Decision(*cells)
    return out


def read_decisions(path: Path) -> dict[str, Decision]:
    """A curation file's decisions ({} when the batch was never curated)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the curation file: {exc}", where=str(path),
                          hint="restore it from git (`git checkout -- <file>`)") from None
    return parse_decisions(text, str(path))


def format_decisions(decisions: dict[str, Decision]) -> str:
    """The file's text: a header, then one line per sample in sample-id order (stable, readable diffs)."""
    rows = ["\t".join(TSV_COLUMNS)]
    rows += ["\t".join((d.sample_id, d.decision, d.reason, d.files)) for _, d in sorted(decisions.items())]
    return "\n".join(rows) + "\n"


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Serialise writers of one curation folder (two pages, or two servers, on the same batch)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_decision(curation_dir: Path, batch_id: str, sample_id: str, decision: str, reason: str,
                    fingerprint: str) -> tuple[Decision | None, Decision | None]:
    """Write one decision (or "clear" it) to the batch's file, atomically and durably; return (before, after)."""
    path = decisions_file(curation_dir, batch_id)
    with _folder_lock(curation_dir):
        current = read_decisions(path)
        previous = current.get(sample_id)
        new = None if decision == "clear" else Decision(sample_id, decision, reason, fingerprint)
        if new is None:
            current.pop(sample_id, None)
        else:
            current[sample_id] = new
        with atomic_write_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(format_decisions(current))
            handle.flush()
            os.fsync(handle.fileno())
    return previous, new


@dataclass(frozen=True)
class Applied:
    """The decisions of a batch checked against its current files."""

    decisions: dict[str, Decision]
    stale: set[str]  # decided on files that have changed since: to look at again, not applied
    orphans: set[str]  # decided samples the batch no longer has

    def rejected(self) -> set[str]:
        return {sid for sid, d in self.decisions.items()
                if d.decision == "reject" and sid not in self.stale and sid not in self.orphans}


def apply_decisions(decisions: dict[str, Decision], fingerprints: dict[str, str]) -> Applied:
    """Which decisions still hold for the batch's current files."""
    orphans = {sid for sid in decisions if sid not in fingerprints}
    stale = {sid for sid, d in decisions.items() if sid in fingerprints and d.files != fingerprints[sid]}
    return Applied(decisions, stale, orphans)


def rejected_samples(curation_dir: Path, batch_id: str, manifest: Manifest) -> tuple[set[str], int]:
    """(sample ids rejected by a decision that still holds, decisions waiting for a fresh look)."""
    applied = apply_decisions(read_decisions(decisions_file(curation_dir, batch_id)), sample_fingerprints(manifest))
    return applied.rejected(), len(applied.stale)


def counts(applied: Applied, samples: int | None = None) -> dict[str, Any]:
    """Keep / reject / fresh-look counts and rejections per reason."""
    live = {sid: d for sid, d in applied.decisions.items() if sid not in applied.orphans}
    out: dict[str, Any] = {
        "keep": sum(d.decision == "keep" and sid not in applied.stale for sid, d in live.items()),
        "reject": len(applied.rejected()),
        "fresh_look": len(applied.stale),
        "reasons": dict(sorted(Counter(d.reason or "(no reason)" for sid, d in live.items()
                                       if d.decision == "reject" and sid not in applied.stale).items())),
    }
    if samples is not None:
        out["undecided"] = samples - out["keep"] - out["reject"] - out["fresh_look"]
    return out


def compare(before: Applied | None, after: Applied | None) -> dict[str, Any] | None:
    """How curation changed between two versions of a batch (None when it did not)."""
    empty = Applied({}, set(), set())
    old, new = before or empty, after or empty
    if old.decisions == new.decisions and old.stale == new.stale:
        return None
    rejected_before, rejected_after = old.rejected(), new.rejected()
    kept = {s for s, d in new.decisions.items() if d.decision == "keep"} - {
        s for s, d in old.decisions.items() if d.decision == "keep"}
    return {"before": counts(old), "after": counts(new),
            "newly_rejected": sorted(rejected_after - rejected_before),
            "no_longer_rejected": sorted(rejected_before - rejected_after),
            "newly_kept": sorted(kept),
            "fresh_look": sorted(new.stale)}


def review_block(curation: list[dict[str, Any]]) -> str:
    """The review page's curation table (how many rejected, for which reasons), or '' when nothing changed."""
    import html

    if not curation:
        return ""
    rows = []
    for entry in curation:
        batch = html.escape(entry["batch_id"])
        reasons = ", ".join(f"{html.escape(r)} {n}" for r, n in entry["after"]["reasons"].items()) or "-"
        rows.append(f'<tr><td>{batch}</td><td>{entry["before"]["reject"]} &rarr; '
                    f'<span data-count="curation-rejected-{batch}">{entry["after"]["reject"]}</span></td>'
                    f'<td data-count="curation-newly-rejected-{batch}">{len(entry["newly_rejected"])}</td>'
                    f'<td>{len(entry["no_longer_rejected"])}</td><td>{len(entry["fresh_look"])}</td>'
                    f"<td>{reasons}</td></tr>")
    return ('<h2 id="curation">Curation</h2><table><tr><th>batch</th><th>rejected</th><th>newly rejected</th>'
            "<th>no longer rejected</th><th>to look at again</th><th>reasons (after)</th></tr>"
            + "".join(rows) + "</table>")


# --- the batch being curated --------------------------------------------------------------------------

@dataclass
class CurationBatch:
    batch_id: str
    folder: Path
    manifest: Manifest
    samples: dict[str, ManifestSample]  # sample id -> manifest entry
    sha: dict[str, str]  # file path -> sha256
    fingerprints: dict[str, str]


def open_batch(settings: Settings, batch_id: str | None) -> CurationBatch:
    """The batch to curate: the one named (in the mirror or the archive), else the newest in batches:."""
    from pose_factory.dataset import params

    if batch_id is None:
        registered = params.read_params(settings).get("batches") or []
        present = [b for b in registered if (settings.mirror_dir / str(b) / MANIFEST_NAME).is_file()]
        if not present:
            raise BatchNotFoundError("no batch to curate: none of batches: in params.yaml is checked out",
                                     where=str(settings.params_file),
                                     hint="pull one (`pose-sync pull-latest`), or `dvc pull` in a fresh clone")

        def created(candidate: str) -> tuple[str, str]:
            manifest = orjson.loads((settings.mirror_dir / candidate / MANIFEST_NAME).read_bytes())
            return str(manifest.get("created_at", "")), candidate

        batch_id = max(present, key=created)
    if "/" in batch_id:
        raise UsageError(f"{batch_id!r} is not a batch id", where="BATCH_ID", hint="`pose-sync status` lists them")
    check_relative_path(batch_id, where="BATCH_ID")
    for folder in (settings.mirror_dir / batch_id, settings.archive_dir / batch_id):
        if (folder / MANIFEST_NAME).is_file():
            break
    else:
        raise BatchNotFoundError(f"no batch {batch_id!r} in the mirror or the archive", where=str(settings.mirror_dir),
                                 hint="`pose-sync status` lists the batches; `dvc pull` brings a tracked one's data")
    manifest = contract.load_manifest(folder)
    return CurationBatch(batch_id, folder, manifest, {s["sample_id"]: s for s in manifest["samples"]},
                         {f["path"]: f["sha256"] for f in manifest["files"]}, sample_fingerprints(manifest))


def summary(settings: Settings, batch_id: str) -> dict[str, Any]:
    """`pose-sync curation BATCH_ID`: what has been decided, what is left, what needs a fresh look."""
    batch = open_batch(settings, batch_id)
    path = decisions_file(settings.curation_dir, batch.batch_id)
    applied = apply_decisions(read_decisions(path), batch.fingerprints)
    return {"version": CURATION_JSON_VERSION, "batch_id": batch.batch_id,
            "file": path.relative_to(settings.root).as_posix(), "samples": len(batch.samples),
            **counts(applied, len(batch.samples)),
            "rejected": sorted(applied.rejected()), "fresh_look_samples": sorted(applied.stale),
            "orphans": sorted(applied.orphans)}


