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
import os
import struct
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any

from pose_factory.core import contract, schemas
from pose_factory.core.errors import PoseFactoryError, SchemaError, ValidationFailed
from pose_factory.core.forked import ForkedHelper, can_fork
from pose_factory.core.fsutil import atomic_write_path, content_digests, die_with_parent
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


@dataclass
class _Batch:
    """What every sample of one batch is checked against, worked out once per batch."""

    dir: Path
    batch_id: str
    width: int
    height: int
    modalities: set[str]
    listed: dict[str, Any]  # path -> manifest entry
    openpose_keypoints: str  # the manifest's conventions.openpose.keypoints: all | detector
    documents: dict[str, bytes]  # JSON files read with the batch's files, by path
    png: dict[str, tuple[str, str, str]]  # the PNG files with a problem, by path
    extensions: dict[str, str] = field(default_factory=lambda: {m: v[1] for m, v in contract.MODALITIES.items()})


def _document(batch: _Batch, label: str, schema_name: str, report: ValidationReport) -> Any:
    """A JSON document of the batch, parsed (bounded) and schema-checked; None when it is missing or broken.

    Violations are added to the report; a document with any is returned as None too, since the checks that
    follow rely on its shape.
    """
    data = batch.documents.get(label)
    try:
        if data is None:  # not read with the batch's files (not listed): read it now
            data = (batch.dir / label).read_bytes()
        document, found = schemas.parse_and_check(data, label, schema_name)
    except FileNotFoundError:
        return None  # reported by the file comparison
    except SchemaError as exc:  # bounded: a hostile document is a problem, not a crash
        report.error(label, "$", "valid JSON", exc.message)
        return None
    report.errors.extend(found)
    return None if found else document


PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}


def png_problem(data: bytes, width: int, height: int, *, grey16: bool = False) -> tuple[str, str, str] | None:
    """(field, expected, found) if these PNG bytes are truncated, corrupt, the wrong size or not 8-bit RGB
    (16-bit greyscale with `grey16`, for depth_metric).

    Reads the chunk structure instead of decoding pixels: every chunk's CRC is checked (which catches
    damage anywhere in the file), IHDR gives size, bit depth and colour type, IEND must close the file.
    """
    if data[:8] != PNG_START:
        return "format", "a PNG file", "another format"
    size = len(data)
    if size < 8 + 25 + len(PNG_END) or not data.endswith(PNG_END):
        return "bytes", "a complete PNG ending in IEND", "a truncated file"
    length, kind = _CHUNK_HEAD.unpack_from(data, 8)
    if kind != b"IHDR" or length != 13:
        return "format", "a PNG image that decodes", "no IHDR chunk first"
    found_width, found_height, bit_depth, colour_type = _IHDR.unpack_from(data, 16)
    view = memoryview(data)  # CRCs over slices of it copy nothing
    head, crc32, stored_crc = _CHUNK_HEAD.unpack_from, zlib.crc32, _CRC.unpack_from
    position = 8
    while position < size:
        if position + 12 > size:
            return "bytes", "a complete PNG ending in IEND", "a truncated file"
        length, kind = head(data, position)
        end = position + 12 + length
        if end > size:
            return "bytes", "a complete PNG ending in IEND", "a truncated file"
        if crc32(view[position + 4:end - 4]) != stored_crc(data, end - 4)[0]:
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


_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBB")
_CRC = struct.Struct(">I")


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


def _check_sample(batch: _Batch, entry: dict[str, Any], index: int, report: ValidationReport,
                  stats: dict[str, Any]) -> None:
    sid = entry["sample_id"]
    width, height, listed = batch.width, batch.height, batch.listed
    files = entry["files"]
    where = f"$.samples[{index}]"
    if files.keys() != batch.modalities:
        wanted, have = batch.modalities, set(files)
        if wanted - have:
            report.error(MANIFEST_NAME, f"{where}.files",
                         "every modality of the batch (" + ", ".join(sorted(wanted)) + ")",
                         "missing " + ", ".join(sorted(wanted - have)))
        if have - wanted:
            report.error(MANIFEST_NAME, f"{where}.files", "only the batch's modalities",
                         "extra " + ", ".join(sorted(have - wanted)))
    extensions = batch.extensions
    paths = files.values()  # all listed, each with its modality's extension ("" for an unknown one), tested in C
    if not (all(map(listed.__contains__, paths)) and all(map(str.endswith, paths, map(extensions.get, files, _NONE)))):
        for modality, rel in sorted(files.items()):
            if rel not in listed:
                report.error(MANIFEST_NAME, f"{where}.files.{modality}", "a path listed in files", rel)
            elif modality in extensions and not rel.endswith(extensions[modality]):
                report.error(MANIFEST_NAME, f"{where}.files.{modality}", f"a {extensions[modality]} file", rel)
    label = entry["annotation"]
    if label not in listed:
        report.error(MANIFEST_NAME, f"{where}.annotation", "a path listed in files", label)

    annotation = _document(batch, label, "sample", report)
    keypoints, points_clean = None, False
    if annotation is not None:
        if annotation["sample_id"] != sid:
            report.error(label, "$.sample_id", f"{sid!r} (manifest)", repr(annotation["sample_id"]))
        if annotation["batch_id"] != batch.batch_id:
            report.error(label, "$.batch_id", repr(batch.batch_id), repr(annotation["batch_id"]))
        camera = annotation["camera"]
        if (camera["width"], camera["height"]) != (width, height):
            report.error(label, "$.camera.width/height", f"{width}x{height}", f"{camera['width']}x{camera['height']}")
        if annotation["files"] != files:
            report.error(label, "$.files", "the same files as the manifest's sample entry", "different paths")
        persons = annotation["persons"]
        keypoints = persons[0]["keypoints_2d"] if persons else None
        points_clean = _points_clean(annotation, width, height)
        if not points_clean:
            for n, person in enumerate(persons):
                _check_keypoints(person["keypoints_2d"], width, height, label, f"$.persons[{n}].keypoints_2d",
                                 report)
            _check_framing(annotation, width, height, label, report)
            if keypoints is not None and not any(p[2] == 2 for p in keypoints):
                report.warn(label, "$.persons[0].keypoints_2d", "at least one visible keypoint", "none visible")
        count_coverage(stats, annotation)

    rel = files.get("openpose_json")
    if rel and rel in listed:
        openpose = _document(batch, rel, "openpose", report)
        if openpose is not None and not _openpose_clean(openpose, keypoints, batch, points_clean=points_clean):
            _check_openpose(openpose, keypoints, rel, batch, report)

    if batch.png:
        for _modality, rel in sorted(files.items()):
            problem = batch.png.get(rel)
            if problem:
                report.error(rel, problem[0], problem[1], problem[2])


_NONE = repeat("")  # the default of extensions.get, for every modality


def _points_clean(annotation: dict[str, Any], width: int, height: int) -> bool:
    """True when the keypoint and framing checks of the annotation (_check_keypoints, _check_framing, at
    least one visible keypoint) would report nothing.

    The same tests as those checks, in one pass and without building messages: at 10,000 samples a batch,
    the checks themselves run only for the samples that have something to report.
    """
    clean = True
    persons = annotation["persons"]
    for n, person in enumerate(persons):
        points = person["keypoints_2d"]
        if len(points) != BODY_KEYPOINTS:
            clean = False
        seen = False
        for x, y, v in points:
            if v == 2 and n == 0:
                seen = True
            if v:
                if not (0 <= x < width and 0 <= y < height):
                    clean = False
            elif x != 0 or y != 0:
                clean = False
        if n == 0 and not seen:
            clean = False
    if not clean:
        return False
    k = annotation["camera"]["K"]
    fx, cx, fy, cy = k[0][0], k[0][2], k[1][1], k[1][2]
    right, bottom = width - BORDER_PX, height - BORDER_PX
    for person in persons:
        x, y, w, h = person["bbox"]
        if w > 0 and (x <= 0 or y <= 0 or x + w >= width or y + h >= height):
            return False
        for px, py, pz in person.get("keypoints_3d_cam") or ():
            if pz <= 0:
                return False
            u, v = fx * px / pz + cx, fy * py / pz + cy
            if not (BORDER_PX <= u <= right and BORDER_PX <= v <= bottom):
                return False
    return True


def _openpose_clean(openpose: Any, keypoints: list[list[float]] | None, batch: _Batch, *,
                    points_clean: bool = False) -> bool:
    """True when _check_openpose would report nothing: the same tests in one pass, without messages.

    `points_clean`: the annotation's points passed _points_clean (18 of them, each inside the canvas or 0, 0 when
    unlabelled). Then one OpenPose person that is exactly what those points give under the batch's keypoints mode
    passes every test below, and one list comparison says so.
    """
    width, height = batch.width, batch.height
    frame = openpose[0] if isinstance(openpose, list) else openpose
    if (frame["canvas_width"], frame["canvas_height"]) != (width, height):
        return False
    people = frame["people"]
    if points_clean and keypoints is not None and len(people) == 1:
        every = batch.openpose_keypoints != "detector"
        expected: list[float] = []
        for x, y, v in keypoints:
            expected += (x, y, 1.0) if v == 2 or (every and v) else _UNLABELLED
        if people[0]["pose_keypoints_2d"] == expected:
            return True
    for person in people:
        flat = person["pose_keypoints_2d"]
        if len(flat) != BODY_KEYPOINTS * 3:
            return False
        values = iter(flat)
        for x, y, c in zip(values, values, values, strict=True):
            if c not in (0, 1):
                return False
            if c:
                if not (0 <= x < width and 0 <= y < height):
                    return False
            elif x != 0 or y != 0:
                return False
    if keypoints is not None and people:
        detector = batch.openpose_keypoints == "detector"
        values = iter(people[0]["pose_keypoints_2d"])
        for (x, y, v), (ox, oy, oc) in zip(keypoints, zip(values, values, values, strict=True), strict=False):
            allowed = (v == 2) if detector else bool(v)
            missing_ok = detector or not v
            if (oc and not allowed) or (not oc and not missing_ok) or (oc and (
                    abs(ox - x) > KEYPOINT_TOLERANCE_PX or abs(oy - y) > KEYPOINT_TOLERANCE_PX)):
                return False
    return True


_UNLABELLED = (0, 0, 0)


def _check_openpose(openpose: Any, keypoints: list[list[float]] | None, rel: str, batch: _Batch,
                    report: ValidationReport) -> None:
    """The OpenPose file of a sample: its canvas, its confidences and its points, against the annotation's."""
    width, height = batch.width, batch.height
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
        _check_keypoints(triples, width, height, rel, f"{where}.people[{n}].pose_keypoints_2d", report)
    if keypoints is not None and openpose["people"]:
        # "detector" batches leave out occluded joints and face points turned away; "all" (and
        # 1.0 batches) show every labelled joint.
        mode = batch.openpose_keypoints
        detector = mode == "detector"
        flat = openpose["people"][0]["pose_keypoints_2d"]
        for joint, (x, y, v) in enumerate(keypoints):
            ox, oy, oc = flat[joint * 3:joint * 3 + 3]
            allowed = (v == 2) if detector else bool(v)
            missing_ok = detector or not v
            if (oc and not allowed) or (not oc and not missing_ok) or (oc and (
                    abs(ox - x) > KEYPOINT_TOLERANCE_PX or abs(oy - y) > KEYPOINT_TOLERANCE_PX)):
                report.warn(rel, f"{where}.people[0].pose_keypoints_2d[{joint * 3}]",
                            f"the annotation's point ({x}, {y}, v={v}) under keypoints: {mode}",
                            f"({ox}, {oy}, c={oc})")
                break


def validate_batch(batch_dir: Path, progress=None, workers: int | None = None) -> ValidationReport:
    """Check one batch folder completely; never raises for a problem in the batch, only reports it.

    A batch of PARALLEL_MIN_FILES files or more is checked in several processes (`workers`, by default one
    per core up to MAX_WORKERS), each taking a run of samples and their files; the report is the same.
    """
    with contract.gc_paused():
        return _validate_batch(batch_dir, progress, workers)


# From this many files on, a batch is checked in several processes: below it, starting them costs more
# than it saves. Each process takes at least FILES_PER_WORKER files.
PARALLEL_MIN_FILES = 10_000
FILES_PER_WORKER = 5_000
MAX_WORKERS = 4


def _validate_batch(batch_dir: Path, progress, workers: int | None) -> ValidationReport:
    batch_dir = batch_dir.resolve()
    report = ValidationReport(batch_id=batch_dir.name, batch_dir=str(batch_dir))
    manifest_path = batch_dir / MANIFEST_NAME
    if not batch_dir.is_dir():
        report.error(str(batch_dir), "folder", "a batch folder", "nothing")
        return report
    if not manifest_path.is_file():
        report.error(MANIFEST_NAME, "$", "a manifest at the root of the batch folder", "no manifest.json")
        return report
    manifest_bytes = manifest_path.read_bytes()
    # A big batch's folder is listed by a forked helper while this process parses the manifest (Linux).
    lister = ForkedHelper(lambda: _walk_for_json(batch_dir), "validate") \
        if len(manifest_bytes) >= LISTER_MIN_MANIFEST_BYTES and can_fork() else None
    try:
        try:
            manifest, found = schemas.parse_and_check(manifest_bytes, MANIFEST_NAME, "manifest")
            del manifest_bytes  # 13 MB at 70,000 files, not needed past this
        except SchemaError as exc:
            report.error(MANIFEST_NAME, "$", "valid JSON", exc.message)
            return report
        if found:
            report.errors.extend(found)
            return report  # the checks below rely on the manifest's shape
        if lister is not None:
            files, symlinks = lister.result()
            walked: tuple[set[str], list[str]] | None = (set(files), symlinks)
        else:
            walked = None
    finally:
        if lister is not None:
            lister.close()
    report.batch_id = manifest["batch_id"]
    try:
        listing, listed, present = contract.check_listing(batch_dir, manifest, walked)
        walked = None  # 70,000 paths no longer needed, in this process or the checking ones it forks
    except PoseFactoryError as exc:  # an unsafe path: nothing else can be trusted
        report.errors.extend(contract.path_problems([entry["path"] for entry in manifest["files"]]))
        if batch_dir.name != manifest["batch_id"]:
            report.error(MANIFEST_NAME, "$.batch_id", f"the folder name {batch_dir.name!r}",
                         repr(manifest["batch_id"]))
        report.error(MANIFEST_NAME, "$.files[].path", "safe relative paths", exc.message)
        return report
    count = _worker_count(len(present), workers)
    fork = count > 1 and _can_fork()  # (multiprocessing is imported only for a batch checked in several)
    shards = _shards(batch_dir, manifest, listed, present, count, whole_listing=fork or count == 1)
    samples = manifest["samples"]
    counter = progress.task(f"validate {report.batch_id}", len(samples), "samples") if progress \
        else contextlib.nullcontext()
    # The other processes start before the progress bar (and its thread): a process is forked with one thread.
    with _in_other_processes(shards[1:], fork) as pending, counter as bar:
        results = [_check_shard(shards[0], bar.advance if bar else None)]
        # Paths that collide on a case-insensitive disk (macOS), or are too long, cannot be pulled there.
        # (Found while the other processes finish their part.)
        report.errors.extend(contract.path_problems([entry["path"] for entry in manifest["files"]]))
        for result in pending():
            results.append(result)
            if bar:
                bar.advance(result.samples)

    if batch_dir.name != manifest["batch_id"]:
        report.error(MANIFEST_NAME, "$.batch_id", f"the folder name {batch_dir.name!r}", repr(manifest["batch_id"]))
    mismatches = listing + [problem for result in results for problem in result.mismatches]
    mismatches.sort(key=lambda p: p.file)
    report.errors.extend(mismatches)
    report.files = len(manifest["files"])
    report.bytes = sum(e["size"] for e in manifest["files"])
    report.samples = len(samples)
    totals = manifest["totals"]
    for key, actual in (("samples", report.samples), ("files", report.files), ("bytes", report.bytes)):
        if totals[key] != actual:
            report.error(MANIFEST_NAME, f"$.totals.{key}", f"{actual} (counted)", totals[key])
    if manifest["image"] != manifest["job"]["image"]:
        report.error(MANIFEST_NAME, "$.image", f"the job's image size {manifest['job']['image']}", manifest["image"])
    ids = Counter(e["sample_id"] for e in samples)
    if len(ids) != len(samples):
        for sid, count in sorted(ids.items()):
            if count > 1:
                report.error(MANIFEST_NAME, "$.samples[].sample_id", "unique sample ids", f"{sid!r} {count} times")
    stats = new_coverage()
    for result in results:
        report.errors.extend(result.errors)
        report.warnings.extend(result.warnings)
        for key, counts in result.stats.items():
            stats[key].update(counts)
    report.stats = coverage_stats(stats, manifest["conventions"]["keypoints"]["joints"])
    return report


# From this size of manifest (about 10,000 files), the folder is listed by a forked helper (see _validate_batch).
LISTER_MIN_MANIFEST_BYTES = 2_000_000


def _walk_for_json(batch_dir: Path) -> list[list[str]]:
    """(In the lister.) contract.walk_files's answer as JSON can carry it: [files, symlinks]."""
    files, symlinks = contract.walk_files(batch_dir)
    return [list(files), symlinks]


def _worker_count(files: int, requested: int | None) -> int:
    if requested:
        return max(1, requested)
    if files < PARALLEL_MIN_FILES:
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS, files // FILES_PER_WORKER))


@dataclass
class _Shard:
    """A run of consecutive samples and the files to read for them, checked in one process."""

    batch_dir: Path
    batch_id: str
    width: int
    height: int
    modalities: list[str]
    openpose_keypoints: str
    first_index: int
    samples: list[dict[str, Any]]
    listed: dict[str, Any]  # manifest entries of the files the samples name (and of `owned`)
    owned: list[str]  # files this shard compares with the manifest (each file belongs to one shard)
    also_read: list[str]  # files its samples name that another shard compares


@dataclass
class _ShardResult:
    samples: int
    mismatches: list[Problem]  # size and sha256 of the owned files
    errors: list[Problem]  # the samples' problems, in sample order
    warnings: list[Problem]
    stats: dict[str, Any]


# The share of a run of samples that checking every path of the batch takes (measured at 70,000 files: 0.06 s
# against 0.6 s for half of the samples).
FIRST_SHARD_CUT = 0.1


def _shards(batch_dir: Path, manifest: dict[str, Any], listed: dict[str, Any], present: list[str],
            count: int, *, whole_listing: bool) -> list[_Shard]:
    """Split the samples into `count` runs; each file goes with the first run whose samples name it, and
    files no sample names go with the first run. With `whole_listing`, every shard shares the manifest's
    whole file index (forked processes share memory); otherwise each gets the part it needs (it is pickled)."""
    samples = manifest["samples"]
    count = max(1, min(count, len(samples)))
    width, height = manifest["image"]["width"], manifest["image"]["height"]
    keypoints = manifest["conventions"].get("openpose", {}).get("keypoints", "all")
    on_disk = listed.keys() if len(present) == len(listed) else set(present)  # (present: listed files on disk)
    # The first run is this process's, which also checks the paths (contract.path_problems) while the others
    # work: it takes that much less, so that all finish together.
    weights = [1.0 - (FIRST_SHARD_CUT if count > 1 else 0.0)] + [1.0] * (count - 1)
    cuts = [0] + [round(len(samples) * sum(weights[:n + 1]) / sum(weights)) for n in range(count)]
    runs = list(zip(cuts, cuts[1:], strict=False))
    named = [[rel for entry in samples[first:last] for rel in (entry["annotation"], *entry["files"].values())]
             for first, last in runs]
    every_name = {rel for names in named for rel in names}
    if len(every_name) == sum(len(names) for names in named):  # no file named twice: the usual batch
        owned = [[rel for rel in names if rel in on_disk] for names in named]
        others: list[list[str]] = [[] for _ in runs]
    else:
        owner: dict[str, int] = {}
        for number, names in enumerate(named):
            for rel in names:
                owner.setdefault(rel, number)
        owned = [list(dict.fromkeys(rel for rel in names if rel in on_disk and owner[rel] == number))
                 for number, names in enumerate(named)]
        others = [list(dict.fromkeys(rel for rel in names if rel in on_disk and owner[rel] != number))
                  for number, names in enumerate(named)]
    owned[0] += [rel for rel in present if rel not in every_name]
    shards = []
    for number, (first, last) in enumerate(runs):
        part = listed if whole_listing else {rel: listed[rel] for rel in (*named[number], *owned[number])
                                             if rel in listed}
        shards.append(_Shard(batch_dir, manifest["batch_id"], width, height, manifest["modalities"], keypoints, first,
                             samples[first:last], part, owned[number], others[number]))
    return shards


def _can_fork() -> bool:
    """Whether checking processes are forked (Linux: they share this one's memory, nothing is pickled) or
    started afresh (macOS and elsewhere, where forking a process is not safe)."""
    import multiprocessing

    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


# The shards a forked process finds in its copy of this process's memory, by number (see _in_other_processes).
_FORKED_SHARDS: list[_Shard] = []


@contextlib.contextmanager
def _in_other_processes(shards: list[_Shard], fork: bool):
    """Start checking `shards` in one process each; yield a function that returns their results in order.

    However the caller leaves (its result, an error, Ctrl-C), every process is ended and reaped before this
    returns: one still working is terminated. They ignore Ctrl-C themselves (the terminal sends it to all of
    them: this process decides) and, on Linux, are killed by the kernel if this process dies first.
    """
    if not shards:
        yield lambda: iter(())
        return
    import multiprocessing

    context = multiprocessing.get_context("fork") if fork else multiprocessing.get_context("spawn")
    _FORKED_SHARDS[:] = shards
    started: list[tuple[Any, Any]] = []  # (process, the read end of its result pipe)
    try:
        for number, shard in enumerate(shards):
            receive, send = context.Pipe(duplex=False)
            process = context.Process(target=_check_shard_in_worker, args=(number if fork else shard, send,
                                                                          os.getpid()), daemon=True)
            started.append((process, receive))
            process.start()
            send.close()  # the child's end: the read below ends in EOFError if the child dies without a result
        _FORKED_SHARDS.clear()

        def results():
            for process, receive in started:
                try:
                    outcome = receive.recv()
                except EOFError:
                    process.join()
                    raise PoseFactoryError(
                        f"a checking process ended without its result (exit code {process.exitcode})",
                        where=str(shards[0].batch_dir),
                        hint="run it again; if the machine is short of memory, with --workers 1") from None
                if isinstance(outcome, BaseException):
                    raise outcome
                yield outcome

        yield results
    finally:
        _FORKED_SHARDS.clear()
        for process, receive in started:
            if process.is_alive():
                process.terminate()
            process.join()
            receive.close()


def _check_shard_in_worker(shard: _Shard | int, send, parent: int) -> None:
    """(In a checking process.) Check one shard and send back its result, or the exception it raised."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    try:
        outcome: Any = _check_shard(_FORKED_SHARDS[shard] if isinstance(shard, int) else shard)
    except Exception as exc:  # re-raised in the parent, which reports it
        outcome = exc
    try:
        send.send(outcome)
    except BrokenPipeError:
        pass  # the parent is gone: nobody wants the result
    except Exception:  # an exception that cannot be pickled: its text still can
        send.send(RuntimeError(f"{type(outcome).__name__}: {outcome}"))
    finally:
        send.close()


def _check_shard(shard: _Shard, advance=None) -> _ShardResult:
    """Read the shard's files once each (hash, PNG structure, JSON kept) and check its samples."""
    with contract.gc_paused():
        width, height = shard.width, shard.height
        png: dict[str, tuple[str, str, str]] = {}
        documents: dict[str, bytes] = {}
        metric_folder = contract.MODALITIES["depth_metric"][0] + "/"

        def read_once(rel: str, data: bytes) -> tuple[int, str, str]:
            # One read per file: the hash for the manifest check, the PNG structure check for images, and the
            # JSON documents kept for the per-sample checks (opening files is what costs here, not hashing).
            if rel.endswith(".png"):
                problem = png_problem(data, width, height, grey16=rel.startswith(metric_folder))
                if problem:
                    png[rel] = problem
            elif rel.endswith(".json"):
                documents[rel] = data
            return content_digests(data)

        sizes = {rel: entry["size"] for rel, entry in shard.listed.items()}
        digests = contract.map_files(shard.batch_dir, shard.owned, read_once, sizes=sizes)
        contract.map_files(shard.batch_dir, shard.also_read, read_once, sizes=sizes)
        report = ValidationReport(shard.batch_id, str(shard.batch_dir))
        batch = _Batch(shard.batch_dir, shard.batch_id, width, height, set(shard.modalities), shard.listed,
                       shard.openpose_keypoints, documents, png)
        stats = new_coverage()
        for number, entry in enumerate(shard.samples):
            _check_sample(batch, entry, shard.first_index + number, report, stats)
            if advance and number % PROGRESS_STEP == PROGRESS_STEP - 1:
                advance(PROGRESS_STEP)
        if advance:
            advance(len(shard.samples) % PROGRESS_STEP)
        return _ShardResult(len(shard.samples), contract.compare_digests(shard.listed, digests), report.errors,
                            report.warnings, stats)


# Samples checked between two updates of the progress bar (each update takes a lock, and redraws).
PROGRESS_STEP = 100


# --- coverage: what the validate stage plots (dvc plots) and the review pages chart (pages.py) ------------------

def new_coverage() -> dict[str, Counter]:
    """Empty coverage counts, for count_coverage."""
    return {"azimuth": Counter(), "elevation": Counter(), "visibility": Counter(), "rig_pose": Counter()}


def count_coverage(stats: dict[str, Counter], annotation: dict[str, Any]) -> None:
    """Count one sample's camera angles, rig and pose set, and the visibility of its person's keypoints.

    Counted as cheaply as can be (coverage_stats rounds the angles and spreads the visibilities over joints): each
    angle as written, and the visibility of all keypoints as one key.
    """
    camera, pose = annotation["camera"], annotation["pose"]
    stats["azimuth"][camera["azimuth_deg"]] += 1
    stats["elevation"][camera["elevation_deg"]] += 1
    stats["rig_pose"][(pose["rig"], pose["set"])] += 1
    if annotation["persons"]:
        stats["visibility"][tuple(map(_THIRD, annotation["persons"][0]["keypoints_2d"]))] += 1


_THIRD = itemgetter(2)


def coverage_stats(stats: dict[str, Counter], joints: list[str]) -> dict[str, Any]:
    """The counts as the report's `stats`: one row per angle (to 0.001 degree), joint and (rig, pose set)."""
    angles: dict[str, Counter] = {"azimuth": Counter(), "elevation": Counter()}
    for key, rounded in angles.items():
        for angle, samples in stats[key].items():
            rounded[round(float(angle), 3)] += samples
    by_joint: Counter = Counter()
    for visibilities, samples in stats["visibility"].items():
        for joint, v in enumerate(visibilities):
            by_joint[(joint, int(v))] += samples
    visibility = []
    for joint, name in enumerate(joints):
        counts = {v: by_joint[(joint, v)] for v in (0, 1, 2)}
        visibility.append({"joint": name, "visible": counts[2], "occluded": counts[1], "unlabelled": counts[0]})
    return {
        "azimuth": [{"azimuth_deg": k, "samples": v} for k, v in sorted(angles["azimuth"].items())],
        "elevation": [{"elevation_deg": k, "samples": v} for k, v in sorted(angles["elevation"].items())],
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
