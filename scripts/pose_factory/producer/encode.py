"""One encoder for every renderer: the raw buffers of a rendered view -> the batch contract's files.

The synthetic generator (:mod:`pose_factory.producer.figure`) and the Blender path
(:mod:`pose_factory.producer.blender_render`) both hand over the same :class:`View`: camera z per pixel,
camera-space normals, a label per pixel, the shaded RGB and the 18 COCO joints in the world. Everything
that turns that into control maps, keypoints, the OpenPose JSON and the annotation lives here, so the two
renderers cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pose_factory.core import contract

COCO18_JOINTS: tuple[str, ...] = (
    "nose", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "r_eye", "l_eye", "r_ear", "l_ear",
)

OPENPOSE_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
    (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

OPENPOSE_LIMBS: tuple[tuple[int, int], ...] = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11),
    (2, 12), (12, 13), (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18),
)

SEG_PALETTE: dict[str, tuple[int, int, int]] = {
    "person": (150, 5, 61),
    "floor": (80, 50, 50),
    "wall": (120, 120, 120),
    "sky": (6, 230, 230),
}

NEAR_CLIP_M = 0.01
# Joint centres sit inside the flesh: a joint is visible when it is at most its embedding depth plus this
# much behind the rendered surface at its pixel.
KEYPOINT_TOLERANCE_M = 0.02


@dataclass
class View:
    """What a renderer hands the encoder for one sample (arrays are (H, W, ...), rows top-down)."""

    camera: Any                   # figure.Camera: K(), R_w2c(), t_w2c(), project(), width, height
    z: np.ndarray                 # camera z in metres; inf where nothing was hit
    normal_cam: np.ndarray        # normals in the OpenCV camera frame (any length; 0 where nothing was hit)
    labels: np.ndarray            # label index per pixel into label_names
    label_names: tuple[str, ...]  # names from SEG_PALETTE; "sky" where nothing was hit
    rgb: np.ndarray               # shaded preview, uint8
    keypoints_world: np.ndarray   # (18, 3) COCO-18 joints in the world frame
    embed_m: np.ndarray           # (18,) depth of each joint below the body surface around it


@dataclass
class Encoded:
    """The files' contents and the per-person annotation of one view."""

    images: dict[str, np.ndarray]
    keypoints_2d: np.ndarray     # (18, 3) x, y, COCO v
    keypoints_cam: np.ndarray    # (18, 3)
    bbox: tuple[float, float, float, float]
    visible_fraction: float
    depth_near_m: float
    depth_far_m: float
    width: int
    height: int


def keypoints_2d(camera: Any, keypoints_world: np.ndarray, z: np.ndarray, embed_m: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, v) per joint and the joints in the camera frame; v by a depth test against the rendered z."""
    height, width = z.shape
    kp_world = np.asarray(keypoints_world, dtype=float).reshape(-1, 3)
    kp_cam = kp_world @ camera.R_w2c().T + camera.t_w2c()
    uv, kz = camera.project(kp_world)
    kp2d = np.zeros((len(kp_world), 3))
    for i, (u, v) in enumerate(uv):
        if not (kz[i] > NEAR_CLIP_M and 0.0 <= u < width and 0.0 <= v < height):
            continue
        surface = z[int(v), int(u)]
        kp2d[i] = (u, v, 2 if kz[i] <= surface + embed_m[i] + KEYPOINT_TOLERANCE_M else 1)
    return kp2d, kp_cam


def encode_depth(z: np.ndarray) -> tuple[np.ndarray, float, float]:
    """8-bit, 3-channel depth map (near = white) and its [near, far] range in metres."""
    geom = np.isfinite(z)
    if geom.any():
        zmin, zmax = float(z[geom].min()), float(z[geom].max())
        near = max(math.floor(zmin * 10.0) / 10.0, 0.0)
        far = math.ceil(zmax * 10.0) / 10.0 + 0.1
    else:
        near, far = 0.0, 1.0
    d8 = np.zeros(z.shape, dtype=np.uint8)
    d8[geom] = np.clip(np.rint(255.0 * (far - z[geom]) / (far - near)), 0, 255).astype(np.uint8)
    return np.repeat(d8[:, :, None], 3, axis=2), near, far


def encode_normal(normal_cam: np.ndarray, geom: np.ndarray) -> np.ndarray:
    """ControlNet 1.1 "red left, green top, blue front" from OpenCV camera-frame normals."""
    norm = np.linalg.norm(normal_cam, axis=2, keepdims=True)
    unit = np.where(norm > 1e-12, normal_cam / np.maximum(norm, 1e-12), 0.0)
    enc = -unit
    enc[~geom] = (0.0, 0.0, 1.0)
    return np.clip(np.rint((enc + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode_seg(labels: np.ndarray, label_names: tuple[str, ...]) -> np.ndarray:
    """Exact ADE20K palette colours, one per label, no anti-aliasing."""
    lut = np.array([SEG_PALETTE[name] for name in label_names], dtype=np.uint8)
    return lut[labels]


def person_bbox(person: np.ndarray) -> tuple[float, float, float, float]:
    """x, y, w, h of the person mask in pixels (zeros when nobody is in view)."""
    if not person.any():
        return 0.0, 0.0, 0.0, 0.0
    rows, cols = np.nonzero(person)
    return (float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1))


def encode_view(view: View) -> Encoded:
    """Every modality's image and the keypoints of one rendered view."""
    height, width = view.z.shape
    geom = np.isfinite(view.z)
    person = np.asarray(view.labels) == view.label_names.index("person") if "person" in view.label_names \
        else np.zeros_like(geom)
    depth, near, far = encode_depth(view.z)
    kp2d, kp_cam = keypoints_2d(view.camera, view.keypoints_world, view.z, view.embed_m)
    images = {"rgb": view.rgb, "pose": draw_openpose(kp2d, width, height), "depth": depth,
              "normal": encode_normal(view.normal_cam, geom), "seg": encode_seg(view.labels, view.label_names)}
    return Encoded(images=images, keypoints_2d=kp2d, keypoints_cam=kp_cam, bbox=person_bbox(person),
                   visible_fraction=float(np.mean(kp2d[:, 2] == 2)), depth_near_m=near, depth_far_m=far,
                   width=width, height=height)


# --------------------------------------------------------------------------- OpenPose


def _ellipse2poly(center: tuple[int, int], axes: tuple[int, int], angle: int,
                  arc_start: int = 0, arc_end: int = 360, delta: int = 1) -> np.ndarray:
    """numpy port of cv2.ellipse2Poly (integer overload), including its rounding and dedup."""
    while angle < 0:
        angle += 360
    while angle > 360:
        angle -= 360
    if arc_start > arc_end:
        arc_start, arc_end = arc_end, arc_start
    while arc_start < 0:
        arc_start += 360
        arc_end += 360
    while arc_end > 360:
        arc_end -= 360
        arc_start -= 360
    if arc_end - arc_start > 360:
        arc_start, arc_end = 0, 360
    alpha, beta = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    ang = np.minimum(np.arange(arc_start, arc_end + delta, delta), arc_end)
    ang = np.where(ang < 0, ang + 360, ang)
    rad = np.radians(ang.astype(float))
    x = axes[0] * np.cos(rad)
    y = axes[1] * np.sin(rad)
    px = np.rint(center[0] + x * alpha - y * beta).astype(np.int64)  # cvRound = round half to even
    py = np.rint(center[1] + x * beta + y * alpha).astype(np.int64)
    pts = np.stack([px, py], axis=1)
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) == 1:
        pts = np.array([center, center], dtype=np.int64)
    return pts


def draw_openpose(keypoints_2d: np.ndarray, width: int, height: int, stickwidth: int = 4) -> np.ndarray:
    """ControlNet / controlnet_aux ``draw_bodypose`` on a black canvas (pixel coordinates)."""
    kp = np.asarray(keypoints_2d, dtype=float).reshape(-1, 3)
    img = Image.new("RGB", (int(width), int(height)), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for (a, b), color in zip(OPENPOSE_LIMBS, OPENPOSE_COLORS):
        p1, p2 = kp[a - 1], kp[b - 1]
        if p1[2] <= 0 or p2[2] <= 0:
            continue
        # Same variable juggling as the annotator: X holds y values, Y holds x values.
        Y = np.array([p1[0], p2[0]])
        X = np.array([p1[1], p2[1]])
        mX, mY = float(np.mean(X)), float(np.mean(Y))
        length = float(((X[0] - X[1]) ** 2 + (Y[0] - Y[1]) ** 2) ** 0.5)
        angle = math.degrees(math.atan2(X[0] - X[1], Y[0] - Y[1]))
        poly = _ellipse2poly((int(mY), int(mX)), (int(length / 2), int(stickwidth)), int(angle), 0, 360, 1)
        fill = tuple(int(float(c) * 0.6) for c in color)
        draw.polygon([tuple(map(int, p)) for p in poly], fill=fill)
    canvas = np.asarray(img).copy()
    H, W = canvas.shape[:2]
    radius = 4
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    # Shape of cv2.circle(radius=4, thickness=-1): the midpoint-circle disc, d^2 <= r(r+1).
    disc = xx * xx + yy * yy <= radius * (radius + 1)
    for p, color in zip(kp, OPENPOSE_COLORS):
        if p[2] <= 0:
            continue
        cx, cy = int(p[0]), int(p[1])
        ys, xs = yy[disc] + cy, xx[disc] + cx
        ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        canvas[ys[ok], xs[ok]] = color
    return canvas


def openpose_json(keypoints_2d: np.ndarray, width: int, height: int) -> dict:
    """OpenPose keypoint JSON of one frame: flat x, y, c triples in pixels, 0, 0, 0 for a missing point."""
    kp = np.asarray(keypoints_2d, dtype=float).reshape(-1, 3)
    flat: list[float] = []
    for x, y, v in kp:
        flat += [round(float(x), 2), round(float(y), 2), 1.0] if v > 0 else [0.0, 0.0, 0.0]
    return {
        "people": [{
            "pose_keypoints_2d": flat,
            "face_keypoints_2d": None,
            "hand_left_keypoints_2d": None,
            "hand_right_keypoints_2d": None,
        }],
        "canvas_width": int(width),
        "canvas_height": int(height),
    }


# --------------------------------------------------------------------------- files and annotation


def rounded(array: Any) -> Any:
    """A numpy array as nested lists rounded to 6 decimals (JSON)."""
    return np.round(np.asarray(array, dtype=float), 6).tolist()


def save_png(array: np.ndarray, path: Path) -> None:
    """An 8-bit RGB image as PNG."""
    Image.fromarray(array, mode="RGB").save(path, format="PNG", compress_level=6)


def camera_block(camera: Any, view_index: int, focal_length_mm: float) -> dict[str, Any]:
    """The annotation's `camera` object."""
    return {
        "width": int(camera.width), "height": int(camera.height),
        "K": rounded(camera.K()), "R_w2c": rounded(camera.R_w2c()), "t_w2c": rounded(camera.t_w2c()),
        "azimuth_deg": float(camera.azimuth_deg), "elevation_deg": float(camera.elevation_deg),
        "distance_m": float(camera.distance_m), "focal_length_mm": float(focal_length_mm),
        "view_index": int(view_index), "target": [float(v) for v in camera.target],
    }


def write_sample(out: Path, job: dict[str, Any], batch_id: str, index: int, encoded: Encoded,
                 camera: dict[str, Any], pose: dict[str, Any]) -> dict[str, Any]:
    """Write one sample's modality files and annotation into the batch folder; return its manifest entry."""
    sid = contract.sample_id(index)
    files: dict[str, str] = {}
    for modality in job["render"]["modalities"]:
        rel = contract.modality_path(modality, sid)
        files[modality] = rel
        if modality == "openpose_json":
            document = openpose_json(encoded.keypoints_2d, encoded.width, encoded.height)
            (out / rel).write_bytes(contract.dumps(document))
        else:
            save_png(encoded.images[modality], out / rel)
    annotation = {
        "schema_version": contract.CONTRACT_VERSION,
        "batch_id": batch_id,
        "sample_id": sid,
        "index": index,
        "files": files,
        "camera": camera,
        "pose": pose,
        "persons": [{
            "instance_id": 0,
            "keypoints_2d": [[round(float(x), 2), round(float(y), 2), int(v)] for x, y, v in encoded.keypoints_2d],
            "keypoints_3d_cam": rounded(encoded.keypoints_cam),
            "bbox": [round(float(v), 2) for v in encoded.bbox],
            "visible_fraction": round(float(encoded.visible_fraction), 4),
        }],
        "depth_range_m": [round(float(encoded.depth_near_m), 4), round(float(encoded.depth_far_m), 4)],
    }
    (out / contract.annotation_path(sid)).write_bytes(contract.dumps(annotation))
    return {"sample_id": sid, "annotation": contract.annotation_path(sid), "files": files}


def conventions() -> dict[str, Any]:
    """The manifest's `conventions` block: what every encoding above means."""
    return {
        "keypoints": {"format": "coco18", "units": "pixels", "origin": "top-left",
                      "joints": list(COCO18_JOINTS), "limbs": [list(p) for p in OPENPOSE_LIMBS]},
        "visibility": "coco",
        "depth": {"encoding": "linear-normalised-per-sample", "bit_depth": 8, "channels": 3, "near": "white",
                  "background": 0},
        "normal": {"space": "camera", "encoding": "rgb=(n+1)/2*255", "red": "left", "green": "up",
                   "blue": "towards-camera", "background": [128, 128, 255]},
        "segmentation": {"palette": "ade20k", "labels": {k: list(v) for k, v in SEG_PALETTE.items()}},
        "camera": {"frame": "opencv", "world_frame": "z-up-right-handed", "units": "metres",
                   "extrinsics": "world-to-camera"},
    }
