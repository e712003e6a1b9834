"""`pose-sync validate`: everything the schemas say about a batch, and what they cannot say.

Schema checks: the manifest, every per-sample annotation and every OpenPose JSON. Beyond the schemas:
every listed file exists with its size and sha256 and nothing else is there; every sample has every
modality; ids are unique; images have the manifest's size, are 8-bit RGB and are not truncated;
exactly 18 body keypoints, inside the canvas; OpenPose JSON agrees with the annotation; totals add up.

The result is a report (errors, warnings, counts, statistics). `write_report` writes it as DVC
metrics (`metrics.json`) and plots (CSV files) into the folder the pipeline names.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_factory.core import contract, schemas
from pose_factory.core.errors import PoseFactoryError, SchemaError, ValidationFailed
from pose_factory.core.fsutil import atomic_write_path, content_digests
from pose_factory.core.layout import MANIFEST_NAME
from pose_factory.core.schemas import Problem

REPORT_VERSION = 1
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
PNG_START = b"\x89PNG\r\n\x1a\n"
BODY_KEYPOINTS = 18
# Keypoints from the annotation and the OpenPose JSON may differ by rounding only.
KEYPOINT_TOLERANCE_PX = 0.02
# A keypoint or the person's box this close to the edge (pixels) touches the border: the figure is cut off.
BORDER_PX = 1.0
# A problem list this long is already unreadable; the counts still cover everything.
KEPT_PROBLEMS = 200


@dataclass
class ValidationReport:
    batch_id: str
    batch_dir: str
    samples: int = 0
    files: int = 0
    bytes: int = 0
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, file: str, where: str, expected: str, found: Any) -> None:
        self.errors.append(Problem(file, where, expected, str(found)))

    def warn(self, file: str, where: str, expected: str, found: Any) -> None:
        self.warnings.append(Problem(file, where, expected, str(found)))

    def metrics(self) -> dict[str, int]:
        return {"samples": self.samples, "files": self.files, "bytes": self.bytes, "errors": len(self.errors),
                "warnings": len(self.warnings)}

    def as_json(self) -> dict[str, Any]:
        return {"version": REPORT_VERSION, "batch_id": self.batch_id, "batch_dir": self.batch_dir, "ok": self.ok,
                **self.metrics(), "problems": [f.as_dict() for f in self.errors[:KEPT_PROBLEMS]],
                "warning_list": [f.as_dict() for f in self.warnings[:KEPT_PROBLEMS]], "stats": self.stats}


def _load(path: Path, label: str, report: ValidationReport, documents: dict[str, bytes] | None = None) -> Any:
    try:
        data = documents[label] if documents is not None and label in documents else path.read_bytes()
        return schemas.parse_json(data, label)  # bounded: a hostile document is a problem, not a crash
    except FileNotFoundError:
        return None  # reported by the file comparison
    except SchemaError as exc:
        report.error(label, "$", "valid JSON", exc.message)
        return None


PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


def png_problem(data: bytes, width: int, height: int, *, grey16: bool = False) -> tuple[str, str, str] | None:
    """(field, expected, found) if these PNG bytes are truncated, corrupt, the wrong size or not 8-bit RGB
    (16-bit greyscale with `grey16`, for depth_metric).

    Reads the chunk structure instead of decoding pixels: every chunk's CRC is checked (which catches
    damage anywhere in the file), IHDR gives size, bit depth and colour type, IEND must close the file.
    """
    if data[:8] != PNG_START:
        return "format", "a PNG file", "another format"
    if len(data) < 8 + 25 + len(PNG_END) or data[-len(PNG_END):] != PNG_END:
        return "bytes", "a complete PNG ending in IEND", "a truncated file"
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        return "format", "a PNG image that decodes", "no IHDR chunk first"
    found_width, found_height, bit_depth, colour_type = struct.unpack(">IIBB", data[16:26])
    position = 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            return "bytes", "a complete PNG ending in IEND", "a truncated file"
        if zlib.crc32(data[position + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            chunk = kind.decode("latin-1")
            return "format", "a PNG image that decodes", f"a damaged {chunk!r} chunk at byte {position}"
        position = end
        if kind == b"IEND":
            break
    if (found_width, found_height) != (width, height):
        return "size", f"{width}x{height} (manifest image)", f"{found_width}x{found_height}"
    if grey16 and (bit_depth != 16 or colour_type != 0):
        return ("mode", "16-bit greyscale (depth_metric)",
                f"{bit_depth}-bit {PNG_COLOUR_TYPES.get(colour_type, colour_type)}")
    if not grey16 and (bit_depth != 8 or colour_type != 2):
        return ("mode", "8-bit RGB (ComfyUI reads 16-bit as /255)",
                f"{bit_depth}-bit {PNG_COLOUR_TYPES.get(colour_type, colour_type)}")
    return None


def _check_keypoints(points: list[list[float]], width: int, height: int, label: str, where: str,
                     report: ValidationReport) -> None:
    if len(points) != BODY_KEYPOINTS:
        report.error(label, where, f"{BODY_KEYPOINTS} COCO-18 body keypoints", f"{len(points)}")
        return
    for joint, (x, y, v) in enumerate(points):
        if v and not (0 <= x < width and 0 <= y < height):
            report.error(label, f"{where}[{joint}]", f"a point inside the {width}x{height} canvas",
                         f"({x}, {y})")
        if not v and (x, y) != (0, 0):
            report.error(label, f"{where}[{joint}]", "0, 0 for a point that is not labelled", f"({x}, {y})")


def _check_framing(annotation: dict[str, Any], width: int, height: int, label: str,
                   report: ValidationReport) -> None:
    """Warn when a body joint or the person's mask (its bbox) touches or leaves the border of the image."""
    for n, person in enumerate(annotation["persons"]):
        x, y, w, h = person["bbox"]
        if w > 0 and (x <= 0 or y <= 0 or x + w >= width or y + h >= height):
            report.warn(label, f"$.persons[{n}].bbox", "the person inside the image, clear of the border",
                        f"the person's mask touches the border ({x}, {y}, {w}, {h})")
            continue
        k = annotation["camera"]["K"]
        for joint, point in enumerate(person.get("keypoints_3d_cam") or []):
            px, py, pz = point
            if pz <= 0:
                u, v = -1.0, -1.0
            else:
                u, v = k[0][0] * px / pz + k[0][2], k[1][1] * py / pz + k[1][2]
            if not (BORDER_PX <= u <= width - BORDER_PX and BORDER_PX <= v <= height - BORDER_PX):
                report.warn(label, f"$.persons[{n}].keypoints_3d_cam[{joint}]", "every body joint inside the image",
                            f"joint {joint} at ({u:.1f}, {v:.1f}) touches or leaves the border")
                break


def _check_sample(batch_dir: Path, entry: dict[str, Any], index: int, manifest: dict[str, Any], listed: set[str],
                  report: ValidationReport, stats: dict[str, Counter], png: dict[str, Any],
                  documents: dict[str, bytes]) -> None:
    sid = entry["sample_id"]
    width, height = manifest["image"]["width"], manifest["image"]["height"]
    where = f"$.samples[{index}]"
    wanted = set(manifest["modalities"])
    have = set(entry["files"])
    if wanted - have:
        report.error(MANIFEST_NAME, f"{where}.files", "every modality of the batch (" + ", ".join(sorted(wanted)) + ")",
                     "missing " + ", ".join(sorted(wanted - have)))
    if have - wanted:
        report.error(MANIFEST_NAME, f"{where}.files", "only the batch's modalities",
                     "extra " + ", ".join(sorted(have - wanted)))
    for modality, rel in sorted(entry["files"].items()):
        if rel not in listed:
            report.error(MANIFEST_NAME, f"{where}.files.{modality}", "a path listed in files", rel)
        elif modality in contract.MODALITIES and not rel.endswith(contract.MODALITIES[modality][1]):
            report.error(MANIFEST_NAME, f"{where}.files.{modality}", f"a {contract.MODALITIES[modality][1]} file", rel)
    if entry["annotation"] not in listed:
        report.error(MANIFEST_NAME, f"{where}.annotation", "a path listed in files", entry["annotation"])

    annotation = _load(batch_dir / entry["annotation"], entry["annotation"], report, documents)
    keypoints = None
    if annotation is not None:
        found = schemas.problems(annotation, "sample", entry["annotation"])
        for p in found:
            report.errors.append(p)
        if not found:
            if annotation["sample_id"] != sid:
                report.error(entry["annotation"], "$.sample_id", f"{sid!r} (manifest)", repr(annotation["sample_id"]))
            if annotation["batch_id"] != manifest["batch_id"]:
                report.error(entry["annotation"], "$.batch_id", repr(manifest["batch_id"]),
                             repr(annotation["batch_id"]))
            camera = annotation["camera"]
            if (camera["width"], camera["height"]) != (width, height):
                report.error(entry["annotation"], "$.camera.width/height", f"{width}x{height}",
                             f"{camera['width']}x{camera['height']}")
            if annotation["files"] != entry["files"]:
                report.error(entry["annotation"], "$.files", "the same files as the manifest's sample entry",
                             "different paths")
            for n, person in enumerate(annotation["persons"]):
                _check_keypoints(person["keypoints_2d"], width, height, entry["annotation"],
                                 f"$.persons[{n}].keypoints_2d", report)
            _check_framing(annotation, width, height, entry["annotation"], report)
            count_coverage(stats, annotation)
            if annotation["persons"]:
                keypoints = annotation["persons"][0]["keypoints_2d"]
                if not any(p[2] == 2 for p in keypoints):
                    report.warn(entry["annotation"], "$.persons[0].keypoints_2d", "at least one visible keypoint",
                                "none visible")

    rel = entry["files"].get("openpose_json")
    if rel and rel in listed:
        openpose = _load(batch_dir / rel, rel, report, documents)
        if openpose is not None:
            found = schemas.problems(openpose, "openpose", rel)
            for p in found:
                report.errors.append(p)
            if not found:
                # 1.1 writes a list of frames (ComfyUI's POSE_KEYPOINT), 1.0 one frame object.
                where = "$[0]" if isinstance(openpose, list) else "$"
                openpose = openpose[0] if isinstance(openpose, list) else openpose
                if (openpose["canvas_width"], openpose["canvas_height"]) != (width, height):
                    report.error(rel, f"{where}.canvas_width/canvas_height", f"{width}x{height}",
                                 f"{openpose['canvas_width']}x{openpose['canvas_height']}")
                for n, person in enumerate(openpose["people"]):
                    flat = person["pose_keypoints_2d"]
                    triples = [flat[i:i + 3] for i in range(0, len(flat), 3)]
                    for joint, (_, _, c) in enumerate(triples):
                        if c not in (0, 1):
                            report.error(rel, f"{where}.people[{n}].pose_keypoints_2d[{joint * 3 + 2}]",
                                         "confidence 1.0 (present) or 0 (missing)", c)
                    _check_keypoints([[x, y, c] for x, y, c in triples], width, height, rel,
                                     f"{where}.people[{n}].pose_keypoints_2d", report)
                if keypoints is not None and openpose["people"]:
                    # "detector" batches leave out occluded joints and face points turned away; "all" (and
                    # 1.0 batches) show every labelled joint.
                    mode = manifest["conventions"].get("openpose", {}).get("keypoints", "all")
                    flat = openpose["people"][0]["pose_keypoints_2d"]
                    for joint, (x, y, v) in enumerate(keypoints):
                        ox, oy, oc = flat[joint * 3:joint * 3 + 3]
                        allowed = (v == 2) if mode == "detector" else bool(v)
                        missing_ok = mode == "detector" or not v
                        if (oc and not allowed) or (not oc and not missing_ok) or (oc and (
                                abs(ox - x) > KEYPOINT_TOLERANCE_PX or abs(oy - y) > KEYPOINT_TOLERANCE_PX)):
                            report.warn(rel, f"{where}.people[0].pose_keypoints_2d[{joint * 3}]",
                                        f"the annotation's point ({x}, {y}, v={v}) under keypoints: {mode}",
                                        f"({ox}, {oy}, c={oc})")
                            break

    for _modality, rel in sorted(entry["files"].items()):
        problem = png.get(rel)
        if problem:
            report.error(rel, problem[0], problem[1], problem[2])


def validate_batch(batch_dir: Path, progress=None) -> ValidationReport:
    """Check one batch folder completely; never raises for a problem in the batch, only reports it."""
    batch_dir = batch_dir.resolve()
    report = ValidationReport(batch_id=batch_dir.name, batch_dir=str(batch_dir))
    manifest_path = batch_dir / MANIFEST_NAME
    if not batch_dir.is_dir():
        report.error(str(batch_dir), "folder", "a batch folder", "nothing")
        return report
    if not manifest_path.is_file():
        report.error(MANIFEST_NAME, "$", "a manifest at the root of the batch folder", "no manifest.json")
        return report
    manifest = _load(manifest_path, MANIFEST_NAME, report)
    if manifest is None:
        return report
    for p in schemas.problems(manifest, "manifest", MANIFEST_NAME):
        report.errors.append(p)
    if report.errors:
        return report  # the checks below rely on the manifest's shape
    report.batch_id = manifest["batch_id"]
    # Paths that collide on a case-insensitive disk (macOS), or are too long, cannot be pulled there.
    report.errors.extend(contract.path_problems([entry["path"] for entry in manifest["files"]]))
    if batch_dir.name != manifest["batch_id"]:
        report.error(MANIFEST_NAME, "$.batch_id", f"the folder name {batch_dir.name!r}", repr(manifest["batch_id"]))
    width, height = manifest["image"]["width"], manifest["image"]["height"]
    png: dict[str, Any] = {}
    documents: dict[str, bytes] = {}
    metric_folder = contract.MODALITIES["depth_metric"][0] + "/"

    def read_once(rel: str, data: bytes) -> tuple[int, str, str]:
        # One read per file: the hash for the manifest check, the PNG structure check for images, and the
        # JSON documents kept for the per-sample checks (opening files is what costs here, not hashing).
        if rel.endswith(".png"):
            png[rel] = png_problem(data, width, height, grey16=rel.startswith(metric_folder))
        elif rel.endswith(".json"):
            documents[rel] = data
        return content_digests(data)

    try:
        on_disk, _ = contract.walk_files(batch_dir)
        readable = sorted(on_disk & {e["path"] for e in manifest["files"]})
        known = contract.map_files(batch_dir, readable, read_once)
        mismatches, digests = contract.compare_files(batch_dir, manifest, known)
    except PoseFactoryError as exc:  # an unsafe path: nothing else can be trusted
        report.error(MANIFEST_NAME, "$.files[].path", "safe relative paths", exc.message)
        return report
    for m in mismatches:
        report.errors.append(m)
    report.files = len(manifest["files"])
    report.bytes = sum(e["size"] for e in manifest["files"])
    report.samples = len(manifest["samples"])
    totals = manifest["totals"]
    for key, actual in (("samples", report.samples), ("files", report.files), ("bytes", report.bytes)):
        if totals[key] != actual:
            report.error(MANIFEST_NAME, f"$.totals.{key}", f"{actual} (counted)", totals[key])
    if manifest["image"] != manifest["job"]["image"]:
        report.error(MANIFEST_NAME, "$.image", f"the job's image size {manifest['job']['image']}", manifest["image"])
    ids = Counter(e["sample_id"] for e in manifest["samples"])
    for sid, count in sorted(ids.items()):
        if count > 1:
            report.error(MANIFEST_NAME, "$.samples[].sample_id", "unique sample ids", f"{sid!r} {count} times")
    listed = {e["path"] for e in manifest["files"]}
    stats = new_coverage()
    counter = progress.task(f"validate {report.batch_id}", len(manifest["samples"]), "samples") if progress \
        else contextlib.nullcontext()
    with counter as bar:
        for index, entry in enumerate(manifest["samples"]):
            _check_sample(batch_dir, entry, index, manifest, listed, report, stats, png, documents)
            if bar:
                bar.advance()
    report.stats = coverage_stats(stats, manifest["conventions"]["keypoints"]["joints"])
    return report


# --- coverage: what the validate stage plots (dvc plots) and the review pages chart (pages.py) ------------------

def new_coverage() -> dict[str, Counter]:
    """Empty coverage counts, for count_coverage."""
    return {"azimuth": Counter(), "elevation": Counter(), "visibility": Counter(), "rig_pose": Counter()}


def count_coverage(stats: dict[str, Counter], annotation: dict[str, Any]) -> None:
    """Count one sample's camera angles, rig and pose set, and the visibility of its person's keypoints."""
    camera = annotation["camera"]
    stats["azimuth"][round(float(camera["azimuth_deg"]), 3)] += 1
    stats["elevation"][round(float(camera["elevation_deg"]), 3)] += 1
    stats["rig_pose"][(annotation["pose"]["rig"], annotation["pose"]["set"])] += 1
    if annotation["persons"]:
        for joint, point in enumerate(annotation["persons"][0]["keypoints_2d"]):
            stats["visibility"][(joint, int(point[2]))] += 1


def coverage_stats(stats: dict[str, Counter], joints: list[str]) -> dict[str, Any]:
    """The counts as the report's `stats`: one row per angle, joint and (rig, pose set)."""
    visibility = []
    for joint, name in enumerate(joints):
        counts = {v: stats["visibility"][(joint, v)] for v in (0, 1, 2)}
        visibility.append({"joint": name, "visible": counts[2], "occluded": counts[1], "unlabelled": counts[0]})
    return {
        "azimuth": [{"azimuth_deg": k, "samples": v} for k, v in sorted(stats["azimuth"].items())],
        "elevation": [{"elevation_deg": k, "samples": v} for k, v in sorted(stats["elevation"].items())],
        "visibility": visibility,
        "rig_pose": [{"rig": r, "pose_set": p, "samples": v} for (r, p), v in sorted(stats["rig_pose"].items())],
    }


PLOT_FILES = {"azimuth": "azimuth.csv", "elevation": "elevation.csv", "visibility": "visibility.csv",
              "rig_pose": "counts.csv"}


def plot_tables(stats: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{plot CSV file name: rows} of a report's stats."""
    return {name: stats.get(key) or [] for key, name in PLOT_FILES.items()}


def write_report(report: ValidationReport, out_dir: Path) -> None:
    """metrics.json (DVC metrics), report.json (every problem) and the plot CSVs, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(report.metrics(), indent=2) + "\n")
    with atomic_write_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report.as_json(), indent=2) + "\n")
    for name, rows in plot_tables(report.stats).items():
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        with atomic_write_path(out_dir / name) as tmp:
            tmp.write_text(buffer.getvalue())


def raise_if_failed(report: ValidationReport) -> None:
    """Raise ValidationFailed listing the first few errors and a count of the rest."""
    if report.ok:
        return
    raise ValidationFailed(f"{len(report.errors)} problem(s) in the batch:\n" + schemas.summarise(report.errors),
                           where=report.batch_dir,
                           hint="fix the batch on the pod side and publish it again, or archive it "
                                "(`pose-sync archive`) to take it out of the pipeline")
