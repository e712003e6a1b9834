"""Generator `blender`: a real Cycles render (CPU) converted into a batch that passes the validator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from pose_factory.core.errors import ToolError
from pose_factory.core.settings import load_settings
from pose_factory.dataset.validate import validate_batch
from pose_factory.producer import blender_render, figure
from pose_factory.producer.generate import default_job, generate_batch

needs_blender = pytest.mark.skipif(
    shutil.which("blender") is None,
    reason="blender is not on PATH; install it with `apt-get install blender` (Debian/Ubuntu, 3.4+) "
           "or put a blender.org build on PATH")


def _job(samples: int = 2, size: int = 64) -> dict:
    job = default_job("blender-test", samples, (size, size), 3)
    job["generator"] = "blender"
    job["render"]["engine"] = "CYCLES"
    job["render"]["samples"] = 2
    return job


@pytest.mark.integration
@needs_blender
def test_blender_batch_is_valid_and_seg_matches_depth(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    settings = load_settings(root=tmp_path)
    batch_dir = blender_render.render_with_blender(_job(), tmp_path / "out", settings, "2026-11-29_blender-test")
    # render_job.py ends Blender with os._exit, which skips Blender's removal of its session folder.
    assert not list(system_tmp.iterdir()), "Blender left its session folder (blender_XXXXXX) in TMPDIR"
    report = validate_batch(batch_dir)
    assert report.ok, report.as_json()
    manifest = json.loads((batch_dir / "manifest.json").read_text())
    assert manifest["software"]["blender_version"] and manifest["software"]["render_engine"] == "CYCLES"
    assert len(manifest["samples"]) == 2
    for sample in manifest["samples"]:
        seg = np.asarray(Image.open(batch_dir / sample["files"]["seg"]).convert("RGB"))
        depth = np.asarray(Image.open(batch_dir / sample["files"]["depth"]).convert("RGB"))[..., 0]
        person = np.all(seg == figure.SEG_PALETTE["person"], axis=-1)
        sky = np.all(seg == figure.SEG_PALETTE["sky"], axis=-1)
        assert person.sum() > 20, "the figure is in view"
        # Every person pixel has geometry in the depth map, and the figure is nearer than the sky.
        assert np.all(depth[person] > 0)
        assert np.all(depth[sky] == 0)
        annotation = json.loads((batch_dir / sample["annotation"]).read_text())
        assert sum(v == 2 for _, _, v in annotation["persons"][0]["keypoints_2d"]) >= 9


def test_missing_blender_is_a_tool_error_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("POSE_FACTORY_BLENDER", raising=False)
    with pytest.raises(ToolError) as caught:
        blender_render.render_with_blender(_job(), tmp_path / "out", load_settings(root=tmp_path),
                                           "2026-11-29_blender-test")
    assert "blender" in caught.value.message and "apt-get install blender" in caught.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
@needs_blender
def test_both_renderers_give_the_same_annotation_for_the_same_scene(tmp_path):
    settings = load_settings(root=tmp_path)
    job = _job(samples=2, size=64)
    job["cameras"]["azimuths_deg"] = [30, 200]
    blender_dir = blender_render.render_with_blender(job, tmp_path / "b", settings, "2026-11-29_blender-test")
    synthetic = dict(job, generator="synthetic", render=dict(job["render"], engine="synthetic"))
    synthetic_dir = generate_batch(synthetic, tmp_path / "s", settings, batch_id="2026-11-29_blender-test",
                                   workers=1).batch_dir
    for sid in ("000000", "000001"):
        a = json.loads((blender_dir / f"annotations/{sid}.json").read_text())
        b = json.loads((synthetic_dir / f"annotations/{sid}.json").read_text())
        assert a["camera"] == b["camera"] and a["pose"] == b["pose"] and a["files"] == b["files"]
        pa, pb = a["persons"][0], b["persons"][0]
        assert pa["keypoints_3d_cam"] == pb["keypoints_3d_cam"]
        ka, kb = np.array(pa["keypoints_2d"]), np.array(pb["keypoints_2d"])
        assert np.abs(ka[:, :2] - kb[:, :2]).max() <= 1.0
        assert np.sum(ka[:, 2] != kb[:, 2]) <= 1, "visibility may differ at most at one silhouette edge"
        assert np.abs(np.array(pa["bbox"]) - np.array(pb["bbox"])).max() <= 1.0
        # The pose maps come from the same encoder: identical wherever the reported joints agree.
        fa = json.loads((blender_dir / f"openpose_json/{sid}.json").read_text())[0]["people"][0]["pose_keypoints_2d"]
        fb = json.loads((synthetic_dir / f"openpose_json/{sid}.json").read_text())[0]["people"][0]["pose_keypoints_2d"]
        assert sum(x != y for x, y in zip(fa[2::3], fb[2::3])) <= 1
