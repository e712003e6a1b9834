"""Generator `blender` on the user's own scene (#17): a Rigify character built in Blender, a BVH clip, the pose
read from the rig, and every failure caught before rendering. Small on purpose: 64x64, 2 Cycles samples."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pose_factory.bucket.backends import LocalFolderStorage
from pose_factory.core.errors import SceneError, UsageError
from pose_factory.core.settings import load_settings
from pose_factory.dataset.validate import validate_batch
from pose_factory.producer import blender_render, encode
from pose_factory.producer.generate import default_job

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("blender") is None,
                       reason="blender is not on PATH (Debian: apt-get install blender); the scene tests need it"),
]
MAKE_CHARACTER = Path(__file__).parent / "blender" / "make_character.py"
IDX = {name: i for i, name in enumerate(encode.COCO18_JOINTS)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """character.blend, motion.bvh and rest.json, built once by Blender."""
    out = tmp_path_factory.mktemp("assets")
    done = subprocess.run(["blender", "-b", "--factory-startup", "-noaudio", "-P", str(MAKE_CHARACTER), "--",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert (out / "character.blend").is_file(), done.stdout[-2000:] + done.stderr[-2000:]
    # A 4x2 Radiance HDRI of one reddish radiance (flat RGBE scanlines: width < 8 is never run-length coded).
    (out / "red.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 4\n" + bytes([200, 20, 20, 129]) * 8)
    return out


@pytest.fixture
def settings(assets, tmp_path, monkeypatch):
    monkeypatch.setenv("POSE_FACTORY_ASSETS", str(assets))
    return load_settings(root=tmp_path)


def scene_job(samples: int = 3, azimuths=(20,), **poses) -> dict:
    job = default_job("character", samples, (64, 64), 5, pose_set="bvh-clip")
    job.update(generator="blender")
    job["scene"] = {"name": "test-room", "blend_file": "character.blend", "default_class": "wall"}
    job["rig"] = {"name": "metarig", "character": "Body", "mapping": "rigify"}
    job["poses"] = {"set": "bvh-clip", "motion_file": "motion.bvh", "sampling": "sequential", **poses}
    job["cameras"]["azimuths_deg"] = list(azimuths)
    job["render"].update(engine="CYCLES", samples=2)
    return job


def _rot(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {"X": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "Z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def expected_world(rest: dict, frame: int, joint_bone: str) -> np.ndarray:
    """Where a bone head is at a frame of motion.bvh, computed here from the rest pose and the known rotation."""
    to_bvh = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # Blender (x, y, z) -> BVH (x, z, -y)
    p = np.array(rest[joint_bone])
    moved = {2: ("upper_arm.L", "Z", 40.0, ("forearm.L", "hand.L")), 3: ("shin.R", "X", 60.0, ("foot.R",))}
    if frame in moved and joint_bone in moved[frame][3]:
        pivot_bone, axis, degrees, _ = moved[frame]
        pivot = to_bvh @ np.array(rest[pivot_bone])
        p = to_bvh.T @ (pivot + _rot(axis, degrees) @ (to_bvh @ p - pivot))
    return p


def test_user_scene_renders_a_valid_batch_with_the_pose_from_the_rig(assets, settings, tmp_path):
    job = scene_job()
    job["scene"]["hdri"] = "red.hdr"
    batch = blender_render.render_with_blender(job, tmp_path / "out", settings, "2026-11-30_character")
    report = validate_batch(batch)
    assert report.ok, report.as_json()["problems"]
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["software"]["render_device"] == "CPU" and manifest["software"]["gpu"] is None
    assert "table" in manifest["conventions"]["segmentation"]["labels"]
    rest = json.loads((assets / "rest.json").read_text())
    for sid, frame in (("000000", 1), ("000001", 2), ("000002", 3)):
        annotation = json.loads((batch / f"annotations/{sid}.json").read_text())
        assert annotation["pose"]["frame"] == frame
        cam = annotation["camera"]
        K, R, t = (np.array(cam[k]) for k in ("K", "R_w2c", "t_w2c"))
        kp = np.array(annotation["persons"][0]["keypoints_2d"])
        seg = np.asarray(Image.open(batch / f"seg/{sid}.png").convert("RGB"))
        person = np.all(seg == encode.SEG_PALETTE["person"], axis=2)
        for joint, bone in (("l_wrist", "hand.L"), ("l_elbow", "forearm.L"), ("r_ankle", "foot.R"),
                            ("r_knee", "shin.R"), ("r_hip", "thigh.R")):
            pc = R @ expected_world(rest, frame, bone) + t
            u, v = K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]
            x, y, vis = kp[IDX[joint]]
            assert vis > 0 and abs(x - u) <= 1.0 and abs(y - v) <= 1.0, (sid, joint, (x, y), (u, v))
            if vis == 2:  # a visible joint lands on the character's mesh (within 2 px at 64x64)
                assert person[max(0, int(y) - 2):int(y) + 3, max(0, int(x) - 2):int(x) + 3].any(), (sid, joint)
        colours = {tuple(c) for c in seg.reshape(-1, 3)}
        assert encode.SEG_PALETTE["person"] in colours and encode.SEG_PALETTE["floor"] in colours
        assert encode.ADE20K["table"] in colours  # the box tagged pose_factory_class = table
        sky = np.all(seg == encode.SEG_PALETTE["sky"], axis=2)
        rgb = np.asarray(Image.open(batch / f"rgb/{sid}.png").convert("RGB")).astype(int)
        assert sky.any() and np.all(rgb[sky][:, 0] > rgb[sky][:, 1] + 30), "the HDRI is the world"
    # The arm really moved between frame 1 and 2, as the BVH says.
    a, b = (json.loads((batch / f"annotations/{s}.json").read_text())["persons"][0]["keypoints_3d_cam"]
            for s in ("000000", "000001"))
    assert np.linalg.norm(np.array(a[IDX["l_wrist"]]) - np.array(b[IDX["l_wrist"]])) > 0.2


def test_action_of_the_blend_is_a_motion_and_frames_follow_the_range(settings):
    job = scene_job(samples=2, action="Raise", frame_start=1, frame_end=5, frame_step=4)
    del job["poses"]["motion_file"]
    prepared = blender_render.prepare_scene(job, settings)
    assert prepared.probe["frames"] == [1, 5] and prepared.probe["clip_range"] == [1, 5]
    wrist = [prepared.probe["per_frame"][f]["points"]["hand.L:head"] for f in ("1", "5")]
    assert np.linalg.norm(np.array(wrist[0]) - np.array(wrist[1])) > 0.2


@pytest.mark.parametrize("change, fragment, listed", [
    (lambda job: job["rig"].update(character="Nobody"), "no object 'Nobody'", "Body"),
    (lambda job: job["rig"].update(mapping={**blender_render.RIG_MAPPINGS["rigify"], "nose": "snout:head"}),
     "lacks: snout:head", "upper_arm.L"),
])
def test_scene_problems_fail_before_rendering_and_list_what_there_is(settings, change, fragment, listed):
    job = scene_job()
    change(job)
    with pytest.raises(SceneError) as caught:
        blender_render.prepare_scene(job, settings)
    assert fragment in caught.value.message and listed in caught.value.message and caught.value.hint


def test_missing_or_unreadable_files_and_refused_engines_fail_without_blender(settings, assets, tmp_path):
    job = scene_job()
    job["scene"]["blend_file"] = "nowhere.blend"
    with pytest.raises(SceneError, match="nowhere.blend"):
        blender_render.resolve_assets(job, settings)
    (assets / "notes.blend").write_text("not a blend file")
    job["scene"]["blend_file"] = "notes.blend"
    with pytest.raises(SceneError, match="not a .blend file"):
        blender_render.resolve_assets(job, settings)
    job = scene_job()
    job["scene"]["blend_sha256"] = "0" * 64
    with pytest.raises(SceneError, match="sha256"):
        blender_render.resolve_assets(job, settings)
    job = scene_job()
    job["render"]["engine"] = "BLENDER_EEVEE_NEXT"
    with pytest.raises(UsageError, match="Object Index"):
        blender_render.render_with_blender(job, tmp_path / "out", settings, "2026-11-30_character")


def test_assets_come_from_the_bucket_and_a_failed_scene_is_in_the_job_status(assets, tmp_path, monkeypatch):
    from pose_factory.bucket.jobs import job_key
    from pose_factory.producer.worker import run_worker, status_key

    monkeypatch.setenv("POSE_FACTORY_ASSETS", str(tmp_path / "empty"))
    settings = load_settings(root=tmp_path)
    storage = LocalFolderStorage(tmp_path / "bucket", "test")
    storage.put_bytes("assets/character.blend", (assets / "character.blend").read_bytes())
    job = scene_job()
    found = blender_render.resolve_assets(dict(job, poses={"set": "still"}), settings, storage, tmp_path / "fetched")
    assert found.blend.read_bytes() == (assets / "character.blend").read_bytes()
    job["job_id"] = "job-no-bvh"
    storage.put_bytes(job_key(settings, "job-no-bvh"), json.dumps(job).encode())
    with pytest.raises(SceneError):
        run_worker(storage, settings, "job-no-bvh", heartbeat_s=60)
    status = json.loads(storage.read_bytes(status_key(settings, "job-no-bvh")))
    assert status["state"] == "failed" and "motion.bvh" in status["error"] and status["samples_done"] == 0
