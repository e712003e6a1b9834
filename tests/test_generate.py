"""`pose-sync generate`: output honours the contract, is deterministic, and never half-exists."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from helpers import run_script
from pose_factory.core import contract, schemas
from pose_factory.core.settings import load_settings
from pose_factory.producer.generate import default_job, generate_batch


def test_generated_batch_passes_every_schema_and_its_manifest(template_batch):
    manifest = contract.load_manifest(template_batch)
    contract.verify_batch(template_batch, manifest)
    assert manifest["totals"]["samples"] == 4
    assert manifest["totals"]["files"] == 4 * 7
    assert set(manifest["modalities"]) == set(contract.DEFAULT_MODALITIES)
    for sample in manifest["samples"]:
        annotation = json.loads((template_batch / sample["annotation"]).read_text())
        assert schemas.problems(annotation, "sample", sample["annotation"]) == []
        frames = json.loads((template_batch / sample["files"]["openpose_json"]).read_text())
        assert schemas.problems(frames, "openpose", sample["files"]["openpose_json"]) == []
        assert isinstance(frames, list) and len(frames) == 1  # ComfyUI's POSE_KEYPOINT: a list of frames
        openpose = frames[0]
        assert (openpose["canvas_width"], openpose["canvas_height"]) == (64, 64)
        # Keypoints are pixels inside the canvas, never normalised; c is 1 or the point is 0,0,0.
        triples = [openpose["people"][0]["pose_keypoints_2d"][i:i + 3] for i in range(0, 54, 3)]
        assert any(x > 1 or y > 1 for x, y, c in triples)
        for x, y, c in triples:
            assert c in (0, 1.0) and (c == 1.0 or (x, y) == (0, 0)) and 0 <= x < 64 and 0 <= y < 64
        for _modality, rel in sample["files"].items():
            if rel.endswith(".png"):
                with Image.open(template_batch / rel) as image:
                    assert image.size == (64, 64) and image.mode == "RGB", rel


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    settings = load_settings(root=tmp_path)

    def digests(seed: int, name: str) -> dict[str, str]:
        job = default_job("walk", 3, (48, 48), seed=seed, pose_set="random-pose")
        result = generate_batch(job, tmp_path / name, settings, batch_id="2026-01-01_walk", workers=1)
        return {f["path"]: f["sha256"] for f in contract.load_manifest(result.batch_dir)["files"]}

    first, again, other = digests(5, "a"), digests(5, "b"), digests(6, "c")
    assert first == again
    changed = [p for p in first if p.startswith("rgb/") and first[p] != other[p]]
    assert changed, "a different seed must render different poses"


@pytest.mark.integration
def test_generate_cli_prints_the_batch_id_and_honours_options(tmp_path, project):
    result = run_script(["generate", "--out", str(tmp_path / "out"), "--project", "jump", "--samples", "2",
                         "--size", "80x48", "--seed", "3", "--keypoints", "all", "-q"], cwd=project.root)
    assert result.returncode == 0, result.stderr
    batch_id = result.stdout.strip()
    assert batch_id.endswith("_jump") and len(batch_id) == len("2026-11-28_jump")
    manifest = contract.load_manifest(tmp_path / "out" / batch_id)
    assert manifest["image"] == {"width": 80, "height": 48}
    assert manifest["totals"]["samples"] == 2 and manifest["job"]["seed"] == 3
    assert manifest["job"]["render"]["keypoints"] == "all" and manifest["conventions"]["openpose"]["keypoints"] == "all"


def test_existing_batch_is_not_overwritten_without_force(tmp_path, project, cli):
    args = ["generate", "--out", tmp_path, "--samples", "1", "--size", "32x32", "--batch-id", "2026-11-01_x", "-q"]
    assert cli(*args).code == 0
    before = (tmp_path / "2026-11-01_x" / "manifest.json").read_bytes()
    again = cli(*args)
    assert again.code == 1 and str(tmp_path / "2026-11-01_x") in again.err and "--force" in again.err
    assert (tmp_path / "2026-11-01_x" / "manifest.json").read_bytes() == before
    assert cli(*args, "--force", "--seed", "9").code == 0
    assert (tmp_path / "2026-11-01_x" / "manifest.json").read_bytes() != before


def test_interrupted_generate_leaves_nothing_that_looks_like_a_batch(tmp_path, monkeypatch):
    from pose_factory.producer import figure

    real_render = figure.render_view
    calls = {"n": 0}

    def render_then_die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_render(*args, **kwargs)

    monkeypatch.setattr(figure, "render_view", render_then_die)
    job = default_job("run-cycle", 5, (32, 32), seed=1)
    with pytest.raises(KeyboardInterrupt):
        generate_batch(job, tmp_path, load_settings(root=tmp_path), batch_id="2026-11-02_run-cycle", workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--size", "big"], "is not WIDTHxHEIGHT"),
    (["--project", "Bad Name"], "is not a slug"),
    (["--samples", "0"], "$.samples: expected a number >= 1, found 0"),
    (["--pose-set", "moonwalk"], "unknown pose set 'moonwalk'"),
])
def test_bad_generate_options_get_clear_errors(tmp_path, project, cli, args, message):
    result = cli("generate", "--out", tmp_path / "out", *args)
    assert result.code != 0 and message in result.err, result.err
    assert "Traceback" not in result.err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_job_file_is_validated_with_file_and_path(tmp_path, project, cli):
    job = default_job("run-cycle", 2, (32, 32), seed=1)
    job["cameras"]["elevations_deg"] = [120]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    result = cli("generate", "--out", tmp_path / "out", "--job", job_file)
    assert result.code == 6
    assert str(job_file) in result.err and "$.cameras.elevations_deg[0]" in result.err and "<= 89" in result.err
    job_file.write_text("{not json")
    result = cli("generate", "--out", tmp_path / "out", "--job", job_file)
    assert result.code == 6 and str(job_file) in result.err and "line 1" in result.err


def test_every_schema_is_a_valid_draft_2020_12_schema():
    from jsonschema import Draft202012Validator

    for _name, file_name in schemas.SCHEMA_FILES.items():
        document = json.loads((schemas.SCHEMA_DIR / file_name).read_text())
        Draft202012Validator.check_schema(document)
        assert document["$schema"].endswith("2020-12/schema"), file_name


@pytest.mark.integration
def test_a_generate_killed_at_any_sample_is_cleaned_up_by_the_next(tmp_path, project):
    args = ["generate", "--out", str(tmp_path / "out"), "--project", "jump", "--samples", "3", "--size", "32x32",
            "--batch-id", "2026-11-02_jump", "-q"]
    for nth in (1, 3):  # after the first sample, after the last (before the manifest is sealed)
        killed = run_script(args, cwd=project.root, env={"POSE_FACTORY_KILL_AT": f"generate:sample:{nth}"})
        assert killed.returncode == -9, killed.stderr
        left = [p.name for p in (tmp_path / "out").iterdir()]
        assert len(left) == 1 and left[0].startswith(".2026-11-02_jump.") and left[0].endswith(".partial")
    done = run_script(args, cwd=project.root)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["2026-11-02_jump"]  # the killed runs' folders: gone
    batch = tmp_path / "out" / "2026-11-02_jump"
    contract.verify_batch(batch, contract.load_manifest(batch))
