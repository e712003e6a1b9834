"""One encoder for every renderer: the raw buffers of a rendered view -> the batch contract's files.

The synthetic generator (:mod:`pose_factory.producer.figure`) and the Blender path
(:mod:`pose_factory.producer.blender_render`) both hand over the same :class:`View`: camera z per pixel,
camera-space normals, a label per pixel, the shaded RGB and the 18 COCO joints in the world. Everything
that turns that into control maps, keypoints, the OpenPose JSON and the annotation lives here, so the two
renderers cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from pose_factory.core import contract
from pose_factory.core.fsutil import naming

if TYPE_CHECKING:
    from pose_factory.core.models import Job

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
# More ADE20K classes (the 150-class palette ControlNet's seg models use) for objects of a Blender scene,
# chosen with the object's custom property `pose_factory_class`; listed in a batch's conventions only
# when that batch uses them.
ADE20K_MORE: dict[str, tuple[int, int, int]] = {
    "building": (180, 120, 120), "tree": (4, 200, 3), "ceiling": (120, 120, 80), "road": (140, 140, 140),
    "bed": (204, 5, 255), "windowpane": (230, 230, 230), "grass": (4, 250, 7), "cabinet": (224, 5, 255),
    "sidewalk": (235, 255, 7), "earth": (120, 120, 70), "door": (8, 255, 51), "table": (255, 6, 82),
    "mountain": (143, 255, 140), "plant": (204, 255, 4), "curtain": (255, 51, 7), "chair": (204, 70, 3),
    "car": (0, 102, 200), "sofa": (11, 102, 255), "shelf": (255, 7, 71), "box": (0, 255, 20),
}
ADE20K = {**SEG_PALETTE, **ADE20K_MORE}

KEYPOINT_MODES = ("detector", "all")
# controlnet_aux detects at 512 px on the short side with stick width 4 and joint radius 4, then scales the map
# to the output size: sizes here scale with short side / DETECT_RESOLUTION.
DETECT_RESOLUTION = 512
BASE_STICK_WIDTH = 4
BASE_JOINT_RADIUS = 4
# Face points are reported only when their surface faces the camera: cos(angle between the point's outward
# direction from the head centre and the direction to the camera) above these values.
FACE_FACING_MIN_COS = {"nose": -0.17, "r_eye": 0.0, "l_eye": 0.0, "r_ear": -0.17, "l_ear": -0.17}
# The depth map's far end is at most this many times the subject's farthest depth: a far backdrop or a
# large ground plane must not flatten the subject (at 4 m the figure then spans about 70 grey levels).
DEPTH_FAR_FACTOR = 1.5
METRIC_DEPTH_SCALE = 1000.0  # depth_metric PNG units per metre (millimetres)

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


@dataclass(frozen=True)
class Options:
    """How a job wants its control maps drawn (job.render.keypoints / stick_scale)."""

    keypoints: str = "detector"
    stick_scale: float = 1.0

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> Options:
        """The options of a job (a Job, or an empty mapping for the defaults)."""
        render = job.get("render", {})
        return cls(keypoints=render.get("keypoints", "detector"), stick_scale=float(render.get("stick_scale", 1.0)))


@dataclass
class Encoded:
    """The files' contents and the per-person annotation of one view."""

    images: dict[str, np.ndarray]
    keypoints_2d: np.ndarray     # (18, 3) x, y, COCO v: every joint (the annotation)
    reported: np.ndarray         # (18, 3) what the pose map and OpenPose JSON show (detector rule or all)
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


def detector_keypoints(keypoints_2d: np.ndarray, keypoints_cam: np.ndarray) -> np.ndarray:
    """The joints an OpenPose / DWPose detector would report; the others become 0, 0, 0.

    Reported: joints inside the canvas that pass the depth test (v = 2), and of the face points only
    those whose surface faces the camera (a back view has no face, a profile only the near eye and ear).
    The head centre is taken as the midpoint of the ears, so the rule needs nothing but the 18 joints.
    """
    kp = np.array(keypoints_2d, dtype=float).reshape(-1, 3)
    out = np.where((kp[:, 2] == 2)[:, None], kp, 0.0)
    cam = np.asarray(keypoints_cam, dtype=float).reshape(-1, 3)
    index = {name: i for i, name in enumerate(COCO18_JOINTS)}
    head = 0.5 * (cam[index["r_ear"]] + cam[index["l_ear"]])
    for name, min_cos in FACE_FACING_MIN_COS.items():
        i = index[name]
        outward = cam[i] - head
        to_camera = -cam[i]
        norm = float(np.linalg.norm(outward) * np.linalg.norm(to_camera))
        if norm < 1e-12 or float(outward @ to_camera) / norm <= min_cos:
            out[i] = 0.0
    return out


def stick_sizes(width: int, height: int, stick_scale: float = 1.0) -> tuple[int, int]:
    """(stick width, joint radius) in pixels: controlnet_aux's 4 and 4 at 512 px, scaled to the short side."""
    scale = min(width, height) / DETECT_RESOLUTION * stick_scale
    return max(1, round(BASE_STICK_WIDTH * scale)), max(1, round(BASE_JOINT_RADIUS * scale))


def encode_depth(z: np.ndarray, subject: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """8-bit, 3-channel relative inverse depth (MiDaS / Depth Anything style, near = white) and [near, far].

    ``value = 255 * clip((1/z - 1/far) / (1/near - 1/far), 0, 1)``: near is the subject's nearest surface
    (the person; the whole image when nobody is in view), far the farthest surface but at most
    DEPTH_FAR_FACTOR x the subject's farthest; both rounded outwards to the millimetre. Nothing hit = 0.
    """
    geom = np.isfinite(z) & (z > 0)
    d8 = np.zeros(z.shape, dtype=np.uint8)
    if not geom.any():
        return np.repeat(d8[:, :, None], 3, axis=2), 0.0, 0.0
    focus = geom & subject if subject is not None and (geom & subject).any() else geom
    near = max(math.floor(float(z[focus].min()) * 1000.0) / 1000.0, 0.001)
    far = math.ceil(min(float(z[geom].max()), DEPTH_FAR_FACTOR * float(z[focus].max())) * 1000.0) / 1000.0
    far = max(far, near + 0.001)
    inv = (1.0 / z[geom] - 1.0 / far) / (1.0 / near - 1.0 / far)
    d8[geom] = np.clip(np.rint(255.0 * inv), 0, 255).astype(np.uint8)
    return np.repeat(d8[:, :, None], 3, axis=2), near, far


def metric_depth(z: np.ndarray) -> np.ndarray:
    """Camera z as 16-bit millimetres (0 = nothing hit, clipped at 65.535 m): the lossless depth_metric."""
    out = np.zeros(z.shape, dtype=np.uint16)
    geom = np.isfinite(z) & (z > 0)
    out[geom] = np.clip(np.rint(z[geom] * METRIC_DEPTH_SCALE), 1, 65535).astype(np.uint16)
    return out


def encode_normal(normal_cam: np.ndarray, geom: np.ndarray) -> np.ndarray:
    """ControlNet 1.1 "red left, green top, blue front" from OpenCV camera-frame normals."""
    out = np.empty(geom.shape + (3,), dtype=np.uint8)
    out[:] = (128, 128, 255)  # "facing the camera" where nothing was hit
    n = normal_cam[geom]
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    unit = np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), 0.0)
    out[geom] = np.clip(np.rint((1.0 - unit) * 127.5), 0, 255).astype(np.uint8)
    return out


def encode_seg(labels: np.ndarray, label_names: tuple[str, ...]) -> np.ndarray:
    """Exact ADE20K palette colours, one per label, no anti-aliasing."""
    lut = np.array([ADE20K[name] for name in label_names], dtype=np.uint8)
    return lut[labels]


def person_bbox(person: np.ndarray) -> tuple[float, float, float, float]:
    """x, y, w, h of the person mask in pixels (zeros when nobody is in view)."""
    if not person.any():
        return 0.0, 0.0, 0.0, 0.0
    rows, cols = np.nonzero(person)
    return (float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1))


def encode_view(view: View, options: Options | None = None) -> Encoded:
    """Every modality's image and the keypoints of one rendered view."""
    options = options or Options()
    height, width = view.z.shape
    geom = np.isfinite(view.z)
    person = np.asarray(view.labels) == view.label_names.index("person") if "person" in view.label_names \
        else np.zeros_like(geom)
    depth, near, far = encode_depth(view.z, person)
    kp2d, kp_cam = keypoints_2d(view.camera, view.keypoints_world, view.z, view.embed_m)
    reported = detector_keypoints(kp2d, kp_cam) if options.keypoints == "detector" else kp2d.copy()
    stick, radius = stick_sizes(width, height, options.stick_scale)
    images = {"rgb": view.rgb, "pose": draw_openpose(reported, width, height, stick, radius), "depth": depth,
              "depth_metric": metric_depth(view.z),
              "normal": encode_normal(view.normal_cam, geom), "seg": encode_seg(view.labels, view.label_names)}
    return Encoded(images=images, keypoints_2d=kp2d, reported=reported, keypoints_cam=kp_cam,
                   bbox=person_bbox(person),
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


def circle_disc(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(dy, dx) offsets of the pixels ``cv2.circle(img, c, radius, colour, thickness=-1)`` fills.

    OpenCV fills a thin (thickness < 0, LINE_8) circle with the midpoint circle algorithm: for every step
    (dx, dy) it draws the rows c.y +- dy from c.x - dx to c.x + dx and the rows c.y +- dx from c.x - dy to
    c.x + dy. This follows the same integer steps.
    """
    spans: dict[int, int] = {}
    err, dx, dy, plus, minus = 0, radius, 0, 1, 2 * radius - 1
    while dx >= dy:
        for row, half in ((dy, dx), (-dy, dx), (dx, dy), (-dx, dy)):
            spans[row] = max(spans.get(row, -1), half)
        dy += 1
        err += plus
        plus += 2
        mask = -1 if err > 0 else 0  # (err <= 0) - 1 in C
        err -= minus & mask
        dx += mask
        minus -= mask & 2
    rows = [(row, col) for row, half in spans.items() for col in range(-half, half + 1)]
    offsets = np.array(rows, dtype=np.int64)
    return offsets[:, 0], offsets[:, 1]


def draw_openpose(keypoints_2d: np.ndarray, width: int, height: int, stickwidth: int = BASE_STICK_WIDTH,
                  radius: int = BASE_JOINT_RADIUS) -> np.ndarray:
    """ControlNet / controlnet_aux ``draw_bodypose`` on a black canvas (pixel coordinates).

    Limbs are cv2.ellipse2Poly polygons filled with colour x 0.6, joints cv2.circle discs; points with
    v <= 0 are not drawn (nor their limbs).
    """
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
    dys, dxs = circle_disc(int(radius))
    for p, color in zip(kp, OPENPOSE_COLORS):
        if p[2] <= 0:
            continue
        cx, cy = int(p[0]), int(p[1])
        ys, xs = dys + cy, dxs + cx
        ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        canvas[ys[ok], xs[ok]] = color
    return canvas


def openpose_frame(keypoints_2d: np.ndarray, width: int, height: int) -> dict:
    """One OpenPose frame: flat x, y, c triples in pixels, c = 1.0 present, 0, 0, 0 for a missing point."""
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


def openpose_json(keypoints_2d: np.ndarray, width: int, height: int) -> list[dict]:
    """The openpose_json file: a ComfyUI POSE_KEYPOINT value, i.e. a list of frames (here one).

    comfyui_controlnet_aux's "Save Pose Keypoints" writes exactly this list (it reads pose_kps[0]), its
    renderers take a list or one frame, and JSON loaders pass the file's content on unchanged: a list of
    one frame loads everywhere without conversion.
    """
    return [openpose_frame(keypoints_2d, width, height)]


# --------------------------------------------------------------------------- files and annotation


def rounded(array: Any) -> Any:
    """A numpy array as nested lists rounded to 6 decimals (JSON)."""
    return np.round(np.asarray(array, dtype=float), 6).tolist()


def save_png(array: np.ndarray, path: Path) -> None:
    """An 8-bit RGB image, or a 16-bit greyscale one (uint16), as PNG."""
    image = Image.fromarray(array) if array.dtype == np.uint16 else Image.fromarray(array, mode="RGB")
    with naming(path):  # PIL's close() on a full disk names no file
        image.save(path, format="PNG", compress_level=6)


def camera_block(camera: Any, view_index: int, focal_length_mm: float) -> dict[str, Any]:
    """The annotation's `camera` object."""
    return {
        "width": int(camera.width), "height": int(camera.height),
        "K": rounded(camera.K()), "R_w2c": rounded(camera.R_w2c()), "t_w2c": rounded(camera.t_w2c()),
        "azimuth_deg": float(camera.azimuth_deg), "elevation_deg": float(camera.elevation_deg),
        "distance_m": float(camera.distance_m), "focal_length_mm": float(focal_length_mm),
        "view_index": int(view_index), "target": [float(v) for v in camera.target],
    }


def write_sample(out: Path, job: Job, batch_id: str, index: int, encoded: Encoded,
                 camera: dict[str, Any], pose: dict[str, Any], tags: list[str] | None = None) -> dict[str, Any]:
    """Write one sample's modality files and annotation into the batch folder; return its manifest entry."""
    sid = contract.sample_id(index)
    files: dict[str, str] = {}
    for modality in job["render"]["modalities"]:
        rel = contract.modality_path(modality, sid)
        files[modality] = rel
        if modality == "openpose_json":
            document = openpose_json(encoded.reported, encoded.width, encoded.height)
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
    if tags:
        annotation["tags"] = list(tags)
    (out / contract.annotation_path(sid)).write_bytes(contract.dumps(annotation))
    return {"sample_id": sid, "annotation": contract.annotation_path(sid), "files": files}


def conventions(job: Job | None = None) -> dict[str, Any]:
    """The manifest's `conventions` block: what every encoding above means."""
    spec: Mapping[str, Any] = job or {}
    options = Options.from_job(spec)
    size = spec.get("image", {"width": DETECT_RESOLUTION, "height": DETECT_RESOLUTION})
    stick, radius = stick_sizes(size["width"], size["height"], options.stick_scale)
    block = {
        "keypoints": {"format": "coco18", "units": "pixels", "origin": "top-left",
                      "joints": list(COCO18_JOINTS), "limbs": [list(p) for p in OPENPOSE_LIMBS]},
        "visibility": "coco",
        "depth": {"encoding": "inverse-normalised-per-sample", "bit_depth": 8, "channels": 3, "near": "white",
                  "background": 0, "far_factor": DEPTH_FAR_FACTOR},
        "openpose": {"keypoints": options.keypoints, "stick_width": stick, "joint_radius": radius,
                     "detect_resolution": DETECT_RESOLUTION, "file": "pose-keypoint-list"},
        "normal": {"space": "camera", "encoding": "rgb=(n+1)/2*255", "red": "left", "green": "up",
                   "blue": "towards-camera", "background": [128, 128, 255]},
        "segmentation": {"palette": "ade20k", "labels": {k: list(v) for k, v in (
            ADE20K if spec.get("scene", {}).get("blend_file") else SEG_PALETTE).items()}},
        "camera": {"frame": "opencv", "world_frame": "z-up-right-handed", "units": "metres",
                   "extrinsics": "world-to-camera"},
    }
    if "depth_metric" in spec.get("render", {}).get("modalities", ()):
        block["depth_metric"] = {"encoding": "camera-z", "bit_depth": 16, "channels": 1,
                                 "units_per_metre": METRIC_DEPTH_SCALE, "background": 0}
    return block
