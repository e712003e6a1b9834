"""`materialize` made fast stays right: index.json and index.csv byte for byte as the straightforward build
wrote them, every link mode, curation, filters, and a raw mirror found writable.

No git, no DVC: a raw mirror of two batches (copies of the session's template batch, 4 samples at 64x64) and
passing validation reports are all materialize reads.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from helpers import REPO
from pose_factory.core import contract
from pose_factory.dataset import curation
from pose_factory.dataset.materialize import INDEX_VERSION, materialize, working_settings

A, B = "2026-11-01_run-cycle", "2026-11-02_walk"


@pytest.fixture
def mirror(template_batch, tmp_path) -> Path:
    """data/ with raw/A and raw/B (read-only, as a pull leaves them), their validation reports, no curation.

    B is the newer batch; it has job tags and one annotation with a tag of its own, for the tag filter.
    """
    data = tmp_path / "data"
    for batch_id, created in ((A, "2026-11-01T08:00:00Z"), (B, "2026-11-02T08:00:00Z")):
        folder = data / "raw" / batch_id
        shutil.copytree(template_batch, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["batch_id"], manifest["created_at"] = batch_id, created
        if batch_id == B:
            manifest["job"]["tags"] = ["outdoor"]
            annotation = json.loads((folder / "annotations/000001.json").read_text())
            annotation["tags"] = ["hero"]
            (folder / "annotations/000001.json").write_bytes(contract.dumps(annotation))
        (folder / "manifest.json").write_bytes(contract.dumps(manifest))
        for path in folder.rglob("*"):
            if path.is_file():
                path.chmod(0o444)
        (data / "reports" / batch_id).mkdir(parents=True)
        (data / "reports" / batch_id / "metrics.json").write_text('{"errors": 0}\n')
    (data / "curation").mkdir()
    return data


def build(data: Path, working: dict, out: str = "current_batch"):
    params = data / "params.yaml"
    params.write_text(json.dumps({"batches": [A, B], "working": working}))  # JSON is YAML
    return materialize(params, data / "raw", data / "reports", data / "working" / out,
                       curation_dir=data / "curation")


def reference_index(data: Path, working: dict) -> tuple[bytes, str]:
    """index.json and index.csv as the first, straightforward materialize wrote them: every annotation read
    with json, each sample filtered and turned into a row on its own. Kept here as the yardstick."""
    settings = working_settings({"working": working}, "params.yaml")
    raw = data / "raw"
    batch_ids = [B] if settings["batches"] == "latest" else settings["batches"]
    rows, index, shas = [], 0, {}
    for batch_id in batch_ids:
        manifest_bytes = (raw / batch_id / "manifest.json").read_bytes()
        manifest = json.loads(manifest_bytes)
        shas[batch_id] = contract.sha256_bytes(manifest_bytes)
        rejected = set()
        if settings["curation"] == "respect":
            rejected, _ = curation.rejected_samples(data / "curation", batch_id, manifest)
        for sample in manifest["samples"]:
            annotation = json.loads((raw / batch_id / sample["annotation"]).read_text())
            if not _keep(annotation, sample, manifest, settings["filters"]) or sample["sample_id"] in rejected:
                continue
            name = f"{settings['naming']['prefix']}{index:0{settings['naming']['digits']}d}"
            camera, pose = annotation["camera"], annotation["pose"]
            person = annotation["persons"][0] if annotation["persons"] else {}
            files = {m: f"{contract.MODALITIES[m][0]}/{name}{contract.MODALITIES[m][1]}"
                     for m in settings["modalities"]}
            rows.append({
                "index": index, "name": name, "batch_id": batch_id, "sample_id": sample["sample_id"],
                "files": files, "source": {m: f"{batch_id}/{sample['files'][m]}" for m in settings["modalities"]},
                "azimuth_deg": camera["azimuth_deg"], "elevation_deg": camera["elevation_deg"],
                "distance_m": camera["distance_m"], "focal_length_mm": camera["focal_length_mm"],
                "rig": pose["rig"], "pose_set": pose["set"], "frame": pose["frame"],
                "visible_fraction": person.get("visible_fraction"), "bbox": person.get("bbox"),
            })
            index += 1
    document = {"version": INDEX_VERSION, "batches": [{"batch_id": b, "manifest_sha256": shas[b]} for b in batch_ids],
                "modalities": settings["modalities"], "link_mode": settings["link_mode"], "working": settings,
                "samples": rows}
    buffer = io.StringIO()
    columns = ["index", "name", "batch_id", "sample_id", *settings["modalities"], "azimuth_deg", "elevation_deg",
               "distance_m", "rig", "pose_set", "frame", "visible_fraction"]
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**{k: row[k] for k in columns if k in row}, **row["files"]})
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n", buffer.getvalue()


def _keep(annotation: dict, sample: dict, manifest: dict, filters: dict) -> bool:
    camera, pose = annotation["camera"], annotation["pose"]
    if filters["project"] and manifest["project"] != filters["project"]:
        return False
    for key, value in (("azimuth_deg", camera["azimuth_deg"] % 360), ("elevation_deg", camera["elevation_deg"])):
        if filters[key] is not None and not (filters[key][0] <= value <= filters[key][1]):
            return False
    if filters["rig"] and pose["rig"] != filters["rig"]:
        return False
    if filters["pose_set"] and pose["set"] != filters["pose_set"]:
        return False
    tags = set(annotation.get("tags") or []) | set(manifest["job"].get("tags") or [])
    if filters["tags"] and not set(filters["tags"]) <= tags:
        return False
    return not filters["sample_ids"] or sample["sample_id"] in filters["sample_ids"]


def reject(data: Path, batch_id: str, sample_id: str) -> None:
    manifest = json.loads((data / "raw" / batch_id / "manifest.json").read_text())
    fingerprint = curation.sample_fingerprints(manifest)[sample_id]
    curation.record_decision(data / "curation", batch_id, sample_id, "reject", "ugly camera angle", fingerprint)


WORKINGS = {
    "defaults": {"batches": "latest"},
    "two batches, two modalities, named, by azimuth": {
        "batches": [A, B], "modalities": ["pose", "depth"], "naming": {"prefix": "pose_", "digits": 5},
        "filters": {"azimuth_deg": [0, 100]}, "link_mode": "symlink"},
    "by sample id, rig and elevation": {
        "batches": [B, A], "filters": {"sample_ids": ["000001", "000003"], "rig": "mannequin-a",
                                       "elevation_deg": [0, 45]}},
    "by tags (the job's and the sample's)": {"batches": [A, B], "filters": {"tags": ["outdoor", "hero"]}},
    "curation ignored": {"batches": [A, B], "curation": "ignore", "link_mode": "copy"},
    "curation respected": {"batches": [A, B]},
    "one modality": {"batches": [A], "modalities": ["openpose_json"]},
}


@pytest.mark.parametrize("name", WORKINGS)
def test_index_is_byte_for_byte_what_the_straightforward_build_wrote(mirror, name):
    reject(mirror, A, "000002")
    reject(mirror, B, "000000")
    working = WORKINGS[name]
    result = build(mirror, working)
    out = mirror / "working" / "current_batch"
    expected_json, expected_csv = reference_index(mirror, working)
    assert (out / "index.json").read_bytes() == expected_json
    assert (out / "index.csv").read_text() == expected_csv
    index = json.loads(expected_json)
    assert result.samples == len(index["samples"]) > 0
    for row in index["samples"]:
        for modality, rel in row["files"].items():
            assert (out / rel).read_bytes() == (mirror / "raw" / row["source"][modality]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [contract.MODALITIES[m][0] for m in index["modalities"]] + ["index.csv", "index.json"])
    if name == "curation respected":
        assert result.rejected == 2
        assert {(r["batch_id"], r["sample_id"]) for r in index["samples"]}.isdisjoint({(A, "000002"), (B, "000000")})
    if name == "by tags (the job's and the sample's)":
        assert [(r["batch_id"], r["sample_id"]) for r in index["samples"]] == [(B, "000001")]


@pytest.mark.parametrize("mode", ["hardlink", "symlink", "copy", "clone"])
def test_every_link_mode_puts_the_raw_bytes_in_place_and_the_mirror_stays_read_only(mirror, mode):
    result = build(mirror, {"batches": [A, B], "link_mode": mode})
    out = mirror / "working" / "current_batch"
    index = json.loads((out / "index.json").read_text())
    assert result.samples == 8 and sum(result.link_counts.values()) == 8 * 6
    for row in index["samples"]:
        for modality, rel in row["files"].items():
            linked, raw = out / rel, mirror / "raw" / row["source"][modality]
            assert linked.read_bytes() == raw.read_bytes()
            assert linked.is_symlink() == (mode == "symlink")
            if mode == "symlink":
                assert not os.readlink(linked).startswith("/") and linked.resolve() == raw.resolve()
            else:
                assert (linked.stat().st_ino == raw.stat().st_ino) == (mode == "hardlink")
            assert not raw.stat().st_mode & 0o222
    if mode == "hardlink":
        assert result.link_counts == {"hardlink": 48}


def test_a_raw_folder_found_writable_is_made_read_only_before_it_is_linked(mirror):
    folder = mirror / "raw" / B
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    build(mirror, {"batches": [B], "modalities": ["pose", "rgb"]})
    linked = sorted(p for sub in ("pose", "rgb") for p in (folder / sub).iterdir())
    assert len(linked) == 8 and all(not p.stat().st_mode & 0o222 for p in linked)
    assert (folder / "depth" / "000000.png").stat().st_mode & stat.S_IWUSR  # not linked: left alone


def test_one_writable_file_among_read_only_ones_is_made_read_only_too(mirror):
    """`dvc checkout` in copy mode rewrites the files that changed writable: one folder can hold both."""
    writable = mirror / "raw" / B / "pose" / "000002.png"
    writable.chmod(0o644)
    build(mirror, {"batches": [B], "modalities": ["pose"]})
    assert not writable.stat().st_mode & 0o222
    linked = mirror / "working" / "current_batch" / "pose" / "000002.png"
    assert linked.stat().st_ino == writable.stat().st_ino and not linked.stat().st_mode & 0o222


def test_a_batch_that_contributes_no_sample_is_still_listed_with_its_manifest(mirror):
    for sample_id in ("000000", "000001", "000002", "000003"):
        reject(mirror, A, sample_id)
    result = build(mirror, {"batches": [A, B]})
    index = json.loads((mirror / "working" / "current_batch" / "index.json").read_text())
    assert [b["batch_id"] for b in index["batches"]] == [A, B] and all(len(b["manifest_sha256"]) == 64
                                                                        for b in index["batches"])
    assert {r["batch_id"] for r in index["samples"]} == {B} and result.rejected == 4


@pytest.mark.integration
@pytest.mark.parametrize("helper", ["forked", "fresh interpreter"])
def test_a_helper_process_gives_the_same_set_and_index(mirror, monkeypatch, helper):
    """Big sets are built by two processes: on Linux a forked helper links some folders and reads the
    annotations; elsewhere a fresh interpreter reads the annotations only."""
    from pose_factory.dataset import materialize as materialize_module

    if helper == "forked":
        monkeypatch.setattr(materialize_module, "FORK_MIN_FILES", 1)
    else:
        monkeypatch.setattr(materialize_module, "can_fork", lambda: False)
        monkeypatch.setattr(materialize_module, "FIELDS_PROCESS_MIN_SAMPLES", 1)
    read_here = []  # annotations this process reads itself: only if the helper failed
    real_index_fields = materialize_module._index_fields
    monkeypatch.setattr(materialize_module, "_index_fields", lambda a: read_here.append(a) or real_index_fields(a))
    reject(mirror, B, "000003")
    working = {"batches": [B, A], "naming": {"prefix": "x", "digits": 4}}
    result = build(mirror, working)
    assert read_here == []
    assert result.link_counts == {"hardlink": 7 * 6}
    out = mirror / "working" / "current_batch"
    expected_json, expected_csv = reference_index(mirror, working)
    assert (out / "index.json").read_bytes() == expected_json and (out / "index.csv").read_text() == expected_csv
    assert sorted(p.name for p in out.iterdir()) == ["depth", "index.csv", "index.json", "normal", "openpose_json",
                                                     "pose", "rgb", "seg"]  # the helper's files are gone
    for row in json.loads(expected_json)["samples"]:
        for modality, rel in row["files"].items():
            raw = mirror / "raw" / row["source"][modality]
            assert (out / rel).stat().st_ino == raw.stat().st_ino and not raw.stat().st_mode & 0o222


@pytest.mark.integration
def test_a_previous_set_removed_by_two_processes_leaves_only_the_new_one(mirror, monkeypatch):
    from pose_factory.dataset import materialize as materialize_module

    build(mirror, {"batches": [A], "naming": {"prefix": "old_", "digits": 4}})
    monkeypatch.setattr(materialize_module, "FORK_MIN_FILES", 1)
    removed_in = []  # the folders this process removed itself: half of them
    real_remove_tree = materialize_module.remove_tree
    parent = os.getpid()
    monkeypatch.setattr(materialize_module, "remove_tree",
                        lambda path: (os.getpid() == parent and removed_in.append(path.name), real_remove_tree(path)))
    working = {"batches": [A, B]}
    build(mirror, working)
    assert sorted(p.name for p in (mirror / "working").iterdir()) == ["current_batch"]
    out = mirror / "working" / "current_batch"
    expected_json, _ = reference_index(mirror, working)
    assert (out / "index.json").read_bytes() == expected_json and not list(out.rglob("old_*"))
    assert sorted(name for name in removed_in if not name.startswith(".")) == ["depth", "openpose_json", "rgb"]
    assert len(removed_in) == 4  # and the folder that held them


@pytest.mark.integration
def test_a_forked_helper_that_fails_fails_the_build_and_keeps_the_set(mirror, monkeypatch):
    from pose_factory.dataset import materialize as materialize_module

    build(mirror, {"batches": [A]})
    before = (mirror / "working" / "current_batch" / "index.json").read_bytes()
    monkeypatch.setattr(materialize_module, "FORK_MIN_FILES", 1)
    real_link_folder = materialize_module.link_folder
    parent = os.getpid()

    def link_folder_failing_in_the_helper(mode, pairs, dest_folder, counts):
        if os.getpid() != parent:
            raise OSError(28, "No space left on device", dest_folder)
        real_link_folder(mode, pairs, dest_folder, counts)

    monkeypatch.setattr(materialize_module, "link_folder", link_folder_failing_in_the_helper)
    with pytest.raises(OSError) as raised:
        build(mirror, {"batches": [A, B]})
    assert raised.value.errno == 28 and raised.value.filename.endswith(("/seg", "/rgb"))
    assert (mirror / "working" / "current_batch" / "index.json").read_bytes() == before
    assert sorted(p.name for p in (mirror / "working").iterdir()) == ["current_batch"]


# Builds the working set of two batches in a real process, its annotations read by the helper process, and
# dies by SIGKILL at the kill point the environment names.
KILLED_BUILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pose_factory.dataset import materialize

materialize.FORK_MIN_FILES = 1  # a forked helper (Linux) ...
materialize.FIELDS_PROCESS_MIN_SAMPLES = 1  # ... or a fresh interpreter
if sys.argv[3] == "fresh interpreter":
    materialize.can_fork = lambda: False
data = Path(sys.argv[2])
materialize.materialize(data / "params.yaml", data / "raw", data / "reports", data / "working" / "current_batch",
                        curation_dir=data / "curation")
"""


@pytest.mark.integration
@pytest.mark.parametrize("helper", ["forked", "fresh interpreter"])
@pytest.mark.parametrize("point", ["materialize:linking:2", "materialize:built"])
def test_a_build_killed_while_the_helper_works_keeps_the_set_and_the_rerun_converges(mirror, point, helper):
    import psutil

    build(mirror, {"batches": [A]})
    before = (mirror / "working" / "current_batch" / "index.json").read_bytes()
    working = {"batches": [A, B]}
    (mirror / "params.yaml").write_text(json.dumps({"batches": [A, B], "working": working}))
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(REPO / "scripts"), str(mirror), helper],
                            env={**os.environ, "POSE_FACTORY_KILL_AT": point}, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert (mirror / "working" / "current_batch" / "index.json").read_bytes() == before
    [leftover] = [p for p in (mirror / "working").iterdir() if p.name != "current_batch"]
    # A forked helper is killed with its parent (its command line is the parent's, naming the mirror); a fresh
    # interpreter writes nothing and ends on its own once it has answered (to nobody; it names a file there).
    deadline = time.monotonic() + 60
    while any(str(mirror) in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])):
        assert time.monotonic() < deadline, "the helper outlived its build"
        time.sleep(0.05)
    build(mirror, working)
    expected_json, _ = reference_index(mirror, working)
    assert (mirror / "working" / "current_batch" / "index.json").read_bytes() == expected_json
    assert sorted(p.name for p in (mirror / "working").iterdir()) == ["current_batch"]


def _random_json(rng, depth: int = 0):
    """A JSON value with the awkward parts: escapes, braces and colons inside strings, nesting, numbers."""
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice(["", "created_at", '"created_at": "x"', "{[:,]}", "a\\b\"c\n\t\u00e9\u2028", "\u0000\u001f"])
    if kind == 1:
        return rng.choice([0, -1, 2.5e-3, 10**20, True, False, None])
    if kind == 2:
        return "".join(rng.choice('ab{}[]:,"\\ \n\u00e9') for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.random()
    if kind in (4, 5):
        keys = ["created_at", "files", "a", '{"created_at"', "x\"y"]
        return {rng.choice(keys) + str(rng.randrange(3) if rng.random() < 0.5 else ""): _random_json(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_a_top_level_string_read_from_the_head_is_the_parsers_or_none():
    import random

    rng = random.Random(20261201)
    answered = 0
    for _ in range(3000):
        document = _random_json(rng)
        if rng.random() < 0.6:  # a top-level created_at, with keys before and after it
            before = document if isinstance(document, dict) else {}
            document = {"zz" if rng.random() < 0.5 else "a": _random_json(rng), **before,
                        "created_at": rng.choice(["2026-12-01T00:00:00Z", "x\"}", 5, None, {"created_at": "no"}])}
        text = json.dumps(document, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]),
                          sort_keys=rng.random() < 0.5).encode()
        for cut in (len(text), rng.randrange(len(text) + 1)):  # the whole document, and a head of it
            found = contract.head_string(text[:cut], "created_at")
            parsed = json.loads(text)
            if found is not None:
                answered += 1
                assert isinstance(parsed, dict) and parsed["created_at"] == found, (text, cut)
            elif cut == len(text) and isinstance(parsed, dict) and isinstance(parsed.get("created_at"), str):
                raise AssertionError(f"the whole document holds it: {text!r}")
    assert answered > 500  # the check above ran on many answers, not only on Nones


def test_latest_compares_created_at_from_the_head_and_parses_a_manifest_whose_key_comes_later(mirror):
    # A (older by created_at) gets its created_at moved behind 100 kB of another key: read from the whole manifest.
    manifest_path = mirror / "raw" / A / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert contract.head_string(manifest_path.read_bytes(), "created_at") == manifest["created_at"]
    created = manifest.pop("created_at")
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps({**manifest, "notes": "n" * 100_000, "zz_created_at_last": 1,
                                         "created_at": "2026-12-31T00:00:00Z"}, sort_keys=False))
    assert contract.head_string(manifest_path.read_bytes()[:contract.HEAD_BYTES], "created_at") is None
    result = build(mirror, {"batches": "latest"})
    assert result.batches == [A], "A's created_at, found past the head, makes it the latest now"
    manifest_path.write_text(json.dumps({**manifest, "created_at": created}))
    assert build(mirror, {"batches": "latest"}).batches == [B]


@pytest.mark.parametrize("metrics", [b'{"errors": 0', b"[0]", b'{"errors": "0"}', b'{"errors": true}', b"{}"],
                         ids=["cut-short", "a-list", "a-string", "a-boolean", "no-count"])
def test_a_validation_report_without_a_readable_error_count_stops_the_build_and_keeps_the_set(mirror, metrics):
    from pose_factory.core.errors import RepositoryError

    build(mirror, {"batches": [A]})
    before = (mirror / "working" / "current_batch" / "index.json").read_bytes()
    (mirror / "reports" / A / "metrics.json").write_bytes(metrics)
    with pytest.raises(RepositoryError) as stopped:
        build(mirror, {"batches": [A]})
    assert "has no error count" in stopped.value.message and stopped.value.where.endswith("metrics.json")
    assert "dvc repro" in stopped.value.hint
    assert (mirror / "working" / "current_batch" / "index.json").read_bytes() == before


def test_a_damaged_working_set_index_is_named_with_its_field_and_how_to_rebuild_it(mirror):
    from pose_factory.core.errors import SchemaError
    from pose_factory.dataset.materialize import describe

    out = mirror / "working" / "current_batch"
    build(mirror, {"batches": [A]})
    assert describe(out)["batches"] == [A]
    index = json.loads((out / "index.json").read_text())
    for damaged, field in ((b'{"version": 1, "samples": [', "malformed JSON"),
                           (json.dumps({**index, "samples": "all"}).encode(), "$.samples"),
                           (json.dumps({k: v for k, v in index.items() if k != "modalities"}).encode(),
                            "$.modalities")):
        (out / "index.json").write_bytes(damaged)
        with pytest.raises(SchemaError) as stopped:
            describe(out)
        assert field in stopped.value.message and stopped.value.where == str(out / "index.json")
        assert "dvc repro" in stopped.value.hint
