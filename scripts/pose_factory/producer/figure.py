"""Synthetic posed human figure: a numpy + Pillow stand-in for a Blender render.

One call to :func:`make_pose` builds a procedurally posed skeleton; :func:`render_view`
ray-casts a body made of capsules and ellipsoids around that skeleton (ribcage, waist,
pelvis and glutes, neck and trapezius, hands with palm, fingers and thumb, shoes with
heel, instep and toe box) into z, normal and label buffers plus a shaded RGB preview;
:mod:`pose_factory.producer.encode` (shared with the Blender renderer) turns them into
the ControlNet control maps, all from the same z-buffer so they agree pixel for pixel.
:func:`render` does both. :func:`frame_camera` aims a view at the figure's bounding box
and backs off until it fits the image with a margin, at any aspect ratio.

Conventions
-----------
World frame
    Metres, right-handed, Z up. The floor is the plane z = 0 (a finite 8 m x 8 m
    stage centred on the origin; beyond it is sky). The figure's pelvis stands
    above the origin and the figure FACES -Y, so its left side is at +X and its
    right side at -X. The lowest point of the body (normally a sole) touches z = 0.
Camera
    ``Camera(azimuth_deg, elevation_deg, distance_m, ...)`` sits at
    ``target + distance * (sin(az) cos(el), -cos(az) cos(el), sin(el))`` and looks
    at ``target`` (the centre of the figure's bounding box, see frame_camera).
    Azimuth 0 is therefore in front of the figure (on -Y), azimuth 90 on the
    figure's left (+X), 180 behind it. Elevation is above the horizon.
    Extrinsics are world-to-camera in the OpenCV/BOP convention (x right, y down,
    z forward): ``p_cam = R_w2c @ p_world + t_w2c``.
    Intrinsics: square pixels, ``f_px = focal_mm / sensor_mm * max(width, height)``
    (Blender's "Auto" sensor fit), principal point at the image centre
    ``(width/2, height/2)``. Pixel (row i, column j) covers [j, j+1) x [i, i+1), so
    its centre is (j + 0.5, i + 0.5) and a keypoint at (x, y) lies in pixel
    (int(y), int(x)).
Depth (8-bit, 3 equal channels), see encode.encode_depth
    Relative inverse depth like MiDaS / Depth Anything, NEAR = WHITE:
    ``value = 255 * clip((1/z - 1/far) / (1/near - 1/far), 0, 1)`` with near the
    person's nearest surface and far the farthest surface, at most 1.5 x the person's
    farthest. Pixels with no geometry (sky) are 0. ``Render.depth_near_m`` /
    ``depth_far_m`` record the range; ``Render.depth_metric`` is camera z in mm (uint16).
Normal (8-bit RGB)
    Camera-space unit normals encoded as ``(c + 1) / 2 * 255`` in ControlNet 1.1's
    wording "blue is front, red is left, green is top": R = image-left component
    (-x_cv), G = image-up component (-y_cv), B = towards-the-camera component
    (-z_cv). A surface facing the camera is (128, 128, 255). Pixels with no
    geometry (sky) get that same flat "facing the camera" colour (128, 128, 255),
    which is what ControlNet's MiDaS-normal annotator writes for background.
Segmentation
    Exact ADE20K colours from :data:`SEG_PALETTE`, no anti-aliasing: person for
    every body primitive, floor for the stage, sky where nothing is hit. "wall" is
    in the palette for downstream legends but this scene has no wall.
Keypoints
    COCO-18 (OpenPose) order, (x, y, v) with x, y in pixels from the top-left and
    COCO visibility: 0 = not labelled (behind the camera or projecting outside
    the canvas; x = y = 0), 1 = inside the canvas but occluded, 2 = visible. The
    occlusion test compares the joint's camera z with the rendered z-buffer at its
    pixel; because joint centres sit inside the flesh, the tolerance is the
    joint's embedding depth (the radius of the body part around it, 0 for the
    face points) plus 2 cm. The pose map shows ``Render.reported_2d``: by default
    only what a detector would report (encode.detector_keypoints).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pose_factory.producer import encode
from pose_factory.producer.encode import (
    COCO18_JOINTS,
    OPENPOSE_COLORS,
    OPENPOSE_LIMBS,
    SEG_PALETTE,
    draw_openpose,
    openpose_json,
)

__all__ = [
    "COCO18_JOINTS",
    "OPENPOSE_COLORS",
    "OPENPOSE_LIMBS",
    "SEG_PALETTE",
    "POSE_SETS",
    "RIGS",
    "JOINT_LIMITS_DEG",
    "Camera",
    "Pose",
    "Render",
    "make_pose",
    "render",
    "draw_openpose",
    "openpose_json",
    "render_view",
    "embed_depth",
    "body_bounds",
    "frame_camera",
    "anatomy_problems",
]

POSE_SETS: tuple[str, ...] = ("walk-cycle", "run-cycle", "random-pose")

# Frames per cycle: ~1.1 s walking and ~0.7 s running stride at 30 fps.
_FRAMES_PER_CYCLE = {"walk-cycle": 32, "run-cycle": 20}

# Anatomical range of motion (degrees) that every generated angle respects.
# Flexion is forward swing of the limb, knee flexion folds the shank backwards,
# elbow flexion folds the forearm forwards, ankle flexion > 0 is dorsiflexion.
JOINT_LIMITS_DEG: dict[str, tuple[float, float]] = {
    "hip_flex": (-30.0, 120.0),
    "hip_abd": (-20.0, 45.0),
    "knee_flex": (0.0, 145.0),
    "ankle_flex": (-45.0, 25.0),
    "shoulder_flex": (-60.0, 180.0),
    "shoulder_abd": (-10.0, 180.0),
    "elbow_flex": (0.0, 145.0),
    "spine_lean": (-25.0, 70.0),
    "spine_side": (-30.0, 30.0),
    "spine_twist": (-45.0, 45.0),
    "head_yaw": (-75.0, 75.0),
    "head_pitch": (-45.0, 55.0),
    "root_yaw": (-180.0, 180.0),
}


def _make_rig(height: float, *, shoulder_half: float, hip_half: float, girth: float,
              colors: dict[str, tuple[int, int, int]]) -> dict:
    # Segment lengths follow Drillis & Contini's fractions of stature, so the two
    # rigs differ in build (shoulder/hip width, girth) and not just in scale.
    h = height
    g = girth * h / 1.78
    return {
        "height_m": h,
        "lengths_m": {
            "thigh": 0.245 * h, "shank": 0.246 * h, "ankle_height": 0.039 * h,
            "foot": 0.152 * h, "upper_arm": 0.186 * h, "forearm": 0.146 * h,
            "hand": 0.085 * h, "spine_to_shoulder": 0.288 * h,
            "spine_root": 0.02 * h, "neck": 0.05 * h, "head_center": 0.065 * h,
            "shoulder_half_width": shoulder_half * h, "hip_half_width": hip_half * h,
        },
        "radii_m": {
            "head": (0.075 * h / 1.78, 0.096 * h / 1.78, 0.115 * h / 1.78),
            "neck": 0.043 * g, "chest": (0.15 * g, 0.1 * g, 0.165 * g),
            "abdomen": (0.125 * g, 0.085 * g), "pelvis": (0.052 * h + 0.075 * g, 0.1 * g, 0.11 * g),
            "trapezius": 0.042 * g, "deltoid": 0.056 * g, "glute": (0.07 * g, 0.06 * g, 0.08 * g),
            "palm": (0.042 * h / 1.78, 0.015 * h / 1.78, 0.048 * h / 1.78),
            "fingers": (0.038 * h / 1.78, 0.012 * h / 1.78, 0.042 * h / 1.78), "thumb": 0.0105 * h / 1.78,
            "heel": 0.036 * g, "toes": (0.043 * g, 0.022 * g, 0.04 * g),
            "shoulder_bar": 0.052 * g, "upper_arm": 0.045 * g, "forearm": 0.037 * g,
            "hand": 0.03 * g, "thigh": 0.072 * g, "shank": 0.052 * g, "foot": 0.035 * g,
        },
        "colors": colors,
    }


RIGS: dict[str, dict] = {
    "mannequin-a": _make_rig(
        1.78, shoulder_half=0.102, hip_half=0.052, girth=1.0,
        colors={"skin": (222, 176, 146), "hair": (62, 42, 28), "shirt": (58, 96, 168),
                "trousers": (52, 54, 64), "shoes": (34, 30, 30)}),
    "mannequin-b": _make_rig(
        1.62, shoulder_half=0.094, hip_half=0.058, girth=0.92,
        colors={"skin": (196, 142, 112), "hair": (28, 20, 16), "shirt": (176, 62, 72),
                "trousers": (44, 58, 92), "shoes": (240, 240, 236)}),
}


# --------------------------------------------------------------------------- camera


@dataclass(frozen=True)
class Camera:
    azimuth_deg: float
    elevation_deg: float
    distance_m: float
    focal_mm: float
    width: int
    height: int
    sensor_mm: float = 36.0
    target: tuple[float, float, float] = (0.0, 0.0, 0.9)

    def position(self) -> np.ndarray:
        az, el = math.radians(self.azimuth_deg), math.radians(self.elevation_deg)
        d = np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el)])
        return np.asarray(self.target, dtype=float) + self.distance_m * d

    def K(self) -> np.ndarray:
        f = self.focal_mm / self.sensor_mm * max(self.width, self.height)
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def R_w2c(self) -> np.ndarray:
        fwd = np.asarray(self.target, dtype=float) - self.position()
        fwd /= np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        if np.linalg.norm(right) < 1e-6:
            # Looking straight up/down: keep image-up along world +Y (the figure's back).
            right = np.cross(fwd, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        return np.stack([right, down, fwd])

    def t_w2c(self) -> np.ndarray:
        return -self.R_w2c() @ self.position()

    def project(self, points_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(points_world, dtype=float).reshape(-1, 3)
        pc = p @ self.R_w2c().T + self.t_w2c()
        z = pc[:, 2]
        k = self.K()
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([k[0, 0] * pc[:, 0] / z + k[0, 2], k[1, 1] * pc[:, 1] / z + k[1, 2]], axis=1)
        return uv, z


# Fraction of the image's short side kept clear around the figure's bounding box when framing.
FRAME_MARGIN = 0.05


def frame_camera(lo: np.ndarray, hi: np.ndarray, azimuth_deg: float, elevation_deg: float, distance_m: float,
                 focal_mm: float, width: int, height: int, sensor_mm: float = 36.0,
                 margin: float = FRAME_MARGIN) -> Camera:
    """The camera of one view, aimed at the centre of the box [lo, hi] and moved back as far as needed.

    The job's distance is a minimum: when the box (all 8 corners) would not fit inside the image with
    `margin` x the short side clear on every edge, the camera moves back along its view direction until it
    does, so every aspect ratio shows the whole figure.
    """
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    target = 0.5 * (lo + hi)
    probe = Camera(azimuth_deg, elevation_deg, 1.0, focal_mm, width, height, sensor_mm, tuple(target))
    k, rot = probe.K(), probe.R_w2c()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    q = (corners - target) @ rot.T  # camera-frame offsets from the target; the target sits at z = distance
    clear = margin * min(width, height)
    half_w, half_h = max(width / 2.0 - clear, 1.0), max(height / 2.0 - clear, 1.0)
    need = np.maximum(k[0, 0] * np.abs(q[:, 0]) / half_w - q[:, 2], k[1, 1] * np.abs(q[:, 1]) / half_h - q[:, 2])
    distance = max(float(distance_m), float(need.max()), float((-q[:, 2]).max()) + 0.1)
    return Camera(azimuth_deg, elevation_deg, distance, focal_mm, width, height, sensor_mm,
                  (float(target[0]), float(target[1]), float(target[2])))


# --------------------------------------------------------------------------- poses


@dataclass
class Pose:
    pose_set: str
    rig: str
    phase: float
    joint_angles_deg: dict[str, float]
    joints_world: dict[str, np.ndarray]


def _rx(a: float) -> np.ndarray:
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _bump(x: float, centre: float, width: float) -> float:
    d = (x - centre + 0.5) % 1.0 - 0.5  # wrap so the bump is periodic in phase
    return math.exp(-0.5 * (d / width) ** 2)


def _cycle_angles(kind: str, phase: float, style: dict[str, float]) -> dict[str, float]:
    """Sagittal gait curves; the left side runs half a cycle behind the right."""
    a: dict[str, float] = {}
    s, arm = style["stride"], style["arm"]
    for side, ph in (("r", phase), ("l", (phase + 0.5) % 1.0)):
        c = math.cos(2 * math.pi * ph)
        if kind == "walk-cycle":
            # Heel strike at ph=0 (hip flexed, knee ~straight), toe-off near 0.6, swing-knee peak ~0.72.
            a[f"hip_flex_{side}"] = s * (7.0 + 19.0 * c)
            a[f"knee_flex_{side}"] = 3.0 + s * (14.0 * _bump(ph, 0.12, 0.06) + 58.0 * _bump(ph, 0.72, 0.09))
            a[f"ankle_flex_{side}"] = 4.0 - 18.0 * _bump(ph, 0.6, 0.05)
            a[f"shoulder_flex_{side}"] = -arm * 18.0 * c
            a[f"elbow_flex_{side}"] = 12.0 + arm * 12.0 * (1.0 - c) / 2.0
            a[f"shoulder_abd_{side}"] = 8.0
        else:
            # Shorter stance (~40 %), deep swing-knee fold, arms bent ~90 degrees.
            a[f"hip_flex_{side}"] = s * (14.0 + 31.0 * c)
            a[f"knee_flex_{side}"] = 12.0 + s * (30.0 * _bump(ph, 0.15, 0.07) + 95.0 * _bump(ph, 0.66, 0.12))
            a[f"ankle_flex_{side}"] = 6.0 - 28.0 * _bump(ph, 0.4, 0.06)
            a[f"shoulder_flex_{side}"] = -arm * 38.0 * c
            a[f"elbow_flex_{side}"] = 88.0 + arm * 14.0 * (1.0 - c) / 2.0
            a[f"shoulder_abd_{side}"] = 12.0
        a[f"hip_abd_{side}"] = 2.0
    c = math.cos(2 * math.pi * phase)
    lean = 4.0 if kind == "walk-cycle" else 11.0
    a["spine_lean"] = lean + style["lean"]
    a["spine_side"] = 0.0
    a["spine_twist"] = (5.0 if kind == "walk-cycle" else 9.0) * arm * c
    a["head_yaw"] = style["head_yaw"]
    a["head_pitch"] = style["head_pitch"] - 0.5 * a["spine_lean"]  # keep the gaze roughly level
    a["root_yaw"] = 0.0
    return a


# Ranges random-pose draws from (inside JOINT_LIMITS_DEG). The support leg keeps a standing range so the
# body rests on a foot; the free leg, arms, spine and head use most of their anatomical range.
RANDOM_POSE_RANGES_DEG: dict[str, tuple[float, float]] = {
    "hip_flex_support": (-15.0, 30.0), "hip_abd_support": (-5.0, 15.0), "knee_flex_support": (0.0, 35.0),
    "hip_flex_free": (-20.0, 105.0), "hip_abd_free": (-5.0, 40.0), "knee_flex_free": (0.0, 125.0),
    "ankle_flex": (-25.0, 15.0), "shoulder_flex": (-40.0, 170.0), "shoulder_abd": (0.0, 150.0),
    "elbow_flex": (0.0, 140.0), "spine_lean": (-10.0, 35.0), "spine_side": (-15.0, 15.0),
    "spine_twist": (-30.0, 30.0), "head_yaw": (-60.0, 60.0), "head_pitch": (-25.0, 35.0), "root_yaw": (-20.0, 20.0),
}
# Straight-leg raise stops at about 80 degrees (hamstrings): hip flexion beyond it needs a bent knee.
HAMSTRING_REACH_DEG = 80.0
# Raising the arm forward and sideways at once cannot exceed a total elevation of about 180 degrees.
ARM_ELEVATION_MAX_DEG = 180.0


def anatomy_problems(angles: dict[str, float]) -> list[str]:
    """Why a set of joint angles is not anatomically possible (empty when it is): limits and couplings."""
    found = []
    for name, value in angles.items():
        key = name[:-2] if name[-2:] in ("_l", "_r") else name
        lo, hi = JOINT_LIMITS_DEG[key]
        if not lo - 1e-9 <= value <= hi + 1e-9:
            found.append(f"{name} {value:.1f} outside [{lo}, {hi}]")
    for side in ("r", "l"):
        if angles[f"hip_flex_{side}"] > HAMSTRING_REACH_DEG + angles[f"knee_flex_{side}"] + 1e-9:
            found.append(f"hip_flex_{side} beyond the hamstring reach for knee_flex_{side}")
        if math.hypot(angles[f"shoulder_flex_{side}"], angles[f"shoulder_abd_{side}"]) > ARM_ELEVATION_MAX_DEG + 1e-9:
            found.append(f"shoulder_{side} raised beyond {ARM_ELEVATION_MAX_DEG:.0f} degrees in total")
    return found


def _random_angles(rng: np.random.Generator) -> dict[str, float]:
    R = RANDOM_POSE_RANGES_DEG
    support_left = bool(rng.integers(2))
    a: dict[str, float] = {}
    for side in ("r", "l"):
        role = "support" if (side == "l") == support_left else "free"
        a[f"hip_flex_{side}"] = rng.uniform(*R[f"hip_flex_{role}"])
        a[f"hip_abd_{side}"] = rng.uniform(*R[f"hip_abd_{role}"])
        a[f"knee_flex_{side}"] = rng.uniform(*R[f"knee_flex_{role}"])
        # Couplings: bend the knee as far as a high leg raise needs; scale a too-high arm back onto the limit.
        a[f"knee_flex_{side}"] = max(a[f"knee_flex_{side}"], a[f"hip_flex_{side}"] - HAMSTRING_REACH_DEG)
        a[f"ankle_flex_{side}"] = rng.uniform(*R["ankle_flex"])
        flex, abd = rng.uniform(*R["shoulder_flex"]), rng.uniform(*R["shoulder_abd"])
        total = math.hypot(flex, abd)
        if total > ARM_ELEVATION_MAX_DEG:
            flex, abd = flex * ARM_ELEVATION_MAX_DEG / total, abd * ARM_ELEVATION_MAX_DEG / total
        a[f"shoulder_flex_{side}"], a[f"shoulder_abd_{side}"] = flex, abd
        a[f"elbow_flex_{side}"] = rng.uniform(*R["elbow_flex"])
    for name in ("spine_lean", "spine_side", "spine_twist", "head_yaw", "head_pitch", "root_yaw"):
        a[name] = rng.uniform(*R[name])
    return a


def _clamp_to_limits(angles: dict[str, float]) -> dict[str, float]:
    out = {}
    for name, value in angles.items():
        key = name[:-2] if name[-2:] in ("_l", "_r") else name
        lo, hi = JOINT_LIMITS_DEG[key]
        out[name] = float(min(max(value, lo), hi))
    return out


def _skeleton(rig: dict, a: dict[str, float]) -> dict[str, np.ndarray]:
    """Forward kinematics in the body frame (x = figure's right, y = forward, z = up)."""
    L = rig["lengths_m"]
    rh = rig["radii_m"]["head"]
    j: dict[str, np.ndarray] = {}
    root = np.zeros(3)  # hip-joint midpoint
    j["pelvis"] = root
    sign = {"r": 1.0, "l": -1.0}  # +x is the figure's right in the body frame

    for side in ("r", "l"):
        hip = root + np.array([sign[side] * L["hip_half_width"], 0.0, 0.0])
        # Abduction moves the limb away from the midline: +x for right, -x for left.
        r_thigh = _rx(a[f"hip_flex_{side}"]) @ _ry(-sign[side] * a[f"hip_abd_{side}"])
        knee = hip + r_thigh @ np.array([0.0, 0.0, -L["thigh"]])
        r_shank = r_thigh @ _rx(-a[f"knee_flex_{side}"])
        ankle = knee + r_shank @ np.array([0.0, 0.0, -L["shank"]])
        r_foot = r_shank @ _rx(a[f"ankle_flex_{side}"])
        sole = L["ankle_height"] - rig["radii_m"]["foot"]
        j[f"{side}_hip"], j[f"{side}_knee"], j[f"{side}_ankle"] = hip, knee, ankle
        j[f"{side}_heel"] = ankle + r_foot @ np.array([0.0, -0.22 * L["foot"], -sole])
        j[f"{side}_toe"] = ankle + r_foot @ np.array([0.0, 0.74 * L["foot"], -sole])
        # Points that orient the shoe: the foot's outer side (for its frame) and the ball of the foot.
        j[f"{side}_foot_side"] = ankle + r_foot @ np.array([sign[side] * 0.05, 0.0, 0.0])
        j[f"{side}_ball"] = ankle + r_foot @ np.array([0.0, 0.5 * L["foot"], -sole + 0.004])

    spine_base = root + np.array([0.0, 0.0, L["spine_root"]])
    r_spine = _rz(a["spine_twist"]) @ _rx(-a["spine_lean"]) @ _ry(a["spine_side"])
    j["spine_base"] = spine_base
    j["chest"] = spine_base + r_spine @ np.array([0.0, 0.0, 0.6 * L["spine_to_shoulder"]])
    shoulder_z = L["spine_to_shoulder"] - L["spine_root"]
    for side in ("r", "l"):
        sh = spine_base + r_spine @ np.array([sign[side] * L["shoulder_half_width"], 0.0, shoulder_z])
        r_up = r_spine @ _rx(a[f"shoulder_flex_{side}"]) @ _ry(-sign[side] * a[f"shoulder_abd_{side}"])
        elbow = sh + r_up @ np.array([0.0, 0.0, -L["upper_arm"]])
        r_fore = r_up @ _rx(a[f"elbow_flex_{side}"])
        wrist = elbow + r_fore @ np.array([0.0, 0.0, -L["forearm"]])
        j[f"{side}_shoulder"], j[f"{side}_elbow"], j[f"{side}_wrist"] = sh, elbow, wrist
        j[f"{side}_hand"] = wrist + r_fore @ np.array([0.0, 0.0, -L["hand"]])
        # Relaxed hand: palm towards the body, thumb forward (+y), fingers along the forearm.
        j[f"{side}_thumb_dir"] = wrist + r_fore @ np.array([0.0, 0.05, 0.0])
        j[f"{side}_thumb_base"] = wrist + r_fore @ np.array([-sign[side] * 0.004, 0.022, -0.025 * L["hand"] / 0.151])
        j[f"{side}_thumb_tip"] = wrist + r_fore @ np.array([-sign[side] * 0.012, 0.045,
                                                            -0.085 * L["hand"] / 0.151])
    j["neck"] = 0.5 * (j["r_shoulder"] + j["l_shoulder"])
    j["neck_top"] = spine_base + r_spine @ np.array([0.0, 0.01, shoulder_z + L["neck"]])

    r_head = r_spine @ _rz(a["head_yaw"]) @ _rx(-a["head_pitch"])
    hc = j["neck_top"] + r_head @ np.array([0.0, 0.012, L["head_center"]])
    j["head_center"] = hc
    j["head_top"] = hc + r_head @ np.array([0.0, 0.0, rh[2]])

    def on_head(x: float, z: float) -> np.ndarray:
        # Face points lie on the front of the head ellipsoid so the depth test sees them.
        y = rh[1] * math.sqrt(max(0.0, 1.0 - (x / rh[0]) ** 2 - (z / rh[2]) ** 2))
        return hc + r_head @ np.array([x, y, z])

    j["nose"] = on_head(0.0, -0.01 * rh[2] / 0.115) + r_head @ np.array([0.0, 0.016, 0.0])
    for side in ("r", "l"):
        j[f"{side}_eye"] = on_head(sign[side] * 0.032 * rh[0] / 0.075, 0.022 * rh[2] / 0.115)
        j[f"{side}_ear"] = hc + r_head @ np.array([sign[side] * rh[0], -0.006, 0.0])
    return j


def make_pose(pose_set: str, rig: str, seed: int, index: int, cycle_position: float | None = None) -> Pose:
    """The posed skeleton of one sample: frame `index` of a cycle (or the index-th random pose).

    `cycle_position` in [0, 1) places a cycle pose by the fraction of the cycle instead of the frame
    (the seeded start phase still applies); random poses ignore it.
    """
    if pose_set not in POSE_SETS:
        raise ValueError(f"unknown pose_set {pose_set!r}; allowed: {', '.join(POSE_SETS)}")
    if rig not in RIGS:
        raise ValueError(f"unknown rig {rig!r}; allowed: {', '.join(sorted(RIGS))}")
    spec = RIGS[rig]
    if pose_set == "random-pose":
        phase = 0.0
        angles = _random_angles(np.random.default_rng((int(seed), int(index))))
    else:
        # The seed picks a gait "style" and a starting phase; index walks along the cycle.
        rng = np.random.default_rng((int(seed), POSE_SETS.index(pose_set), 0x5EED))
        style = {"phase0": rng.uniform(0, 1), "stride": rng.uniform(0.85, 1.15),
                 "arm": rng.uniform(0.8, 1.2), "lean": rng.uniform(-2, 2),
                 "head_yaw": rng.uniform(-12, 12), "head_pitch": rng.uniform(-4, 8)}
        step = cycle_position if cycle_position is not None else index / _FRAMES_PER_CYCLE[pose_set]
        phase = float((style["phase0"] + step) % 1.0)
        angles = _cycle_angles(pose_set, phase, style)
    angles = _clamp_to_limits(angles)

    body = _skeleton(spec, angles)
    # Body frame (x right, y forward, z up) -> world: the figure faces -Y, its right is -X.
    to_world = _rz(angles["root_yaw"]) @ np.diag([-1.0, -1.0, 1.0])
    pose = Pose(pose_set=pose_set, rig=rig, phase=phase, joint_angles_deg=angles,
                joints_world={n: to_world @ p for n, p in body.items()})
    # Stand on the floor: the lowest point of the body (normally a heel or the toes) touches z = 0.
    lift = np.array([0.0, 0.0, -float(body_bounds(pose)[0][2])])
    pose.joints_world = {n: p + lift for n, p in pose.joints_world.items()}
    return pose


# --------------------------------------------------------------------------- rendering


@dataclass
class Render:
    rgb: np.ndarray
    pose_map: np.ndarray
    depth: np.ndarray
    normal: np.ndarray
    seg: np.ndarray
    keypoints_2d: np.ndarray
    keypoints_cam: np.ndarray
    bbox: tuple[float, float, float, float]
    visible_fraction: float
    depth_near_m: float
    depth_far_m: float
    depth_metric: np.ndarray  # uint16 millimetres
    reported_2d: np.ndarray   # the keypoints the pose map shows (detector rule)


_SKY, _FLOOR, _SKIN, _HAIR, _SHIRT, _TROUSERS, _SHOES = range(7)
_FLOOR_HALF_M = 4.0
_NEAR_CLIP_M = encode.NEAR_CLIP_M
_LABELS = ("sky", "floor", "person")
_LIGHT_CAM = np.array([-0.45, -0.65, -0.6]) / np.linalg.norm([-0.45, -0.65, -0.6])


def _frame(x_hint: np.ndarray, z_hint: np.ndarray) -> np.ndarray:
    """Orthonormal rotation whose columns are (x, y, z) with z along z_hint."""
    z = z_hint / np.linalg.norm(z_hint)
    x = x_hint - z * (x_hint @ z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], axis=1)


def _primitives(pose: Pose) -> list[tuple]:
    """Body as ('cap', A, B, r, mat) and ('ell', centre, rotation, radii, mat), world frame.

    Proportions of a person rather than a mannequin: a ribcage over a narrower waist and a pelvis with
    glutes, a neck with sloping trapezius and deltoids, flat hands (palm, fingers, a thumb), shoes with a
    heel, an instep and a toe box.
    """
    rig = RIGS[pose.rig]
    R = rig["radii_m"]
    j = pose.joints_world
    across = j["l_hip"] - j["r_hip"]  # world direction of the figure's left
    up_pelvis = np.array([0.0, 0.0, 1.0])
    pelvis_frame = _frame(across, up_pelvis)
    spine_up = j["neck"] - j["spine_base"]
    chest_frame = _frame(j["l_shoulder"] - j["r_shoulder"], spine_up)
    head_frame = _frame(j["l_ear"] - j["r_ear"], j["head_top"] - j["head_center"])
    # _frame builds (x, z cross x, z); with x = figure-left the y column points backwards.
    back = head_frame[:, 1]
    torso_back = chest_frame[:, 1]
    pelvis_back = pelvis_frame[:, 1]
    waist = j["spine_base"] + 0.45 * (j["chest"] - j["spine_base"])
    neck_base = j["neck"] + 0.02 * spine_up / np.linalg.norm(spine_up)
    prims: list[tuple] = [
        ("ell", j["pelvis"] + up_pelvis * 0.03, pelvis_frame, R["pelvis"], _TROUSERS),
        ("ell", waist, chest_frame, (R["abdomen"][0], R["abdomen"][1],
                                     0.55 * float(np.linalg.norm(j["chest"] - j["spine_base"]))), _SHIRT),
        ("ell", j["chest"] + 0.01 * torso_back, chest_frame, R["chest"], _SHIRT),
        ("cap", j["r_shoulder"], j["l_shoulder"], R["shoulder_bar"], _SHIRT),
        ("cap", neck_base, j["neck_top"], R["neck"], _SKIN),
        ("ell", j["head_center"], head_frame, R["head"], _SKIN),
        ("ell", j["head_center"] + 0.012 * back + 0.018 * head_frame[:, 2], head_frame,
         (R["head"][0] * 1.055, R["head"][1] * 0.97, R["head"][2] * 0.975), _HAIR),
        ("ell", j["nose"] - 0.004 * (j["nose"] - j["head_center"]) / np.linalg.norm(j["nose"] - j["head_center"]),
         np.eye(3), (0.016, 0.016, 0.016), _SKIN),
    ]
    for s in ("r", "l"):
        hand_frame = _frame(j[f"{s}_thumb_dir"] - j[f"{s}_wrist"], j[f"{s}_wrist"] - j[f"{s}_hand"])
        hand_axis = j[f"{s}_hand"] - j[f"{s}_wrist"]
        foot_frame = _frame(j[f"{s}_foot_side"] - j[f"{s}_ankle"], j[f"{s}_toe"] - j[f"{s}_heel"])
        foot_len = float(np.linalg.norm(j[f"{s}_toe"] - j[f"{s}_heel"]))
        foot_up = -foot_frame[:, 1] if foot_frame[2, 1] < 0 else foot_frame[:, 1]
        prims += [
            # Sloping shoulders: trapezius from the base of the neck to each shoulder, then the deltoid.
            ("cap", neck_base + 0.01 * torso_back, 0.8 * j[f"{s}_shoulder"] + 0.2 * j["neck"], R["trapezius"],
             _SHIRT),
            ("ell", j[f"{s}_shoulder"] + 0.12 * (j[f"{s}_elbow"] - j[f"{s}_shoulder"]),
             _frame(chest_frame[:, 0], j[f"{s}_elbow"] - j[f"{s}_shoulder"]),
             (R["deltoid"], R["deltoid"] * 0.95, R["deltoid"] * 1.6), _SHIRT),
            ("ell", j[f"{s}_hip"] + 0.045 * pelvis_back + 0.01 * up_pelvis, pelvis_frame, R["glute"], _TROUSERS),
            ("cap", j[f"{s}_shoulder"], j[f"{s}_elbow"], R["upper_arm"], _SHIRT),
            ("cap", j[f"{s}_elbow"], j[f"{s}_wrist"], R["forearm"], _SKIN),
            ("ell", j[f"{s}_wrist"] + 0.36 * hand_axis, hand_frame, R["palm"], _SKIN),
            ("ell", j[f"{s}_wrist"] + 0.75 * hand_axis, hand_frame, R["fingers"], _SKIN),
            ("cap", j[f"{s}_thumb_base"], j[f"{s}_thumb_tip"], R["thumb"], _SKIN),
            ("cap", j[f"{s}_hip"], j[f"{s}_knee"], R["thigh"], _TROUSERS),
            ("cap", j[f"{s}_knee"], j[f"{s}_ankle"], R["shank"], _TROUSERS),
            # Shoe: heel, instep from heel to the ball of the foot, flatter toe box.
            # Every part's underside lies on the sole line (the heel-toe line lowered by the foot radius).
            ("ell", j[f"{s}_heel"] + foot_up * (R["heel"] - R["foot"]) + 0.35 * R["heel"] * foot_frame[:, 2],
             foot_frame, (R["heel"] * 0.95, R["heel"], R["heel"] * 1.05), _SHOES),
            ("ell", 0.5 * (j[f"{s}_heel"] + j[f"{s}_ball"]) + foot_up * R["foot"] * 0.05, foot_frame,
             (R["foot"] * 1.15, R["foot"] * 1.05, 0.36 * foot_len), _SHOES),
            ("ell", j[f"{s}_ball"] + 0.25 * (j[f"{s}_toe"] - j[f"{s}_ball"]) + foot_up * (R["toes"][1] - R["foot"]),
             foot_frame, R["toes"], _SHOES),
        ]
    return prims


def body_bounds(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """World-space bounding box (lo, hi) of the figure's body primitives."""
    los, his = [], []
    for prim in _primitives(pose):
        if prim[0] == "cap":
            _, a, b, r, _m = prim
            los.append(np.minimum(a, b) - r)
            his.append(np.maximum(a, b) + r)
        else:
            _, c, rot, radii, _m = prim
            ext = np.abs(rot) @ np.asarray(radii)
            los.append(c - ext)
            his.append(c + ext)
    return np.min(los, axis=0), np.max(his, axis=0)


def embed_depth(rig_name: str) -> np.ndarray:
    """How deep each COCO-18 joint centre sits below the body surface around it (metres)."""
    R = RIGS[rig_name]["radii_m"]
    per = {"nose": 0.0, "r_eye": 0.0, "l_eye": 0.0, "r_ear": 0.03, "l_ear": 0.03,
           "neck": R["chest"][1], "r_shoulder": R["shoulder_bar"] + 0.01, "l_shoulder": R["shoulder_bar"] + 0.01,
           "r_elbow": R["upper_arm"], "l_elbow": R["upper_arm"], "r_wrist": R["forearm"], "l_wrist": R["forearm"],
           "r_hip": R["pelvis"][1], "l_hip": R["pelvis"][1], "r_knee": R["thigh"], "l_knee": R["thigh"],
           "r_ankle": R["shank"], "l_ankle": R["shank"]}
    return np.array([per[n] for n in COCO18_JOINTS])


def _screen_box(corners_cam: np.ndarray, k: np.ndarray, w: int, h: int) -> tuple[int, int, int, int] | None:
    z = corners_cam[:, 2]
    if np.all(z <= _NEAR_CLIP_M):
        return None
    if np.any(z <= _NEAR_CLIP_M):
        return 0, h, 0, w  # straddles the camera plane: projection is unbounded
    u = k[0, 0] * corners_cam[:, 0] / z + k[0, 2]
    v = k[1, 1] * corners_cam[:, 1] / z + k[1, 2]
    c0, c1 = max(0, int(math.floor(u.min())) - 1), min(w, int(math.ceil(u.max())) + 1)
    r0, r1 = max(0, int(math.floor(v.min())) - 1), min(h, int(math.ceil(v.max())) + 1)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _hit_capsule(dx, dy, A, B, r):
    """Ray o=0, d=(dx,dy,1) against a capsule; returns t (= camera z) and hit mask.

    t is the ray parameter with an unnormalised direction whose z is 1, so t is the
    camera-space depth directly.
    """
    ba = B - A
    oa = -A
    baba = ba @ ba
    if baba < 1e-12:
        return _hit_sphere(dx, dy, A, r)
    baoa, oaoa = ba @ oa, oa @ oa
    bard = ba[0] * dx + ba[1] * dy + ba[2]
    rdoa = oa[0] * dx + oa[1] * dy + oa[2]
    rdrd = dx * dx + dy * dy + 1.0
    a = baba * rdrd - bard * bard
    b = baba * rdoa - baoa * bard
    c = baba * oaoa - baoa * baoa - r * r * baba
    h = b * b - a * c
    hit = h >= 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = (-b - np.sqrt(np.where(hit, h, 0.0))) / a
        y = baoa + t * bard
        body = hit & (y > 0.0) & (y < baba)
        # Outside the cylinder span the first hit can only be the end sphere on that side.
        cap_a = y <= 0.0
        cx = np.where(cap_a, A[0], B[0])
        cy = np.where(cap_a, A[1], B[1])
        cz = np.where(cap_a, A[2], B[2])
        bc = -(dx * cx + dy * cy + cz)
        cc = cx * cx + cy * cy + cz * cz - r * r
        hc = bc * bc - rdrd * cc
        tc = (-bc - np.sqrt(np.where(hc >= 0.0, hc, 0.0))) / rdrd
    t = np.where(body, t, np.where(hit & (hc >= 0.0), tc, np.inf))
    return t


def _hit_sphere(dx, dy, C, r):
    rdrd = dx * dx + dy * dy + 1.0
    b = -(dx * C[0] + dy * C[1] + C[2])
    c = C @ C - r * r
    h = b * b - rdrd * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(np.where(h >= 0, h, 0.0))) / rdrd
    return np.where(h >= 0, t, np.inf)


def _hit_ellipsoid(dx, dy, C, Rot, radii):
    M = (Rot.T / np.asarray(radii)[:, None])  # world->unit-sphere space
    ol = M @ (-C)
    dlx = M[0, 0] * dx + M[0, 1] * dy + M[0, 2]
    dly = M[1, 0] * dx + M[1, 1] * dy + M[1, 2]
    dlz = M[2, 0] * dx + M[2, 1] * dy + M[2, 2]
    a = dlx * dlx + dly * dly + dlz * dlz
    b = ol[0] * dlx + ol[1] * dly + ol[2] * dlz
    c = ol @ ol - 1.0
    h = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(np.where(h >= 0, h, 0.0))) / a
    return np.where(h >= 0, t, np.inf)


def _normals_capsule(p, A, B):
    ba = B - A
    baba = ba @ ba
    s = np.clip(((p - A) @ ba) / baba, 0.0, 1.0) if baba > 1e-12 else np.zeros(len(p))
    n = p - A - s[:, None] * ba
    return n


def _normals_ellipsoid(p, C, Rot, radii):
    local = (p - C) @ Rot  # coordinates along the ellipsoid axes
    return (local / np.asarray(radii) ** 2) @ Rot.T


def render_view(pose: Pose, camera: Camera) -> encode.View:
    """Ray-cast the posed figure: the raw buffers the encoder turns into the batch's files."""
    W, H = int(camera.width), int(camera.height)
    k = camera.K()
    Rw, tw = camera.R_w2c(), camera.t_w2c()
    cam_pos = camera.position()
    dx_row = (np.arange(W) + 0.5 - k[0, 2]) / k[0, 0]
    dy_col = (np.arange(H) + 0.5 - k[1, 2]) / k[1, 1]

    zbuf = np.full((H, W), np.inf)
    nbuf = np.zeros((H, W, 3))
    mat = np.zeros((H, W), dtype=np.uint8)

    # Floor: one plane for the whole image. World ray direction = Rw.T @ (dx, dy, 1).
    DX, DY = np.meshgrid(dx_row, dy_col)
    dwx = Rw[0, 0] * DX + Rw[1, 0] * DY + Rw[2, 0]
    dwy = Rw[0, 1] * DX + Rw[1, 1] * DY + Rw[2, 1]
    dwz = Rw[0, 2] * DX + Rw[1, 2] * DY + Rw[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = -cam_pos[2] / dwz
    fx_w = cam_pos[0] + tf * dwx
    fy_w = cam_pos[1] + tf * dwy
    on_floor = (tf > _NEAR_CLIP_M) & (np.abs(fx_w) <= _FLOOR_HALF_M) & (np.abs(fy_w) <= _FLOOR_HALF_M)
    zbuf[on_floor] = tf[on_floor]
    n_floor = Rw @ np.array([0.0, 0.0, 1.0 if cam_pos[2] >= 0 else -1.0])
    nbuf[on_floor] = n_floor
    mat[on_floor] = _FLOOR

    for prim in _primitives(pose):
        kind = prim[0]
        if kind == "cap":
            _, A, B, r, m = prim
            Ac, Bc = Rw @ A + tw, Rw @ B + tw
            lo, hi = np.minimum(Ac, Bc) - r, np.maximum(Ac, Bc) + r
        else:
            _, C, Rot, radii, m = prim
            Cc, Rc = Rw @ C + tw, Rw @ Rot
            ext = np.abs(Rc) @ np.asarray(radii)  # half-extent of the rotated ellipsoid's AABB
            lo, hi = Cc - ext, Cc + ext
        box = _screen_box(_box_corners(lo, hi), k, W, H)
        if box is None:
            continue
        r0, r1, c0, c1 = box
        dx = dx_row[None, c0:c1]
        dy = dy_col[r0:r1, None]
        dx, dy = np.broadcast_arrays(dx, dy)
        if kind == "cap":
            t = _hit_capsule(dx, dy, Ac, Bc, r)
        else:
            t = _hit_ellipsoid(dx, dy, Cc, Rc, radii)
        zsub = zbuf[r0:r1, c0:c1]
        win = (t > _NEAR_CLIP_M) & (t < zsub)
        if not win.any():
            continue
        p = np.stack([dx[win], dy[win], np.ones(int(win.sum()))], axis=1) * t[win][:, None]
        n = _normals_capsule(p, Ac, Bc) if kind == "cap" else _normals_ellipsoid(p, Cc, Rc, radii)
        zsub[win] = t[win]
        nbuf[r0:r1, c0:c1][win] = n / np.linalg.norm(n, axis=1, keepdims=True)
        mat[r0:r1, c0:c1][win] = m

    geom = np.isfinite(zbuf)
    labels = np.zeros((H, W), dtype=np.uint8)  # index into _LABELS
    labels[mat == _FLOOR] = 1
    labels[mat >= _SKIN] = 2
    rgb = _shade(pose, mat, nbuf, geom, fx_w, fy_w, dwz / np.sqrt(dwx**2 + dwy**2 + dwz**2))
    kp_world = np.stack([pose.joints_world[n] for n in COCO18_JOINTS])
    return encode.View(camera=camera, z=zbuf, normal_cam=nbuf, labels=labels, label_names=_LABELS, rgb=rgb,
                       keypoints_world=kp_world, embed_m=embed_depth(pose.rig))


def render(pose: Pose, camera: Camera, options: encode.Options | None = None) -> Render:
    """Ray-cast the posed figure and encode every modality (see the module docstring)."""
    enc = encode.encode_view(render_view(pose, camera), options)
    return Render(
        rgb=enc.images["rgb"], pose_map=enc.images["pose"], depth=enc.images["depth"],
        normal=enc.images["normal"], seg=enc.images["seg"], keypoints_2d=enc.keypoints_2d,
        keypoints_cam=enc.keypoints_cam, bbox=enc.bbox, visible_fraction=enc.visible_fraction,
        depth_near_m=enc.depth_near_m, depth_far_m=enc.depth_far_m, depth_metric=enc.images["depth_metric"],
        reported_2d=enc.reported,
    )


def _shade(pose: Pose, mat, nbuf, geom, fx_w, fy_w, up_component) -> np.ndarray:
    colors = RIGS[pose.rig]["colors"]
    lut = np.zeros((7, 3))
    for m, name in ((_SKIN, "skin"), (_HAIR, "hair"), (_SHIRT, "shirt"), (_TROUSERS, "trousers"), (_SHOES, "shoes")):
        lut[m] = colors[name]
    base = lut[mat]
    # Light rides with the camera (key light above-left) so every view is readable.
    lam = np.clip(nbuf @ _LIGHT_CAM, 0.0, 1.0)
    shade = 0.32 + 0.68 * lam

    fl = mat == _FLOOR
    if fl.any():
        x, y = fx_w[fl], fy_w[fl]
        checker = (np.floor(x / 0.5) + np.floor(y / 0.5)) % 2
        c = np.where(checker[:, None] > 0, np.array([168.0, 164.0, 156.0]), np.array([128.0, 124.0, 118.0]))
        # Blob shadows ground the figure; no real shadow rays are cast.
        j = pose.joints_world
        occl = np.ones_like(x)
        for name, sigma, strength in (("pelvis", 0.32, 0.45), ("r_ankle", 0.12, 0.5), ("l_ankle", 0.12, 0.5)):
            px, py, pz = j[name]
            fade = math.exp(-max(pz - 0.08, 0.0) / 0.4) if name != "pelvis" else 1.0
            # Beyond 4 sigma the blob is below 1/2980: only pixels inside that square pay for the exp.
            near = (np.abs(x - px) < 4 * sigma) & (np.abs(y - py) < 4 * sigma)
            d2 = (x[near] - px) ** 2 + (y[near] - py) ** 2
            occl[near] *= 1.0 - strength * fade * np.exp(-d2 / (2 * sigma**2))
        edge = np.clip((_FLOOR_HALF_M - np.maximum(np.abs(x), np.abs(y))) / 1.5, 0.0, 1.0)
        base[fl] = c * (0.55 + 0.45 * edge[:, None]) * occl[:, None]
        shade[fl] = 0.75 + 0.25 * lam[fl]

    out = base * shade[..., None]
    sky = ~geom
    if sky.any():
        s = np.clip(up_component[sky], 0.0, 1.0) ** 0.6
        horizon, zenith = np.array([214.0, 222.0, 232.0]), np.array([92.0, 140.0, 204.0])
        out[sky] = horizon + (zenith - horizon) * s[:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
