"""Tests for pose_factory.producer.figure: poses, camera, render modalities and OpenPose output."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pose_factory.producer.figure import (
    COCO18_JOINTS,
    JOINT_LIMITS_DEG,
    OPENPOSE_COLORS,
    OPENPOSE_LIMBS,
    POSE_SETS,
    RIGS,
    SEG_PALETTE,
    Camera,
    anatomy_problems,
    body_bounds,
    draw_openpose,
    make_pose,
    openpose_json,
    render,
)

SIZE = 128
IDX = {name: i for i, name in enumerate(COCO18_JOINTS)}


def front_cam(az: float = 0.0, size: int = SIZE, **kw) -> Camera:
    return Camera(azimuth_deg=az, elevation_deg=8.0, distance_m=4.0, focal_mm=50.0, width=size, height=size, **kw)


@pytest.fixture(scope="module")
def front():
    pose = make_pose("walk-cycle", "mannequin-a", 3, 0)
    return pose, render(pose, front_cam())


@pytest.fixture(scope="module")
def back():
    pose = make_pose("walk-cycle", "mannequin-a", 3, 0)
    return pose, render(pose, front_cam(180.0))


# ---------------------------------------------------------------- constants


def test_constants_shape():
    assert len(COCO18_JOINTS) == 18 and COCO18_JOINTS[0] == "nose" and COCO18_JOINTS[17] == "l_ear"
    assert len(OPENPOSE_COLORS) == 18 and OPENPOSE_COLORS[0] == (255, 0, 0)
    assert len(OPENPOSE_LIMBS) == 17 and OPENPOSE_LIMBS[0] == (2, 3) and OPENPOSE_LIMBS[-1] == (16, 18)
    assert SEG_PALETTE["person"] == (150, 5, 61)
    assert {"run-cycle", "walk-cycle", "random-pose"} <= set(POSE_SETS)
    assert RIGS["mannequin-a"]["height_m"] == pytest.approx(1.78)
    assert RIGS["mannequin-b"]["height_m"] == pytest.approx(1.62)


# ---------------------------------------------------------------- poses


@pytest.mark.parametrize("pose_set", ["run-cycle", "walk-cycle", "random-pose"])
def test_make_pose_deterministic_and_seed_sensitive(pose_set):
    a = make_pose(pose_set, "mannequin-a", 11, 4)
    b = make_pose(pose_set, "mannequin-a", 11, 4)
    assert a.joint_angles_deg == b.joint_angles_deg
    for name in a.joints_world:
        np.testing.assert_array_equal(a.joints_world[name], b.joints_world[name])
    other_seed = make_pose(pose_set, "mannequin-a", 12, 4)
    other_index = make_pose(pose_set, "mannequin-a", 11, 5)
    for other in (other_seed, other_index):
        diff = max(np.abs(a.joints_world[n] - other.joints_world[n]).max() for n in COCO18_JOINTS)
        assert diff > 0.01


def test_pose_has_coco_joints_feet_on_floor_and_rig_height():
    for rig, height in (("mannequin-a", 1.78), ("mannequin-b", 1.62)):
        p = make_pose("walk-cycle", rig, 0, 0)
        assert set(COCO18_JOINTS) <= set(p.joints_world)
        assert body_bounds(p)[0][2] == pytest.approx(0.0, abs=1e-9)
        assert all(p.joints_world[n][2] > 0.0 for n in COCO18_JOINTS)
        assert p.joints_world["head_top"][2] == pytest.approx(height, abs=0.1)
        # Figure faces -Y: the nose is in front (more negative y) of the neck; its right is at -X.
        assert p.joints_world["nose"][1] < p.joints_world["neck"][1]
        assert p.joints_world["r_shoulder"][0] < p.joints_world["l_shoulder"][0]


def test_run_cycle_really_moves_and_loops():
    poses = [make_pose("run-cycle", "mannequin-a", 5, i) for i in range(21)]
    ankles = np.array([p.joints_world["r_ankle"] for p in poses])
    wrists = np.array([p.joints_world["l_wrist"] for p in poses])
    assert np.ptp(ankles[:, 1]) > 0.3  # the foot sweeps forward and back
    assert np.ptp(wrists[:, 1]) > 0.15
    assert len({round(p.phase, 6) for p in poses[:20]}) == 20
    # 20 frames per run cycle: index 20 is index 0 again.
    np.testing.assert_allclose(poses[20].joints_world["r_ankle"], poses[0].joints_world["r_ankle"], atol=1e-9)


def test_random_pose_angles_within_joint_limits():
    for i in range(200):
        p = make_pose("random-pose", "mannequin-b", 2, i)
        assert p.phase == 0.0
        for name, value in p.joint_angles_deg.items():
            key = name[:-2] if name[-2:] in ("_l", "_r") else name
            lo, hi = JOINT_LIMITS_DEG[key]
            assert lo <= value <= hi, (name, value)
        assert anatomy_problems(p.joint_angles_deg) == [], i
    # The couplings are checked, not just the per-joint limits.
    angles = dict(make_pose("random-pose", "mannequin-b", 2, 0).joint_angles_deg, hip_flex_r=110.0, knee_flex_r=0.0)
    assert any("hamstring" in problem for problem in anatomy_problems(angles))
    angles.update(hip_flex_r=20.0, shoulder_flex_l=170.0, shoulder_abd_l=150.0)
    assert any("shoulder_l" in problem for problem in anatomy_problems(angles))


def test_unknown_pose_set_or_rig_raises():
    with pytest.raises(ValueError) as err:
        make_pose("moonwalk", "mannequin-a", 0, 0)
    for allowed in ("run-cycle", "walk-cycle", "random-pose"):
        assert allowed in str(err.value)
    with pytest.raises(ValueError, match="mannequin-a"):
        make_pose("walk-cycle", "robot", 0, 0)


# ---------------------------------------------------------------- camera


def test_camera_conventions():
    cam = front_cam()
    R, t, K = cam.R_w2c(), cam.t_w2c(), cam.K()
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert K[0, 0] == pytest.approx(50.0 / 36.0 * SIZE) and K[0, 2] == SIZE / 2
    uv, z = cam.project(np.array([cam.target]))
    np.testing.assert_allclose(uv[0], [SIZE / 2, SIZE / 2], atol=1e-9)
    assert z[0] == pytest.approx(4.0)
    # Azimuth 0 puts the camera on -Y; world up projects to image up (smaller v).
    centre = -R.T @ t
    assert centre[1] < -3.0
    uv2, _ = cam.project(np.array([[0.0, 0.0, 0.9], [0.0, 0.0, 1.5], [0.5, 0.0, 0.9]]))
    assert uv2[1, 1] < uv2[0, 1]
    assert uv2[2, 0] > uv2[0, 0]  # +X (figure's left) is image right in a front view


# ---------------------------------------------------------------- render


def test_render_deterministic():
    pose = make_pose("random-pose", "mannequin-a", 9, 1)
    a, b = render(pose, front_cam(30.0)), render(pose, front_cam(30.0))
    for field in ("rgb", "pose_map", "depth", "normal", "seg", "keypoints_2d", "keypoints_cam"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.bbox == b.bbox


def test_render_shapes_and_dtypes(front):
    _, r = front
    for img in (r.rgb, r.pose_map, r.depth, r.normal, r.seg):
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert r.keypoints_2d.shape == (18, 3) and r.keypoints_cam.shape == (18, 3)


def test_front_view_keypoints_visible_inside_canvas(front):
    _, r = front
    kp = r.keypoints_2d
    assert np.all(kp[:, 2] > 0)
    # Face, shoulders, arms and hips face the camera; only a swing-leg ankle may hide
    # behind its own shin, which the depth test is right to report.
    upper = [IDX[n] for n in COCO18_JOINTS if not n.endswith(("knee", "ankle"))]
    assert np.all(kp[upper, 2] == 2)
    assert np.sum(kp[:, 2] == 2) >= 16
    assert r.visible_fraction == pytest.approx(np.mean(kp[:, 2] == 2))
    assert np.all((kp[:, 0] >= 0) & (kp[:, 0] < SIZE) & (kp[:, 1] >= 0) & (kp[:, 1] < SIZE))
    assert kp[IDX["nose"], 1] < kp[IDX["r_ankle"], 1] and kp[IDX["nose"], 1] < kp[IDX["l_ankle"], 1]
    # Facing the camera, the figure's right side is on the image left.
    assert kp[IDX["r_shoulder"], 0] < kp[IDX["l_shoulder"], 0]
    assert np.all(r.keypoints_cam[:, 2] > 3.0)


def test_back_view_occludes_face(back):
    _, r = back
    kp = r.keypoints_2d
    assert kp[IDX["nose"], 2] == 1
    assert kp[IDX["r_eye"], 2] == 1 and kp[IDX["l_eye"], 2] == 1
    assert kp[IDX["neck"], 2] == 2 and kp[IDX["r_hip"], 2] == 2
    assert kp[IDX["r_shoulder"], 0] > kp[IDX["l_shoulder"], 0]  # mirrored from behind


def test_keypoints_outside_canvas_are_unlabelled():
    pose = make_pose("walk-cycle", "mannequin-a", 3, 0)
    # Telephoto framed on the head: the feet project below the canvas.
    cam = Camera(0.0, 0.0, 4.0, 200.0, 96, 96, target=(0.0, 0.0, 1.6))
    r = render(pose, cam)
    for name in ("r_ankle", "l_ankle", "r_knee", "l_knee"):
        assert r.keypoints_2d[IDX[name]].tolist() == [0.0, 0.0, 0.0]
    assert r.keypoints_2d[IDX["nose"], 2] == 2
    assert r.visible_fraction < 1.0


def test_depth_encoding(front):
    pose, r = front
    person = np.all(r.seg == SEG_PALETTE["person"], axis=2)
    sky = np.all(r.seg == SEG_PALETTE["sky"], axis=2)
    assert np.array_equal(r.depth[..., 0], r.depth[..., 1]) and np.array_equal(r.depth[..., 0], r.depth[..., 2])
    assert person.any() and sky.any()
    assert r.depth[..., 0][person].min() > 0
    assert r.depth[..., 0][person].mean() > 170  # near = white
    assert np.all(r.depth[sky] == 0)
    # near is the subject's nearest surface, far at most 1.5 x its farthest.
    z_person = r.depth_metric[person] / 1000.0
    assert r.depth_near_m == pytest.approx(z_person.min(), abs=0.002)
    assert r.depth_far_m <= 1.5 * z_person.max() + 0.002
    # Relative inverse depth (MiDaS): the nose sits on the surface, so its pixel encodes its own depth.
    x, y, _ = r.keypoints_2d[IDX["nose"]]
    z = r.keypoints_cam[IDX["nose"], 2]
    expected = 255.0 * (1 / z - 1 / r.depth_far_m) / (1 / r.depth_near_m - 1 / r.depth_far_m)
    assert abs(int(r.depth[int(y), int(x), 0]) - expected) <= 3
    # The subject has relief: a body 0.5 m deep at 4 m spans dozens of grey levels (1.0's linear map: ~33).
    assert np.ptp(r.depth[..., 0][person]) >= 50
    # Metric depth is lossless in millimetres: the nose's pixel holds its camera z.
    assert abs(int(r.depth_metric[int(y), int(x)]) - z * 1000.0) <= 15
    assert r.depth_metric.dtype == np.uint16 and np.all(r.depth_metric[sky] == 0)
    # Floor further away is darker than floor nearby (rows near the bottom are nearer).
    floor = np.all(r.seg == SEG_PALETTE["floor"], axis=2)
    col = r.depth[..., 0][:, 5][floor[:, 5]]
    assert col[-1] > col[0]


def test_seg_palette_only_and_consistent_with_depth(front):
    _, r = front
    colours = {tuple(c) for c in r.seg.reshape(-1, 3)}
    assert colours <= set(SEG_PALETTE.values())
    assert SEG_PALETTE["person"] in colours and SEG_PALETTE["floor"] in colours
    person = np.all(r.seg == SEG_PALETTE["person"], axis=2)
    geom = r.depth_metric > 0
    assert np.all(geom[person])
    sky = np.all(r.seg == SEG_PALETTE["sky"], axis=2)
    assert np.array_equal(sky, ~geom)
    rows, cols = np.nonzero(person)
    assert r.bbox == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    kp = r.keypoints_2d[r.keypoints_2d[:, 2] == 2]
    x, y, w, h = r.bbox
    assert np.all((kp[:, 0] >= x - 1) & (kp[:, 0] <= x + w + 1) & (kp[:, 1] >= y - 1) & (kp[:, 1] <= y + h + 1))


def test_normal_encoding(front):
    _, r = front
    kp = r.keypoints_2d
    # Torso between neck and hips faces the camera: mostly blue.
    cx = int((kp[IDX["neck"], 0] + kp[IDX["r_hip"], 0] + kp[IDX["l_hip"], 0]) / 3)
    cy = int((kp[IDX["neck"], 1] + kp[IDX["r_hip"], 1] + kp[IDX["l_hip"], 1]) / 3)
    patch = r.normal[cy - 2:cy + 3, cx - 2:cx + 3].reshape(-1, 3).astype(int)
    assert np.all(patch[:, 2] > 220) and np.all(patch[:, 2] > patch[:, 0]) and np.all(patch[:, 2] > patch[:, 1])
    # Floor faces up -> green dominates; sky gets the flat "facing camera" colour.
    floor = np.all(r.seg == SEG_PALETTE["floor"], axis=2)
    fl = r.normal[floor].astype(int)
    assert np.mean(fl[:, 1] > 200) > 0.99 and np.all(fl[:, 1] > fl[:, 0])
    sky = np.all(r.seg == SEG_PALETTE["sky"], axis=2)
    assert np.all(r.normal[sky] == (128, 128, 255))
    # "Red is left": across the head, the image-left edge is redder than the image-right edge.
    person = np.all(r.seg == SEG_PALETTE["person"], axis=2)
    row = int(kp[IDX["r_eye"], 1])
    xs = np.nonzero(person[row])[0]
    assert r.normal[row, xs.min(), 0] > 160 > 96 > r.normal[row, xs.max(), 0]
    # Unit-length normals survive the 8-bit encoding.
    n = r.normal[person].astype(float) / 127.5 - 1.0
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=0.03)


def test_rgb_has_distinct_regions(front):
    _, r = front
    person = np.all(r.seg == SEG_PALETTE["person"], axis=2)
    sky = np.all(r.seg == SEG_PALETTE["sky"], axis=2)
    assert np.abs(r.rgb[person].mean(0) - r.rgb[sky].mean(0)).sum() > 60
    assert len({tuple(c) for c in r.rgb[person]}) > 50  # shaded, not flat


def test_pose_map_is_draw_openpose_of_the_reported_keypoints(front):
    _, r = front
    # 128 px short side: controlnet_aux's 4 px at 512 px scale to 1 px sticks and joints.
    np.testing.assert_array_equal(r.pose_map, draw_openpose(r.reported_2d, SIZE, SIZE, 1, 1))


# ---------------------------------------------------------------- OpenPose drawing / JSON


def _synthetic_keypoints() -> np.ndarray:
    kp = np.zeros((18, 3))
    pts = {
        "nose": (100, 40), "neck": (100, 70), "r_shoulder": (70, 70), "r_elbow": (60, 110), "r_wrist": (55, 150),
        "l_shoulder": (130, 70), "l_elbow": (140, 110), "l_wrist": (145, 150), "r_hip": (85, 150),
        "r_knee": (83, 200), "r_ankle": (82, 250), "l_hip": (115, 150), "l_knee": (117, 200),
        "l_ankle": (118, 250), "r_eye": (94, 35), "l_eye": (106, 35), "r_ear": (86, 38), "l_ear": (114, 38),
    }
    for name, (x, y) in pts.items():
        kp[IDX[name]] = (x + 0.3, y + 0.6, 2)
    return kp


def test_draw_openpose_colours():
    kp = _synthetic_keypoints()
    img = draw_openpose(kp, 200, 280)
    assert img.shape == (280, 200, 3) and img.dtype == np.uint8
    assert np.all(img[0, 0] == 0)
    colours = {tuple(c) for c in img.reshape(-1, 3)}
    for i in range(len(OPENPOSE_LIMBS)):
        assert tuple(int(c * 0.6) for c in OPENPOSE_COLORS[i]) in colours, i
    for i, (x, y, _) in enumerate(kp):
        assert tuple(img[int(y), int(x)]) == OPENPOSE_COLORS[i]
    # A long limb: at its midpoint the stick is limb colour x 0.6, 4 px thick each side, black beyond.
    a, b = kp[IDX["r_knee"]], kp[IDX["r_ankle"]]  # limb index 8 (r_knee -> r_ankle)
    mx, my = int((a[0] + b[0]) / 2), int((a[1] + b[1]) / 2)
    limb8 = tuple(int(c * 0.6) for c in OPENPOSE_COLORS[8])
    assert tuple(img[my, mx]) == limb8
    assert tuple(img[my, mx + 3]) == limb8 and tuple(img[my, mx - 3]) == limb8
    assert np.all(img[my, mx + 7] == 0) and np.all(img[my, mx - 7] == 0)
    thick = draw_openpose(kp, 200, 280, stickwidth=7)
    assert tuple(thick[my, mx + 6]) == limb8


def test_draw_openpose_joint_disc_and_missing_points():
    kp = np.zeros((18, 3))
    kp[IDX["neck"]] = (50.5, 50.5, 2)
    img = draw_openpose(kp, 100, 100)
    drawn = img.any(axis=2)[46:55, 46:55].astype(int)
    # cv2.circle(radius=4, thickness=-1) as OpenCV rasterises it (checked against opencv-python 5.0):
    # rows +-4 are one pixel, rows +-3 five, the middle row nine; 49 pixels, not a round 9x9 disc.
    assert drawn.tolist() == [[0, 0, 0, 0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1, 0],
                              [0, 1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1, 0],
                              [0, 1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0]]
    assert img.any(axis=2).sum() == 49 and img[50, 54].tolist() == list(OPENPOSE_COLORS[1])
    # No limb is drawn when one end is missing; occluded (v=1) points still are.
    kp[IDX["r_shoulder"]] = (20.0, 50.0, 1)
    img = draw_openpose(kp, 100, 100)
    assert tuple(img[50, 35]) == tuple(int(c * 0.6) for c in OPENPOSE_COLORS[0])


def test_openpose_json(front):
    _, r = front
    frames = openpose_json(r.keypoints_2d, SIZE, SIZE)
    json.dumps(frames)
    assert isinstance(frames, list) and len(frames) == 1  # ComfyUI POSE_KEYPOINT: a list of frames
    data = frames[0]
    assert data["canvas_width"] == SIZE and data["canvas_height"] == SIZE
    person = data["people"][0]
    flat = person["pose_keypoints_2d"]
    assert len(flat) == 54
    assert person["face_keypoints_2d"] is None and person["hand_left_keypoints_2d"] is None
    assert person["hand_right_keypoints_2d"] is None
    assert max(flat[0::3] + flat[1::3]) > 1.0  # pixels, not normalised
    assert set(flat[2::3]) == {1.0}
    assert flat[0] == round(float(r.keypoints_2d[0, 0]), 2)

    kp = r.keypoints_2d.copy()
    kp[3] = (0.0, 0.0, 0.0)
    flat = openpose_json(kp, SIZE, SIZE)[0]["people"][0]["pose_keypoints_2d"]
    assert flat[9:12] == [0.0, 0.0, 0.0]


def test_render_speed_small():
    pose = make_pose("run-cycle", "mannequin-b", 1, 1)
    cam = front_cam(40.0)
    render(pose, cam)
    start = time.perf_counter()
    render(pose, cam)
    assert time.perf_counter() - start < 0.5  # target is < 0.1 s; loose to avoid CI flakes
