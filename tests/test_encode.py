"""The shared encoder and the generator's choices, point by point of issue #12: control maps a ControlNet
user would take for a detector's output, at any image size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pose_factory.core import contract
from pose_factory.core.settings import load_settings
from pose_factory.dataset.validate import png_problem, validate_batch
from pose_factory.producer import encode, figure
from pose_factory.producer.generate import default_job, generate_batch, plan_sample, spread_order

IDX = {name: i for i, name in enumerate(encode.COCO18_JOINTS)}
FACE = [IDX[n] for n in ("nose", "r_eye", "l_eye")]


def view(az: float, size: tuple[int, int] = (160, 160), pose_set: str = "walk-cycle", frame: int = 0, **options):
    pose = figure.make_pose(pose_set, "mannequin-a", 3, frame)
    camera = figure.frame_camera(*figure.body_bounds(pose), az, 8.0, 4.0, 50.0, *size)
    return figure.render(pose, camera, encode.Options(**options))


# ---------------------------------------------------------------- 1. keypoints as a detector reports them


def test_back_view_has_no_face_in_the_pose_map_and_json_but_the_annotation_keeps_it():
    r = view(180.0)
    assert all(r.keypoints_2d[i, 2] == 1 for i in FACE), "annotation: face points labelled, occluded"
    assert np.all(r.reported_2d[FACE] == 0), "detector: not reported, 0, 0, 0"
    assert r.reported_2d[IDX["r_ear"], 2] == 2 and r.reported_2d[IDX["l_ear"], 2] == 2  # ears show from behind
    frame = encode.openpose_json(r.reported_2d, 160, 160)[0]
    flat = frame["people"][0]["pose_keypoints_2d"]
    assert all(flat[3 * i:3 * i + 3] == [0.0, 0.0, 0.0] for i in FACE)
    nose_colour = np.all(r.pose_map == encode.OPENPOSE_COLORS[IDX["nose"]], axis=2)
    assert not nose_colour.any(), "no nose disc on a back view"
    everything = view(180.0, keypoints="all")
    assert np.all(everything.reported_2d[FACE, 2] == 1) and np.all(everything.pose_map == r.pose_map) is np.False_


def test_profile_reports_only_the_near_eye_and_ear():
    r = view(90.0)  # camera on the figure's left
    reported = r.reported_2d
    assert reported[IDX["l_eye"], 2] == 2 and reported[IDX["l_ear"], 2] == 2 and reported[IDX["nose"], 2] == 2
    assert reported[IDX["r_eye"], 2] == 0 and reported[IDX["r_ear"], 2] == 0
    assert r.keypoints_2d[IDX["r_ear"], 2] in (1, 2)  # the annotation still has it


def test_hidden_joints_are_left_out_and_the_rule_needs_only_the_joints():
    kp = np.array([[10.0, 10.0, 2.0]] * 18)
    kp[IDX["r_wrist"], 2] = 1  # behind the body
    cam = np.zeros((18, 3))
    cam[:, 2] = 4.0
    cam[IDX["r_ear"]] = (-0.08, 0.0, 4.0)
    cam[IDX["l_ear"]] = (0.08, 0.0, 4.0)
    for name, x in (("nose", 0.0), ("r_eye", -0.03), ("l_eye", 0.03)):
        cam[IDX[name]] = (x, 0.0, 3.91)  # in front of the ears: facing the camera
    reported = encode.detector_keypoints(kp, cam)
    assert reported[IDX["r_wrist"]].tolist() == [0.0, 0.0, 0.0] and reported[IDX["nose"], 2] == 2
    cam[FACE, 2] = 4.09  # the face turned away
    assert np.all(encode.detector_keypoints(kp, cam)[FACE] == 0)


# ---------------------------------------------------------------- 2. sizes as ControlNet sees them


@pytest.mark.parametrize("size, scale, expected", [((512, 512), 1.0, (4, 4)), ((1024, 1024), 1.0, (8, 8)),
                                                   ((1536, 640), 1.0, (5, 5)), ((1024, 1024), 1.5, (12, 12)),
                                                   ((64, 64), 1.0, (1, 1))])
def test_stick_width_and_joint_radius_scale_with_the_short_side(size, scale, expected):
    assert encode.stick_sizes(*size, scale) == expected


def test_joint_discs_are_cv2_circles_and_limbs_get_wider():
    # cv2.circle's filled circle (midpoint steps): counts for radius 1..8 as opencv-python 5.0 draws them.
    assert [len(encode.circle_disc(r)[0]) for r in range(1, 9)] == [5, 13, 29, 49, 81, 113, 149, 197]
    kp = np.zeros((18, 3))
    kp[IDX["r_knee"]] = (100.0, 60.0, 2)
    kp[IDX["r_ankle"]] = (100.0, 200.0, 2)
    thin, thick = encode.draw_openpose(kp, 200, 260, 4, 4), encode.draw_openpose(kp, 200, 260, 8, 8)
    limb = tuple(int(c * 0.6) for c in encode.OPENPOSE_COLORS[8])
    width = [np.sum(np.all(img[130] == limb, axis=1)) for img in (thin, thick)]
    assert width == [9, 17]


def test_batch_records_the_drawing_sizes(tmp_path):
    job = default_job("sizes", 1, (96, 64), 0)
    job["render"]["stick_scale"] = 2.0
    batch = generate_batch(job, tmp_path, load_settings(root=tmp_path), batch_id="2026-01-01_sizes", workers=1)
    openpose = contract.load_manifest(batch.batch_dir)["conventions"]["openpose"]
    assert openpose["keypoints"] == "detector" and (openpose["stick_width"], openpose["joint_radius"]) == (1, 1)
    assert contract.load_manifest(batch.batch_dir)["schema_version"] == "1.1.0"


# ---------------------------------------------------------------- 3. any aspect ratio frames the whole figure


@pytest.mark.parametrize("size", [(1024, 1024), (1152, 896), (1216, 832), (1344, 768), (768, 1344), (1536, 640)])
def test_every_sdxl_size_frames_the_whole_figure_with_a_margin(size):
    width, height = size
    margin = figure.FRAME_MARGIN * min(size)
    for pose_set, az, frame in (("run-cycle", 0.0, 3), ("random-pose", 135.0, 1), ("walk-cycle", 270.0, 7)):
        pose = figure.make_pose(pose_set, "mannequin-b", 4, frame)
        camera = figure.frame_camera(*figure.body_bounds(pose), az, 10.0, 4.0, 50.0, width, height)
        uv, z = camera.project(np.stack([pose.joints_world[n] for n in encode.COCO18_JOINTS]))
        assert np.all(z > 0)
        assert np.all((uv[:, 0] >= margin) & (uv[:, 0] <= width - margin)), (size, pose_set)
        assert np.all((uv[:, 1] >= margin) & (uv[:, 1] <= height - margin)), (size, pose_set)
        # The body's box projects inside the margin too, so the person mask cannot touch the border.
        lo, hi = figure.body_bounds(pose)
        corners = np.array([[x, y, zz] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for zz in (lo[2], hi[2])])
        box_uv, _ = camera.project(corners)
        assert box_uv[:, 0].min() >= margin - 1e-6 and box_uv[:, 1].max() <= height - margin + 1e-6


def test_rendered_wide_and_tall_images_keep_the_person_off_the_border():
    for size in ((192, 80), (96, 168)):
        r = view(30.0, size, pose_set="run-cycle", frame=2)
        x, y, w, h = r.bbox
        assert w > 0 and x > 0 and y > 0 and x + w < size[0] and y + h < size[1]


def test_validate_warns_when_a_joint_or_the_person_touches_the_border(tmp_path):
    job = default_job("border", 2, (64, 48), 0)
    batch = generate_batch(job, tmp_path, load_settings(root=tmp_path), batch_id="2026-01-01_border",
                           workers=1).batch_dir
    assert validate_batch(batch).warnings == []
    annotation = json.loads((batch / "annotations/000000.json").read_text())
    annotation["persons"][0]["bbox"][0] = 0.0
    (batch / "annotations/000000.json").write_bytes(contract.dumps(annotation))
    annotation = json.loads((batch / "annotations/000001.json").read_text())
    annotation["persons"][0]["keypoints_3d_cam"][10][0] = 5.0  # an ankle far to the right: out of frame
    (batch / "annotations/000001.json").write_bytes(contract.dumps(annotation))
    manifest = contract.load_manifest(batch)
    manifest["files"] = contract.file_entries(batch, [f["path"] for f in manifest["files"]])
    manifest["totals"]["bytes"] = sum(f["size"] for f in manifest["files"])
    (batch / "manifest.json").write_bytes(contract.dumps(manifest))
    report = validate_batch(batch)
    assert report.ok
    fields = sorted((w.file, w.field) for w in report.warnings)
    assert fields == [("annotations/000000.json", "$.persons[0].bbox"),
                      ("annotations/000001.json", "$.persons[0].keypoints_3d_cam[10]")]


# ---------------------------------------------------------------- 4. depth like MiDaS, metric depth lossless


def test_depth_is_relative_inverse_depth_and_metric_depth_is_a_16_bit_png(tmp_path):
    job = default_job("depth", 1, (64, 64), 0)
    job["render"]["modalities"] = ["depth", "depth_metric", "seg"]
    batch = generate_batch(job, tmp_path, load_settings(root=tmp_path), batch_id="2026-01-01_depth",
                           workers=1).batch_dir
    manifest = contract.load_manifest(batch)
    assert manifest["conventions"]["depth"]["encoding"] == "inverse-normalised-per-sample"
    assert manifest["conventions"]["depth_metric"]["units_per_metre"] == 1000.0
    with Image.open(batch / "depth_metric/000000.png") as image:
        assert image.mode == "I;16"
        metric = np.asarray(image).astype(float) / 1000.0
    depth = np.asarray(Image.open(batch / "depth/000000.png"))[..., 0].astype(float)
    near, far = json.loads((batch / "annotations/000000.json").read_text())["depth_range_m"]
    geom = metric > 0
    expected = 255 * np.clip((1 / metric[geom] - 1 / far) / (1 / near - 1 / far), 0, 1)
    assert np.abs(depth[geom] - expected).max() <= 1.0
    assert np.all(depth[~geom] == 0)
    assert validate_batch(batch).ok
    # The validator holds depth_metric to 16-bit greyscale and every other image to 8-bit RGB.
    png = (batch / "depth_metric/000000.png").read_bytes()
    assert png_problem(png, 64, 64, grey16=True) is None
    assert png_problem(png, 64, 64)[0] == "mode"


# ---------------------------------------------------------------- 5. POSE_KEYPOINT files ComfyUI's nodes load


def test_openpose_file_loads_in_comfyui_pose_keypoint_nodes_without_conversion(template_batch):
    text = (template_batch / "openpose_json/000000.json").read_text()
    loaded = json.loads(text)  # a JSON "load pose keypoints" node returns the file's content as POSE_KEYPOINT
    # comfyui_controlnet_aux's Save Pose Keypoints indexes the value as a list of frames and dumps it whole.
    assert loaded[0]["canvas_width"] == 64 and json.loads(json.dumps(loaded)) == loaded
    # Its renderers take the first frame of a list and read flat x, y, c triples with c >= 1 as present.
    frame = loaded[0] if isinstance(loaded, list) else loaded
    body = frame["people"][0]["pose_keypoints_2d"]
    assert len(body) == 54 and all(c in (0.0, 1.0) for c in body[2::3])
    assert frame["canvas_height"] == 64 and any(c == 1.0 for c in body[2::3])


# ---------------------------------------------------------------- 6. poses that vary


def test_spread_sampling_covers_the_cycle_and_the_views_for_any_count():
    for samples in (3, 5, 12, 13, 40):
        job = default_job("spread", samples, (64, 64), 7)
        plans = [plan_sample(job, i) for i in range(samples)]
        positions = sorted(p.position for p in plans)
        assert all(i / samples <= pos < (i + 1) / samples for i, pos in enumerate(positions))  # one per stratum
        counts = np.bincount([p.view_index for p in plans], minlength=8)
        assert counts.max() - counts.min() <= 1
    three = {plan_sample(default_job("spread", 3, (64, 64), 7), i).azimuth for i in range(3)}
    assert three == {0.0, 180.0, 90.0}
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7] and sorted(spread_order(6)) == list(range(6))


def test_a_twelve_sample_run_cycle_shows_twelve_different_phases():
    job = default_job("run", 12, (64, 64), 1)
    phases = []
    for i in range(12):
        plan = plan_sample(job, i)
        phases.append(figure.make_pose("run-cycle", "mannequin-a", 1, plan.frame, plan.position).phase)
    gaps = np.diff(sorted(phases) + [sorted(phases)[0] + 1.0])
    assert len(set(np.round(phases, 6))) == 12 and gaps.max() < 2.0 / 12


def test_sequential_sampling_keeps_the_1_0_rule():
    job = default_job("seq", 10, (64, 64), 1)
    job["poses"].update(sampling="sequential", frame_step=2)
    plans = [plan_sample(job, i) for i in range(10)]
    assert [p.view_index for p in plans] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert [p.frame for p in plans] == [0] * 8 + [2, 2] and plans[0].position is None


# ---------------------------------------------------------------- 7. a figure that reads as a person


def test_the_figure_has_a_neck_a_waist_and_a_thumb():
    pose = figure.make_pose("walk-cycle", "mannequin-a", 3, 0)
    camera = figure.frame_camera(*figure.body_bounds(pose), 0.0, 0.0, 4.0, 50.0, 256, 256)
    r = figure.render(pose, camera)
    person = np.all(r.seg == encode.SEG_PALETTE["person"], axis=2)
    uv, _ = camera.project(np.stack([pose.joints_world[n] for n in ("neck_top", "neck", "chest", "pelvis")]))

    def width(row: float) -> int:
        """Width of the run of person pixels through the body's centre line (arms at the sides excluded)."""
        line, centre = person[int(row)], int(uv[3, 0])
        left, right = centre, centre
        while left > 0 and line[left - 1]:
            left -= 1
        while right < len(line) - 1 and line[right + 1]:
            right += 1
        return right - left + 1

    neck_row = 0.7 * uv[0, 1] + 0.3 * uv[1, 1]
    waist_row = uv[2, 1] + 0.55 * (uv[3, 1] - uv[2, 1])
    assert width(neck_row) < 0.4 * width(uv[2, 1])  # a neck, not a post
    assert width(waist_row) < width(uv[2, 1])      # the waist is narrower than the chest
    prims = figure._primitives(pose)
    thumbs = [p for p in prims if p[0] == "cap" and np.allclose(p[1], pose.joints_world["r_thumb_base"])]
    assert len(thumbs) == 1
    # Shoes: heel, instep and toe box, all resting on the floor line.
    shoe = [p for p in prims if p[-1] == figure._SHOES]
    assert len(shoe) == 6
    assert figure.body_bounds(pose)[0][2] == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------- 8. one encoder


def test_blender_path_uses_the_shared_encoder_not_generate_internals():
    source = (Path(__file__).parents[1] / "scripts/pose_factory/producer/blender_render.py").read_text()
    assert "encode.encode_view" in source and "encode.write_sample" in source
    assert "generate import _" not in source and "import (\n    _" not in source
