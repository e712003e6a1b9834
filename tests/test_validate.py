"""`pose-sync validate`: one small damaged batch per failure class, each with the message it must give."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import REPO, ctrl_c_reaches_it, run_script
from pose_factory.core import contract

W = H = 64


def manifest_of(batch: Path) -> dict:
    return json.loads((batch / "manifest.json").read_text())


def save_manifest(batch: Path, manifest: dict) -> None:
    (batch / "manifest.json").write_bytes(contract.dumps(manifest))


def reseal(batch: Path) -> None:
    """Re-hash every file into the manifest, as a buggy pod would, so only the deeper checks can object."""
    manifest = manifest_of(batch)
    paths = sorted(p.relative_to(batch).as_posix() for p in batch.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    manifest["files"] = contract.file_entries(batch, paths)
    manifest["totals"]["files"] = len(manifest["files"])
    manifest["totals"]["bytes"] = sum(f["size"] for f in manifest["files"])
    save_manifest(batch, manifest)


def edit_json(batch: Path, rel: str, change) -> None:
    document = json.loads((batch / rel).read_text())
    change(document)
    (batch / rel).write_bytes(contract.dumps(document))


def set_keypoint(document: dict, joint: int, x: float, y: float) -> None:
    document["persons"][0]["keypoints_2d"][joint] = [x, y, 2]


def shift_openpose(document: list) -> None:
    document[0]["people"][0]["pose_keypoints_2d"][0] = 10.0
    document[0]["people"][0]["pose_keypoints_2d"][2] = 1.0


def _image(batch: Path, rel: str, array: np.ndarray, mode: str | None = None) -> None:
    Image.fromarray(array, mode=mode).save(batch / rel)


CASES = {
    "malformed manifest": (lambda b: (b / "manifest.json").write_text("{oops"),
                           "manifest.json: $: expected valid JSON, found malformed JSON"),
    "manifest schema": (lambda b: save_manifest(b, {**manifest_of(b), "schema_version": "2.0"}),
                        "manifest.json: $.schema_version: expected a string matching"),
    "unknown convention": (lambda b: save_manifest(b, _with(manifest_of(b), ["conventions", "depth", "near"], "black")),
                           "manifest.json: $.conventions.depth.near: expected exactly 'white', found 'black'"),
    "missing file": (lambda b: (b / "seg/000001.png").unlink(), "seg/000001.png: missing: expected a file"),
    "size differs": (lambda b: (b / "rgb/000000.png").write_bytes((b / "rgb/000000.png").read_bytes()[:50]),
                     "rgb/000000.png: size differs"),
    "hash differs": (lambda b: _flip(b / "normal/000002.png"), "normal/000002.png: sha256 differs"),
    "undecodable image": (lambda b: (_flip(b / "normal/000002.png"), reseal(b)),
                          "normal/000002.png: format: expected a PNG image that decodes"),
    "unlisted file": (lambda b: (b / "depth/extra.png").write_bytes(b"x"), "depth/extra.png: not in the manifest"),
    "wrong image size": (lambda b: (_image(b, "depth/000001.png", np.zeros((32, 48, 3), np.uint8)), reseal(b)),
                         "depth/000001.png: size: expected 64x64 (manifest image), found 48x32"),
    "16-bit depth": (lambda b: (_image(b, "depth/000000.png", np.zeros((H, W), np.uint16)), reseal(b)),
                     "depth/000000.png: mode: expected 8-bit RGB"),
    "truncated png": (lambda b: ((b / "pose/000003.png").write_bytes((b / "pose/000003.png").read_bytes()[:-30]),
                                 reseal(b)), "pose/000003.png: bytes: expected a complete PNG ending in IEND"),
    "17 keypoints": (lambda b: (edit_json(b, "annotations/000001.json",
                                          lambda d: d["persons"][0]["keypoints_2d"].pop()), reseal(b)),
                     "annotations/000001.json: $.persons[0].keypoints_2d: expected at least 18 items, found 17 items"),
    "openpose 51 numbers": (lambda b: (edit_json(b, "openpose_json/000002.json",
                                                 lambda d: d[0]["people"][0].update(pose_keypoints_2d=[0] * 51)),
                                       reseal(b)),
                            "openpose_json/000002.json: $[0].people[0].pose_keypoints_2d: expected at least 54 items"),
    "keypoint off canvas": (lambda b: (edit_json(b, "annotations/000000.json", lambda d: set_keypoint(d, 4, 70.5, 10)),
                                       reseal(b)),
                            "annotations/000000.json: $.persons[0].keypoints_2d[4]: expected a point inside the "
                            "64x64 canvas, found (70.5, 10)"),
    "unlabelled point with coordinates": (
        lambda b: (edit_json(b, "annotations/000003.json",
                             lambda d: d["persons"][0]["keypoints_2d"].__setitem__(5, [3.0, 4.0, 0])), reseal(b)),
        "annotations/000003.json: $.persons[0].keypoints_2d[5]: expected 0, 0 for a point that is not labelled"),
    "duplicate sample id": (lambda b: save_manifest(b, _dup_id(manifest_of(b))),
                            "manifest.json: $.samples[].sample_id: expected unique sample ids, found '000000' 2 times"),
    "missing modality": (lambda b: save_manifest(b, _drop_modality(manifest_of(b))),
                         "manifest.json: $.samples[2].files: expected every modality of the batch"),
    "annotation schema": (lambda b: (edit_json(b, "annotations/000002.json", lambda d: d["camera"].pop("K")),
                                     reseal(b)),
                          "annotations/000002.json: $.camera.K: expected this key to be present"),
    "canvas size": (lambda b: (edit_json(b, "openpose_json/000001.json", lambda d: d[0].update(canvas_width=512)),
                               reseal(b)),
                    "openpose_json/000001.json: $[0].canvas_width/canvas_height: expected 64x64, found 512x64"),
    "totals": (lambda b: save_manifest(b, _with(manifest_of(b), ["totals", "samples"], 5)),
               "manifest.json: $.totals.samples: expected 4 (counted), found 5"),
    "sample id mismatch": (lambda b: (edit_json(b, "annotations/000003.json", lambda d: d.update(sample_id="000009")),
                                      reseal(b)),
                           "annotations/000003.json: $.sample_id: expected '000003' (manifest), found '000009'"),
}


def _with(document: dict, path: list[str], value) -> dict:
    node = document
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return document


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF
    path.write_bytes(bytes(data))


def _dup_id(manifest: dict) -> dict:
    manifest["samples"][1]["sample_id"] = "000000"
    return manifest


def _drop_modality(manifest: dict) -> dict:
    del manifest["samples"][2]["files"]["depth"]
    return manifest


def test_a_good_batch_is_valid_with_counts_and_stats(batch, cli, tmp_path):
    result = cli("validate", batch, "--report", tmp_path / "report")
    assert result.code == 0, result.err
    assert "valid: 4 samples, 28 files" in result.out
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics == {"samples": 4, "files": 28, "bytes": metrics["bytes"], "errors": 0, "warnings": 0}
    visibility = (tmp_path / "report" / "visibility.csv").read_text().splitlines()
    assert visibility[0] == "joint,visible,occluded,unlabelled" and len(visibility) == 19
    assert (tmp_path / "report" / "azimuth.csv").read_text().startswith("azimuth_deg,samples\n0.0,1\n")


@pytest.mark.parametrize("case", CASES)
def test_each_failure_class_names_file_field_expected_and_found(batch, cli, tmp_path, case):
    damage, message = CASES[case]
    damage(batch)
    result = cli("validate", batch, "--report", tmp_path / "report")
    assert result.code == 11, result.err
    assert message in result.err, result.err
    assert str(batch) in result.err and "hint:" in result.err and "Traceback" not in result.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["version"] == 1 and report["ok"] is False and report["errors"] >= 1
    assert any(message.split(": ", 1)[1].split(":")[0] in json.dumps(p) for p in report["problems"])
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["errors"] == report["errors"]


def test_many_problems_show_the_first_few_and_count_the_rest(batch, cli):
    for path in sorted(batch.glob("rgb/*.png")) + sorted(batch.glob("seg/*.png")):
        path.unlink()
    result = cli("validate", batch)
    assert "8 problem(s)" in result.err and "... and 3 more" in result.err


def test_annotation_and_openpose_disagreeing_is_a_warning(batch, cli):
    edit_json(batch, "openpose_json/000000.json", shift_openpose)
    reseal(batch)
    result = cli("validate", batch, "--json")
    report = json.loads(result.out)
    assert result.code == 0 and report["ok"] is True and report["warnings"] == 1
    assert report["warning_list"][0]["file"] == "openpose_json/000000.json"


@pytest.mark.integration
def test_several_processes_give_the_same_report_as_one(batch, tmp_path):
    """A big batch is checked in several processes, each taking a run of samples: the report must not change."""
    edit_json(batch, "annotations/000001.json", lambda d: d["persons"][0]["keypoints_2d"].pop())
    edit_json(batch, "annotations/000000.json", lambda d: set_keypoint(d, 4, 70.5, 10))
    edit_json(batch, "openpose_json/000002.json", shift_openpose)
    edit_json(batch, "openpose_json/000003.json", lambda d: d[0].update(canvas_width=512))
    (batch / "pose/000003.png").write_bytes((batch / "pose/000003.png").read_bytes()[:-30])
    reseal(batch)
    manifest = manifest_of(batch)
    manifest["samples"][1]["files"]["pose"] = "pose/000003.png"  # one file named by two samples (two shards)
    save_manifest(batch, manifest)
    (batch / "seg/000002.png").unlink()
    _flip(batch / "normal/000000.png")
    (batch / "depth/extra.png").write_bytes(b"x")
    (batch / "rgb/link.png").symlink_to("000000.png")

    reports = []
    for workers in ("1", "3"):
        result = run_script(["validate", str(batch), "--json", "--workers", workers], cwd=tmp_path)
        assert result.returncode == 11, result.stderr
        reports.append(json.loads(result.stdout))
    # Where processes cannot be forked (macOS), they are started afresh and given their part pickled; and a big
    # batch's folder is listed by a forked helper while the manifest is parsed.
    for setting in ("validate._can_fork = lambda: False", "validate.LISTER_MIN_MANIFEST_BYTES = 0"):
        run = subprocess.run([sys.executable, "-c", (
            "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            f"from pose_factory.dataset import validate; {setting}; "
            "print(json.dumps(validate.validate_batch(Path(sys.argv[2]), workers=3).as_json()))"),
            str(REPO / "scripts"), str(batch)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 0, (setting, run.stderr)
        reports.append(json.loads(run.stdout))
    assert reports[0] == reports[1] == reports[2] == reports[3]
    problems = {(p["file"], p["field"]) for p in reports[0]["problems"]}
    assert {("pose/000003.png", "bytes"), ("seg/000002.png", "missing"), ("normal/000000.png", "sha256 differs"),
            ("depth/extra.png", "not in the manifest"), ("annotations/000000.json", "$.persons[0].keypoints_2d[4]"),
            ("rgb/link.png", "symlink in a batch"),
            ("openpose_json/000003.json", "$[0].canvas_width/canvas_height")} <= problems
    assert sum(p["file"] == "pose/000003.png" for p in reports[0]["problems"]) == 2  # once per sample naming it
    assert reports[0]["warnings"] >= 1 and reports[0]["stats"]["visibility"]


# Runs `pose-sync validate` (cli.main) with the checking processes told what to do: each records its pid in
# PIDS_DIR; with FAIL the process of the second run of samples raises an I/O error; the others hang until
# killed. Checking processes started afresh (spawn) run this file's top level too, so they are told the same.
HARNESS = """
import os, sys, time
sys.path.insert(0, {scripts!r})
from pose_factory.dataset import validate

_check_shard = validate._check_shard


def told(shard, advance=None):
    if shard.first_index == 0:  # the run this process checks itself
        return _check_shard(shard, advance)
    pids = os.environ["PIDS_DIR"]
    open(os.path.join(pids, str(os.getpid())), "w").close()
    if os.environ.get("FAIL") and shard.first_index == 1:
        raise OSError(5, "Input/output error", str(shard.batch_dir / shard.owned[0]))
    time.sleep(600)


validate._check_shard = told
if __name__ == "__main__":
    if os.environ.get("SPAWN"):
        validate._can_fork = lambda: False
    from pose_factory import cli

    code = cli.main(sys.argv[1:])
    # Every checking process must be gone before validate returns (not left to the interpreter's exit).
    alive = [pid for pid in map(int, os.listdir(os.environ["PIDS_DIR"])) if os.path.exists(f"/proc/{{pid}}")]
    print("alive:", alive, flush=True)
    sys.exit(code)
"""


def _gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for a parent that is not ours to reap it counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def _start_harness(batch: Path, tmp_path: Path, spawn: bool, fail: bool = False) -> tuple[subprocess.Popen, Path]:
    harness, pids = tmp_path / "harness.py", tmp_path / "pids"
    harness.write_text(HARNESS.format(scripts=str(REPO / "scripts")))
    pids.mkdir()
    env = {**os.environ, "PIDS_DIR": str(pids), "SPAWN": "1" if spawn else "", "FAIL": "1" if fail else ""}
    proc = subprocess.Popen([sys.executable, str(harness), "validate", str(batch), "--workers", "3"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=ctrl_c_reaches_it)
    return proc, pids


def _wait_for(condition, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


START_METHODS = pytest.mark.parametrize("spawn", [False, True], ids=["forked", "started-afresh"])


@pytest.mark.integration
@START_METHODS
def test_a_checking_process_that_fails_ends_validate_with_its_error_and_the_others_are_ended(batch, tmp_path,
                                                                                                spawn):
    proc, pids = _start_harness(batch, tmp_path, spawn, fail=True)
    try:
        out, err = proc.communicate(timeout=120)  # the other process hangs: validate must not wait for it
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "error: file system error" in err and "annotations/000001.json" in err and "Traceback" not in err
    assert "alive: []" in out and len(list(pids.iterdir())) >= 1  # the hanging one may not have started yet


@pytest.mark.integration
@START_METHODS
def test_ctrl_c_ends_validate_and_every_checking_process(batch, tmp_path, spawn):
    proc, pids = _start_harness(batch, tmp_path, spawn)
    try:
        _wait_for(lambda: len(list(pids.iterdir())) == 2)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: to every process of the command
        out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "alive: []" in out


@pytest.mark.integration
@START_METHODS
def test_a_killed_validate_leaves_no_checking_process_running(batch, tmp_path, spawn):
    proc, pids = _start_harness(batch, tmp_path, spawn)
    try:
        _wait_for(lambda: len(list(pids.iterdir())) == 2)
        children = [int(p.name) for p in pids.iterdir()]
        proc.kill()
        proc.communicate(timeout=60)
        _wait_for(lambda: all(_gone(pid) for pid in children), timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_one_pass_keypoint_tests_agree_with_the_checks_that_report(template_batch):
    """Samples are checked in one pass first, and by the reporting checks only when that pass finds something:
    on thousands of altered keypoints, boxes and OpenPose points, the two must agree every time."""
    import random

    from pose_factory.dataset import validate

    annotation = json.loads((template_batch / "annotations/000000.json").read_text())
    openpose = json.loads((template_batch / "openpose_json/000000.json").read_text())
    rng = random.Random(13)
    edges = [-0.5, 0, 0.001, 0.99, 1.0, 1.01, 31.5, W - 1.01, W - 1.0, W - 0.001, W, W + 0.5]
    disagreements, outcomes, shortcuts = [], {True: 0, False: 0}, {True: 0, False: 0}
    for trial in range(3000):
        a, o = json.loads(json.dumps(annotation)), json.loads(json.dumps(openpose))
        person, flat = a["persons"][0], o[0]["people"][0]["pose_keypoints_2d"]
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            joint = rng.randrange(18)
            what = rng.randrange(6)
            if what == 0:
                person["keypoints_2d"][joint] = [rng.choice(edges), rng.choice(edges), rng.choice([0, 1, 2])]
            elif what == 1:
                flat[joint * 3:joint * 3 + 3] = [rng.choice(edges), rng.choice(edges), rng.choice([0, 1, 1.0, 0.5])]
            elif what == 2:
                person["bbox"] = [rng.choice(edges), rng.choice(edges), rng.choice([0, 3, W]), rng.choice([3, W])]
            elif what == 3:
                point = person["keypoints_3d_cam"][joint]
                point[rng.randrange(3)] = rng.choice([-1.0, 0.0, 0.5, 3.0, 40.0])
            elif what == 4:
                x, y, v = person["keypoints_2d"][joint]
                flat[joint * 3:joint * 3 + 3] = [x + rng.choice([0, 0.01, 0.03, -0.03]), y, 1 if v else 0]
            else:
                person["keypoints_2d"] = [[0, 0, 0]] * 18 if rng.random() < 0.3 else person["keypoints_2d"]
        for mode in ("all", "detector"):
            batch = validate._Batch(template_batch, "b", W, H, set(), {}, mode, {}, {})
            report = validate.ValidationReport("b", "b")
            clean = validate._points_clean(a, W, H)
            for n, p in enumerate(a["persons"]):
                validate._check_keypoints(p["keypoints_2d"], W, H, "a", f"$.persons[{n}]", report)
            validate._check_framing(a, W, H, "a", report)
            if not any(p[2] == 2 for p in person["keypoints_2d"]):
                report.warn("a", "$", "a visible keypoint", "none")
            if clean != (not report.errors and not report.warnings):
                disagreements.append(("annotation", trial, mode, report.errors + report.warnings))
            report = validate.ValidationReport("b", "b")
            clean = validate._openpose_clean(o, person["keypoints_2d"], batch)
            # the shortcut taken when the annotation's points are clean gives the same answers
            points_clean = validate._points_clean(a, W, H)
            shortcut = validate._openpose_clean(o, person["keypoints_2d"], batch, points_clean=points_clean)
            validate._check_openpose(o, person["keypoints_2d"], "o", batch, report)
            if clean != (not report.errors and not report.warnings) or shortcut != clean:
                disagreements.append(("openpose", trial, mode, report.errors + report.warnings))
            outcomes[clean] += 1
            shortcuts[points_clean and clean] += 1
    assert disagreements == []
    assert min(outcomes.values()) > 500, outcomes  # both outcomes tried often
    assert shortcuts[True] > 500, shortcuts


def test_documents_too_deep_or_broken_are_named_as_the_bounded_parser_names_them():
    """parse_and_check skips the depth walk where the schema bounds the depth; the answers stay parse_json's."""
    from pose_factory.core import schemas
    from pose_factory.core.errors import SchemaError

    assert schemas.depth_bound("sample") is not None and schemas.depth_bound("sample") <= schemas.MAX_JSON_DEPTH
    assert schemas.depth_bound("manifest") is not None and schemas.depth_bound("openpose") is None  # open objects
    frame = {"canvas_width": W, "canvas_height": H, "people": [{"pose_keypoints_2d": [0] * 54}]}
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    for document, schema in (([{**frame, "extra": deep}], "openpose"), ({"camera": deep}, "sample"), (deep, "sample"),
                             ("{oops", "sample"), (b"\xff", "openpose")):
        data = document if isinstance(document, (str, bytes)) else json.dumps(document)
        data = data.encode() if isinstance(data, str) else data
        with pytest.raises(SchemaError) as bounded:
            schemas.parse_json(data, "x.json")
        with pytest.raises(SchemaError) as checked:
            schemas.parse_and_check(data, "x.json", schema)
        assert checked.value.message == bounded.value.message and checked.value.where == "x.json"
    fine = json.dumps([{**frame, "extra": [[[1]]]}]).encode()
    assert schemas.parse_and_check(fine, "x.json", "openpose") == (json.loads(fine), [])
    wrong, found = schemas.parse_and_check(json.dumps([{**frame, "canvas_width": "64"}]).encode(), "x.json", "openpose")
    assert found == schemas.problems(wrong, "openpose", "x.json") and found


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 65536, 65537, 3 * 1024 * 1024 + 5])
def test_read_file_returns_every_byte_whatever_size_it_expects(tmp_path, size):
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    (tmp_path / "f").write_bytes(data)
    for hint in (0, 1, size - 1, size, size + 1, 65536, 10**12):
        assert contract.read_file(str(tmp_path / "f"), max(hint, 0)) == data


def test_paths_taken_at_a_glance_are_ones_the_full_check_accepts():
    from pose_factory.core.errors import UnsafeKeyError
    from pose_factory.core.fsutil import check_relative_path

    candidates = ["rgb/000000.png", "a", "a-b_c.d/e.f", "..", ".", "a/../b", "a/./b", "a//b", "/a", "a/", "C:x",
                  "c:/x", "a\\b", "a\x01b", ".hidden/x", "x/.y", "-a/_b", "a..b", "é/x", "a b", "a:b", "..a", "a.."]
    for path in candidates:
        try:
            check_relative_path(path, where="test")
            safe = True
        except UnsafeKeyError:
            safe = False
        assert safe or not contract._PLAIN_PATH.fullmatch(path), path


def test_paths_taken_all_at_once_are_exactly_those_taken_one_by_one():
    """contract.all_plain (a whole manifest's paths in a few passes) agrees with _PLAIN_PATH path by path."""
    import random

    rng = random.Random(5)
    alphabet = ["a", "b", "Z", "0", "-", "_", ".", "/", "\n", "é", " ", "\\"]
    for _ in range(20_000):
        paths = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6))) for _ in range(rng.randrange(0, 4))]
        if rng.random() < 0.5:  # plain ones, with a little damage now and then
            paths = [rng.choice(["rgb/000001.png", "a/b.c", "-x", "a..b", "x_y/z-w"]) for _ in paths] + paths[:1]
        assert contract.all_plain(paths) == all(contract._PLAIN_PATH.fullmatch(p) for p in paths), paths


def test_coverage_counted_cheaply_gives_what_counting_each_keypoint_gave(template_batch):
    """count_coverage keeps raw angles and one key per visibility pattern; coverage_stats must give the rows the
    straightforward count gave (angles rounded to 0.001 degree, each joint's visibility counted)."""
    from collections import Counter

    from pose_factory.dataset import validate

    base = json.loads((template_batch / "annotations/000000.json").read_text())
    angles = [0, 0.0, 359.9996, 359.9994, 12.3456, 12.3454, 0.0004, 90]
    annotations = []
    for n, azimuth in enumerate(angles):
        a = json.loads(json.dumps(base))
        a["camera"]["azimuth_deg"], a["camera"]["elevation_deg"] = azimuth, angles[-1 - n]
        a["pose"]["rig"] = "mannequin-a" if n % 3 else "mannequin-b"
        a["persons"][0]["keypoints_2d"][n % 18][2] = n % 3
        annotations.append(a)
    annotations.append({**json.loads(json.dumps(base)), "persons": []})
    expected = {"azimuth": Counter(), "elevation": Counter(), "visibility": Counter(), "rig_pose": Counter()}
    for a in annotations:  # the straightforward count
        expected["azimuth"][round(float(a["camera"]["azimuth_deg"]), 3)] += 1
        expected["elevation"][round(float(a["camera"]["elevation_deg"]), 3)] += 1
        expected["rig_pose"][(a["pose"]["rig"], a["pose"]["set"])] += 1
        for joint, point in enumerate(a["persons"][0]["keypoints_2d"] if a["persons"] else []):
            expected["visibility"][(joint, int(point[2]))] += 1
    joints = [f"j{n}" for n in range(18)]
    halves = validate.new_coverage(), validate.new_coverage()  # counted in two processes, then merged
    for n, a in enumerate(annotations):
        validate.count_coverage(halves[n % 2], a)
    merged = validate.new_coverage()
    for half in halves:
        for key, counts in half.items():
            merged[key].update(counts)
    got = validate.coverage_stats(merged, joints)
    visibility = [{"joint": name, "visible": expected["visibility"][(j, 2)], "occluded": expected["visibility"][(j, 1)],
                   "unlabelled": expected["visibility"][(j, 0)]} for j, name in enumerate(joints)]
    assert json.dumps(got) == json.dumps({  # as text: 0 is not 0.0
        "azimuth": [{"azimuth_deg": k, "samples": v} for k, v in sorted(expected["azimuth"].items())],
        "elevation": [{"elevation_deg": k, "samples": v} for k, v in sorted(expected["elevation"].items())],
        "visibility": visibility,
        "rig_pose": [{"rig": r, "pose_set": p, "samples": v} for (r, p), v in sorted(expected["rig_pose"].items())],
    })
