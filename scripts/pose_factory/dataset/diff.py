"""Dataset diffs between two versions of the repository: `pose-sync diff`, and the data behind `review`.

A version is a git revision (read through DVC's filesystem, so nothing in the workspace changes and
files come from the DVC cache or remote) or the workspace itself. The diff works from manifests: a
sample's file changed when its sha256 changed, so unchanged images are never read. Only the
annotations of samples whose keypoints may have moved are read, to measure how far each joint moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pose_factory.core import contract, layout, schemas
from pose_factory.core.errors import PoseFactoryError, RepositoryError, SchemaError, UsageError
from pose_factory.core.layout import MANIFEST_NAME
from pose_factory.dataset import curation, dvcrepo

if TYPE_CHECKING:
    from pose_factory.core.models import Manifest

DIFF_JSON_VERSION = 1
WORKSPACE = "workspace"
# Fields whose change a reviewer must see; the files list and samples are compared separately.
MANIFEST_FIELDS = ("schema_version", "project", "created_at", "job", "software", "conventions", "image", "modalities")


class Version:
    """One version of the repository, read-only: a git revision or the workspace."""

    def __init__(self, root: Path, rev: str | None):
        self.root = root
        self.rev = rev
        self.label = rev or WORKSPACE
        self.commit: str | None = None
        self._fs = None
        if rev is not None:
            try:
                commit = dvcrepo.git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
            except PoseFactoryError:
                raise UsageError(f"{rev!r} is not a git revision of this repository", where=str(root),
                                 hint="use a commit, branch or tag, e.g. HEAD~1 or main") from None
            self.commit = commit

    def _filesystem(self):
        if self._fs is None:
            from dvc.api import DVCFileSystem

            self._fs = DVCFileSystem(str(self.root), rev=self.commit)
        return self._fs

    def read_bytes(self, path: str) -> bytes | None:
        """A file of this version, or None if it has none."""
        if self.rev is None:
            full = self.root / path
            return full.read_bytes() if full.is_file() else None
        fs = self._filesystem()
        try:
            with fs.open(path, "rb") as handle:
                return handle.read()
        except (FileNotFoundError, IsADirectoryError):
            return None
        except Exception as exc:  # DVC: data neither in the cache nor in the remote
            raise RepositoryError(f"cannot read {path} at {self.label}: {type(exc).__name__}", where=str(self.root),
                                  hint="run `dvc fetch --all-commits` (or `dvc pull` on that revision)") from None

    def params(self) -> dict[str, Any]:
        from pose_factory.core.settings import load_yaml, yaml_text

        data = self.read_bytes(layout.PARAMS_FILE.as_posix())
        if not data:
            return {}
        from pose_factory.dataset.params import check_shape

        label = f"{layout.PARAMS_FILE} at {self.label}"
        hint = "fix it (or compare other revisions)"
        values = load_yaml(yaml_text(data, label, error=RepositoryError), label, error=RepositoryError, hint=hint)
        return check_shape(values if values is not None else {}, label, RepositoryError)

    def batches(self) -> dict[str, str]:
        """{batch id: 'raw' | 'archive'} in this version."""
        params = self.params()
        found = {b: "raw" for b in params.get("batches") or []}
        found.update({b: "archive" for b in params.get("archived") or []})
        return found

    @staticmethod
    def folder(place: str) -> str:
        """Where a batch of this place ('raw' or 'archive') is, relative to the root, as git trees name it."""
        return (layout.MIRROR if place == "raw" else layout.ARCHIVE).as_posix()

    def manifest(self, batch_id: str, place: str) -> tuple[Manifest, bytes] | None:
        folder = self.folder(place)
        data = self.read_bytes(f"{folder}/{batch_id}/{MANIFEST_NAME}")
        if data is None and self.read_bytes(f"{folder}/{batch_id}.dvc") is not None:
            # Tracked at this version, yet unreadable: saying "unchanged" or "removed" would be a lie.
            raise RepositoryError(f"{batch_id} is tracked at {self.label} but its data cannot be read",
                                  where=f"{folder}/{batch_id}.dvc",
                                  hint="commit .dvc/config (DVC needs it at every revision), and fetch the data: "
                                       "`dvc fetch --all-commits`")
        if not data:
            return None
        # Checked as a pull checks it: a manifest changed by hand (or cut short) is named, not a traceback.
        # A file edited in place through its hardlink changed DVC's cached copy too, so HEAD shows it as well.
        hint = (f"`pose-sync pull {batch_id} --repair` restores a pulled batch and DVC's cache (or compare other "
                "revisions)")
        return contract.parse_manifest_bytes(data, f"{folder}/{batch_id}/{MANIFEST_NAME} at {self.label}",
                                             hint=hint), data

    def batch_file(self, batch_id: str, place: str, rel: str) -> bytes | None:
        return self.read_bytes(f"{self.folder(place)}/{batch_id}/{rel}")

    def metrics(self, batch_id: str) -> dict[str, Any] | None:
        path = f"{layout.VALIDATION_REPORTS.as_posix()}/{batch_id}/metrics.json"
        data = self.read_bytes(path)
        if not data:
            return None
        label, hint = f"{path} at {self.label}", "`dvc repro` writes the validation reports again"
        metrics = schemas.parse_json(data, label, hint=hint)
        if not isinstance(metrics, dict):
            raise SchemaError(f"$: expected an object, found {type(metrics).__name__}", where=label, hint=hint)
        return metrics


def _changed_fields(old: Any, new: Any, path: str = "$") -> list[dict[str, Any]]:
    """Every leaf that differs between two JSON values, with its path."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _changed_fields(old.get(key), new.get(key), f"{path}.{key}")
        return out
    # Lists of objects are compared item by item; a list of plain values (a colour, a range) is one value.
    if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and len(old) <= 64
            and any(isinstance(v, (dict, list)) for v in old + new)):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += _changed_fields(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [{"field": path, "before": old, "after": new}]


@dataclass
class JointMovement:
    joint: str
    mean_px: float
    max_px: float
    visibility_flips: int


@dataclass
class SampleMovement:
    """How far one sample's keypoints moved: the farthest joint, the mean over joints, visibility flips."""

    sample_id: str
    max_px: float
    mean_px: float
    visibility_flips: int
    joint: str | None  # the joint that moved farthest


@dataclass
class BatchDiff:
    batch_id: str
    status: str  # added | removed | changed | archived | restored | unchanged
    samples_before: int = 0
    samples_after: int = 0
    samples_added: list[str] = field(default_factory=list)
    samples_removed: list[str] = field(default_factory=list)
    modified: dict[str, list[str]] = field(default_factory=dict)  # modality -> sample ids
    manifest_changes: list[dict[str, Any]] = field(default_factory=list)
    joints: list[JointMovement] = field(default_factory=list)
    metrics_before: dict[str, Any] | None = None
    metrics_after: dict[str, Any] | None = None
    changed_samples: list[str] = field(default_factory=list)
    movement: dict[str, SampleMovement] = field(default_factory=dict)  # samples whose keypoints were compared

    def by_movement(self) -> list[str]:
        """The changed samples, the one whose keypoints moved farthest first (then by flips, then by id)."""
        def farthest(sid: str) -> tuple[float, int, str]:
            moved = self.movement.get(sid)
            return (-moved.max_px, -moved.visibility_flips, sid) if moved else (0.0, 0, sid)

        return sorted(self.changed_samples, key=farthest)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "status": self.status,
            "samples": {"before": self.samples_before, "after": self.samples_after,
                        "added": self.samples_added, "removed": self.samples_removed,
                        "modified": {m: ids for m, ids in sorted(self.modified.items())},
                        "changed": self.changed_samples},
            "manifest_changes": self.manifest_changes,
            "keypoints": [vars(j) for j in self.joints],
            "moved_samples": [vars(self.movement[sid]) for sid in self.by_movement() if sid in self.movement],
            "validation": {"before": self.metrics_before, "after": self.metrics_after},
        }


@dataclass
class DatasetDiff:
    before: str
    after: str
    batches: list[BatchDiff]
    curation: list[dict[str, Any]] = field(default_factory=list)  # per batch whose curation decisions changed

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.batches:
            out[b.status] = out.get(b.status, 0) + 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {"version": DIFF_JSON_VERSION, "before": self.before, "after": self.after,
                "summary": {"batches": self.counts(),
                            "samples_added": sum(len(b.samples_added) for b in self.batches),
                            "samples_removed": sum(len(b.samples_removed) for b in self.batches),
                            "samples_changed": sum(len(b.changed_samples) for b in self.batches),
                            "curation": {
                                "rejected_before": sum(c["before"]["reject"] for c in self.curation),
                                "rejected_after": sum(c["after"]["reject"] for c in self.curation),
                                "newly_rejected": sum(len(c["newly_rejected"]) for c in self.curation),
                                "no_longer_rejected": sum(len(c["no_longer_rejected"]) for c in self.curation)}},
                "batches": [b.as_dict() for b in self.batches if b.status != "unchanged"],
                "curation": self.curation}


def _sample_hashes(manifest: Manifest) -> dict[str, dict[str, str]]:
    """{sample id: {modality or 'annotation': sha256}} from the manifest alone."""
    sha = {f["path"]: f["sha256"] for f in manifest["files"]}
    out = {}
    for sample in manifest["samples"]:
        entry = {m: sha.get(rel, "") for m, rel in sample["files"].items()}
        entry["annotation"] = sha.get(sample["annotation"], "")
        out[sample["sample_id"]] = entry
    return out


def keypoints_of(version: Version, batch_id: str, place: str, annotation: str) -> list[list[float]] | None:
    """The first person's 2D keypoints ([x, y, visibility] per joint) in a sample's annotation, if any."""
    data = version.batch_file(batch_id, place, annotation)
    if not data:
        return None
    doc = schemas.load_checked(data, f"{version.folder(place)}/{batch_id}/{annotation} at {version.label}", "sample")
    return doc["persons"][0]["keypoints_2d"] if doc.get("persons") else None


def _joint_movement(before: Version, after: Version, batch_id: str, places: tuple[str, str],
                    manifests: tuple[Manifest, Manifest], sample_ids: list[str]
                    ) -> tuple[list[JointMovement], dict[str, SampleMovement]]:
    joints = manifests[1]["conventions"]["keypoints"]["joints"]
    paths = [{s["sample_id"]: s["annotation"] for s in m["samples"]} for m in manifests]
    moved: list[list[float]] = [[] for _ in joints]
    flips = [0] * len(joints)
    samples: dict[str, SampleMovement] = {}
    for sid in sample_ids:
        old = keypoints_of(before, batch_id, places[0], paths[0][sid])
        new = keypoints_of(after, batch_id, places[1], paths[1][sid])
        if old is None or new is None:
            continue
        distances: dict[str, float] = {}
        sample_flips = 0
        for j, ((x0, y0, v0), (x1, y1, v1)) in enumerate(zip(old, new)):
            if bool(v0) != bool(v1) or (v0 == 2) != (v1 == 2):
                flips[j] += 1
                sample_flips += 1
            if v0 and v1:
                distances[joints[j]] = math.hypot(x1 - x0, y1 - y0)
                moved[j].append(distances[joints[j]])
        farthest = max(distances, key=distances.__getitem__) if distances else None
        samples[sid] = SampleMovement(sid, round(distances[farthest], 3) if farthest else 0.0,
                                      round(sum(distances.values()) / len(distances), 3) if distances else 0.0,
                                      sample_flips, farthest if farthest and distances[farthest] > 0 else None)
    per_joint = [JointMovement(name, round(sum(d) / len(d), 3) if d else 0.0, round(max(d), 3) if d else 0.0,
                               flips[j]) for j, (name, d) in enumerate(zip(joints, moved))]
    return per_joint, samples


def diff_batch(before: Version, after: Version, batch_id: str, places: tuple[str | None, str | None]
               ) -> BatchDiff:
    """How one batch differs between the two versions."""
    old_place, new_place = places
    old = before.manifest(batch_id, old_place) if old_place else None
    new = after.manifest(batch_id, new_place) if new_place else None
    result = BatchDiff(batch_id, "unchanged")
    result.metrics_before = before.metrics(batch_id) if old_place else None
    result.metrics_after = after.metrics(batch_id) if new_place else None
    if old is None or old_place is None:
        if new is not None:
            result.status, result.samples_after = "added", len(new[0]["samples"])
            result.samples_added = [s["sample_id"] for s in new[0]["samples"]]
        return result
    if new is None or new_place is None:
        result.status, result.samples_before = "removed", len(old[0]["samples"])
        result.samples_removed = [s["sample_id"] for s in old[0]["samples"]]
        return result
    (m_old, b_old), (m_new, b_new) = old, new
    result.samples_before, result.samples_after = len(m_old["samples"]), len(m_new["samples"])
    moved_place = old_place != new_place
    if b_old == b_new:
        result.status = ("archived" if new_place == "archive" else "restored") if moved_place else "unchanged"
        return result
    result.status = "changed"
    h_old, h_new = _sample_hashes(m_old), _sample_hashes(m_new)
    result.samples_added = sorted(set(h_new) - set(h_old))
    result.samples_removed = sorted(set(h_old) - set(h_new))
    common = sorted(set(h_old) & set(h_new))
    changed = set()
    for sid in common:
        for key in sorted(set(h_old[sid]) | set(h_new[sid])):
            if h_old[sid].get(key) != h_new[sid].get(key):
                result.modified.setdefault(key, []).append(sid)
                changed.add(sid)
    result.changed_samples = sorted(changed)
    for name in MANIFEST_FIELDS:
        result.manifest_changes += _changed_fields(m_old.get(name), m_new.get(name), f"$.{name}")
    # Keypoints can only have moved where the annotation or the OpenPose JSON changed.
    touched = sorted(set(result.modified.get("annotation", [])) | set(result.modified.get("openpose_json", [])))
    result.joints, result.movement = _joint_movement(before, after, batch_id, (old_place, new_place),
                                                     (m_old, m_new), touched)
    return result


def diff(root: Path, rev_a: str | None = None, rev_b: str | None = None) -> DatasetDiff:
    """Like git: no revision = HEAD against the workspace; one = REV against the workspace; two = A against B."""
    dvcrepo.require_repository(root)
    before = Version(root, rev_a or "HEAD")
    after = Version(root, rev_b) if rev_b else Version(root, None)
    old, new = before.batches(), after.batches()
    batches = [diff_batch(before, after, batch_id, (old.get(batch_id), new.get(batch_id)))
               for batch_id in sorted(set(old) | set(new))]
    curated = []
    for batch_id in sorted(set(old) | set(new)):
        change = curation.compare(_curation(before, batch_id, old.get(batch_id)),
                                  _curation(after, batch_id, new.get(batch_id)))
        if change:
            curated.append({"batch_id": batch_id, **change})
    return DatasetDiff(before.label, after.label, batches, curated)


def _curation(version: Version, batch_id: str, place: str | None) -> curation.Applied | None:
    """A batch's curation decisions in one version, checked against that version's files (None: never curated)."""
    path = f"{layout.CURATION.as_posix()}/{batch_id}.tsv"
    data = version.read_bytes(path)
    if data is None:
        return None
    decisions = curation.parse_decisions(data.decode("utf-8", "replace"), f"{path} at {version.label}")
    loaded = version.manifest(batch_id, place) if place else None
    # Without the batch's files at that version, the decisions are taken as they were made.
    fingerprints = curation.sample_fingerprints(loaded[0]) if loaded else {s: d.files for s, d in decisions.items()}
    return curation.apply_decisions(decisions, fingerprints)


def summary_lines(result: DatasetDiff) -> list[str]:
    """The human summary `pose-sync diff` prints."""
    counts = result.counts()
    lines = [f"dataset diff {result.before} -> {result.after}: "
             + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "unchanged") or "no change")
             + (f" ({counts['unchanged']} unchanged)" if counts.get("unchanged") else "")
             + (f"; curation changed in {len(result.curation)} batch(es)" if result.curation else "")]
    for entry in result.curation:
        reasons = ", ".join(f"{reason} {n}" for reason, n in entry["after"]["reasons"].items())
        lines.append(f"  curation {entry['batch_id']}: rejected {entry['before']['reject']} -> "
                     f"{entry['after']['reject']} (+{len(entry['newly_rejected'])} "
                     f"-{len(entry['no_longer_rejected'])})" + (f"; {reasons}" if reasons else "")
                     + (f"; {len(entry['fresh_look'])} to look at again" if entry["fresh_look"] else ""))
    for b in result.batches:
        if b.status == "unchanged":
            continue
        if b.status in ("added", "removed"):
            lines.append(f"  {b.status:8} {b.batch_id}: {max(b.samples_before, b.samples_after)} samples")
            continue
        if b.status in ("archived", "restored"):
            lines.append(f"  {b.status:8} {b.batch_id}")
            continue
        lines.append(f"  changed  {b.batch_id}: samples {b.samples_before} -> {b.samples_after}, "
                     f"+{len(b.samples_added)} -{len(b.samples_removed)} ~{len(b.changed_samples)}")
        for modality, ids in sorted(b.modified.items()):
            lines.append(f"    {modality}: {len(ids)} sample(s) modified")
        for change in b.manifest_changes[:8]:
            lines.append(f"    manifest {change['field']}: {_short(change['before'])} -> {_short(change['after'])}")
        if len(b.manifest_changes) > 8:
            lines.append(f"    ... and {len(b.manifest_changes) - 8} more manifest field(s)")
        moved = sorted((j for j in b.joints if j.max_px > 0 or j.visibility_flips), key=lambda j: -j.max_px)
        for j in moved[:6]:
            lines.append(f"    keypoint {j.joint}: mean {j.mean_px:.1f} px, max {j.max_px:.1f} px, "
                         f"{j.visibility_flips} visibility flip(s)")
        if b.metrics_before != b.metrics_after:
            before = b.metrics_before or {}
            after = b.metrics_after or {}
            lines.append("    validation: " + ", ".join(f"{k} {before.get(k, '-')} -> {after.get(k, '-')}"
                                                      for k in ("samples", "errors", "warnings")))
    return lines


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


# --- Markdown, for a pull-request comment ---------------------------------------------------------------

VALIDATION_KEYS = ("samples", "files", "errors", "warnings")


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text if len(text) <= 60 else text[:57] + "..."
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]], right: int = 1) -> list[str]:
    """A GitHub-flavoured Markdown table; columns from `right` on are numbers, right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    return (["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
            + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows] + [""])


def markdown_summary(result: DatasetDiff, *, max_rows: int = 20) -> str:
    """The diff as Markdown ready to paste into a pull-request comment: the batches, their samples, how far
    each joint moved, the samples that moved most and the validation metrics before and after."""
    before, after = f"`{result.before}`", f"`{result.after}`"
    counts = result.counts()
    changed = [b for b in result.batches if b.status != "unchanged"]
    lines = [f"### Pose dataset diff: {before} → {after}", ""]
    curated = _curation_markdown(result.curation)
    if not changed:
        return "\n".join(lines + ["No batch changed" + (f" ({counts.get('unchanged', 0)} unchanged)."
                                                          if counts.get("unchanged") else "."), ""] + curated)
    lines += _table(("batches", "count"), sorted(counts.items()))
    lines += [f"**Samples:** {sum(len(b.samples_added) for b in result.batches)} added, "
              f"{sum(len(b.samples_removed) for b in result.batches)} removed, "
              f"{sum(len(b.changed_samples) for b in result.batches)} changed.", ""]
    for b in changed:
        lines += [f"#### `{b.batch_id}`: {b.status}", ""]
        if b.status in ("added", "removed"):
            lines += [f"{max(b.samples_before, b.samples_after)} samples.", ""]
        elif b.status == "changed":
            modified = ", ".join(f"{m} {len(ids)}" for m, ids in sorted(b.modified.items()))
            lines += [f"Samples {b.samples_before} → {b.samples_after}: {len(b.samples_added)} added, "
                      f"{len(b.samples_removed)} removed, {len(b.changed_samples)} changed"
                      + (f" (files modified per modality: {modified})." if modified else "."), ""]
            moved = sorted((j for j in b.joints if j.max_px > 0 or j.visibility_flips), key=lambda j: -j.max_px)
            if moved:
                lines += ["Keypoint movement per joint, in pixels, over the samples whose keypoints changed:", ""]
                lines += _table(("joint", "mean px", "max px", "visibility flips"),
                                [(j.joint, f"{j.mean_px:.1f}", f"{j.max_px:.1f}", j.visibility_flips)
                                 for j in moved[:max_rows]])
            farthest = [b.movement[sid] for sid in b.by_movement() if sid in b.movement][:5]
            if farthest and (farthest[0].max_px > 0 or farthest[0].visibility_flips):
                lines += ["Samples that moved most: " + ", ".join(
                    f"`{m.sample_id}` ({m.max_px:.1f} px" + (f", {m.joint}" if m.joint else "")
                    + (f", {m.visibility_flips} flip(s)" if m.visibility_flips else "") + ")"
                    for m in farthest) + ".", ""]
            if b.manifest_changes:
                lines += ["Manifest fields changed:", ""]
                lines += _table(("field", "before", "after"),
                                [(f"`{c['field']}`", c["before"], c["after"]) for c in b.manifest_changes[:max_rows]],
                                right=3)
                if len(b.manifest_changes) > max_rows:
                    lines += [f"... and {len(b.manifest_changes) - max_rows} more field(s).", ""]
        if b.metrics_before or b.metrics_after:
            lines += ["Validation (`dvc metrics`):", ""]
            sides = ((f"before ({before})", b.metrics_before), (f"after ({after})", b.metrics_after))
            rows = [(label, *[(metrics or {}).get(k, "-") for k in VALIDATION_KEYS]) for label, metrics in sides]
            lines += _table(("", *VALIDATION_KEYS), rows)
    return "\n".join(lines + curated)


def _curation_markdown(curated: list[dict[str, Any]]) -> list[str]:
    """Curation changes (`pose-sync curate`): rejected before and after, and why."""
    if not curated:
        return []
    rows = [(f"`{c['batch_id']}`", ", ".join(f"{r} {n}" for r, n in c["after"]["reasons"].items()) or "-",
             c["before"]["reject"], c["after"]["reject"], len(c["newly_rejected"]), len(c["no_longer_rejected"]))
            for c in curated]
    return ["#### Curation", ""] + _table(("batch", "reasons (after)", "rejected before", "rejected after",
                                           "newly rejected", "no longer rejected"), rows, right=2)
