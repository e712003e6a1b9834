"""The pod-side real renderer for jobs with ``"generator": "blender"``.

``render_with_blender(job, out_root, settings, batch_id)`` prepares a scene file (per sample: the camera of
:class:`figure.Camera` and the body primitives around the joints of :func:`figure.make_pose`, so poses
match the synthetic generator), runs ``blender -b --factory-startup -P scripts/blender/render_job.py``
(Cycles on the CPU), then turns Blender's raw Z / Normal / Object Index passes into the batch contract
exactly like :mod:`pose_factory.producer.generate` does for synthetic batches, and writes the manifest.

Keypoint visibility uses the same depth test as :func:`figure.render`: a joint is 2 (visible) when its
camera z is within its embedding depth + 2 cm of the Blender Z pass at its pixel, else 1; 0 outside the
canvas or behind the camera.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pose_factory.core import contract, schemas
from pose_factory.core.console import log_command
from pose_factory.core.envnames import ENV_ASSETS, ENV_BLENDER, ENV_BLENDER_THREADS
from pose_factory.core.errors import PoseFactoryError, SceneError, ToolError, UsageError
from pose_factory.core.fsutil import check_relative_path, file_sha256, held_work_dir
from pose_factory.core.progress import Progress
from pose_factory.core.settings import Settings
from pose_factory.producer import encode, figure
from pose_factory.producer.generate import (
    batch_id_for,
    camera_views,
    frame_view,
    plan_sample,
    pose_block,
    seal_batch,
    software_block,
    synthetic_pose,
)

if TYPE_CHECKING:
    from pose_factory.core.models import Job

RENDER_SCRIPT = Path(__file__).resolve().parents[2] / "blender" / "render_job.py"
# Scene assets (.blend, HDRI, BVH) live under this prefix of the bucket; locally in $POSE_FACTORY_ASSETS or
# <project>/assets/. A job names them by their path below it.
ASSETS_PREFIX = "assets/"
# COCO-18 joint -> points of the rig; a list means the mean of its points. A point is "<bone>:head",
# "<bone>:tail" or "vertex:<vertex group>" (the centroid of the group's vertices on the posed mesh).
RIG_MAPPINGS: dict[str, dict[str, str | list[str]]] = {
    "rigify": {  # Rigify's human meta-rig (Add > Armature > Human (Meta-Rig))
        "nose": "nose:tail", "neck": ["upper_arm.L:head", "upper_arm.R:head"],
        "r_shoulder": "upper_arm.R:head", "r_elbow": "forearm.R:head", "r_wrist": "hand.R:head",
        "l_shoulder": "upper_arm.L:head", "l_elbow": "forearm.L:head", "l_wrist": "hand.L:head",
        "r_hip": "thigh.R:head", "r_knee": "shin.R:head", "r_ankle": "foot.R:head",
        "l_hip": "thigh.L:head", "l_knee": "shin.L:head", "l_ankle": "foot.L:head",
        "r_eye": "eye.R:head", "l_eye": "eye.L:head", "r_ear": "ear.R:head", "l_ear": "ear.L:head",
    },
    "mixamo": {  # Mixamo's bone names; nose and ears from vertex groups named nose, ear.L, ear.R on the mesh
        "nose": "vertex:nose", "neck": ["mixamorig:LeftArm:head", "mixamorig:RightArm:head"],
        "r_shoulder": "mixamorig:RightArm:head", "r_elbow": "mixamorig:RightForeArm:head",
        "r_wrist": "mixamorig:RightHand:head", "l_shoulder": "mixamorig:LeftArm:head",
        "l_elbow": "mixamorig:LeftForeArm:head", "l_wrist": "mixamorig:LeftHand:head",
        "r_hip": "mixamorig:RightUpLeg:head", "r_knee": "mixamorig:RightLeg:head",
        "r_ankle": "mixamorig:RightFoot:head",
        "l_hip": "mixamorig:LeftUpLeg:head", "l_knee": "mixamorig:LeftLeg:head", "l_ankle": "mixamorig:LeftFoot:head",
        "r_eye": "mixamorig:RightEye:head", "l_eye": "mixamorig:LeftEye:head", "r_ear": "vertex:ear.R",
        "l_ear": "vertex:ear.L",
    },
}
BLEND_MAGIC = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")  # plain, gzip- or zstd-compressed .blend
_SCENE_HINTS = {
    "missing_file": "put the file in the assets folder (or the bucket's assets/ prefix) under the path the job names",
    "unreadable_file": "open it in Blender on your machine and save it again; it must be a .blend / .bvh / image",
    "no_character": "set rig.character to one of the objects listed",
    "no_armature": "set rig.armature to the armature that deforms the character",
    "no_mesh": "parent the character's mesh to the armature or give it an Armature modifier",
    "missing_bones": "use a rig.mapping that fits this armature (rigify, mixamo or your own bone names)",
    "bvh_mismatch": "name the BVH joints like the armature's bones (or retarget the motion in Blender)",
    "no_action": "set poses.action to one of the actions listed",
    "no_gpu": "render on a pod with a GPU or set render.device to auto / CPU",
}
BACKGROUND_Z = 1e9  # Cycles writes 1e10 where nothing is hit
DEFAULT_SPP = 8
_PERSON_INDEX, _FLOOR_INDEX = 1, 2
_LABELS = ("sky", "floor", "person")
_MATERIAL_COLOR = {figure._SKIN: "skin", figure._HAIR: "hair", figure._SHIRT: "shirt",
                   figure._TROUSERS: "trousers", figure._SHOES: "shoes"}


def blender_executable() -> str:
    """The Blender binary: $POSE_FACTORY_BLENDER, else `blender` on PATH."""
    exe = os.environ.get(ENV_BLENDER) or shutil.which("blender")
    if not exe:
        raise ToolError("blender is not installed (not on PATH)", where="generator blender",
                        hint="install it (Debian/Ubuntu: apt-get install blender; or a blender.org build) "
                             f"or set {ENV_BLENDER} to the binary")
    return exe


def _sample_plan(job: Job, index: int) -> dict[str, Any]:
    plan = plan_sample(job, index)
    pose = synthetic_pose(job, plan)
    camera = frame_view(job, plan, *figure.body_bounds(pose))
    return {"index": index, "sid": contract.sample_id(index), "view_index": plan.view_index, "frame": plan.frame,
            "camera": camera, "pose": pose}


def _blender_camera(camera: figure.Camera) -> dict[str, Any]:
    # OpenCV w2c -> Blender camera-to-world: camera axes (right, up, back) = rows of F @ R_w2c.
    F = np.diag([1.0, -1.0, -1.0])
    m = np.eye(4)
    m[:3, :3] = (F @ camera.R_w2c()).T
    m[:3, 3] = camera.position()
    return {"matrix_world": m.tolist(), "lens_mm": float(camera.focal_mm), "sensor_mm": float(camera.sensor_mm)}


def _primitives_json(pose: figure.Pose) -> list[dict[str, Any]]:
    colors = figure.RIGS[pose.rig]["colors"]
    out = []
    for prim in figure._primitives(pose):
        if prim[0] == "cap":
            _, a, b, r, m = prim
            out.append({"kind": "cap", "a": list(map(float, a)), "b": list(map(float, b)), "r": float(r),
                        "color": list(colors[_MATERIAL_COLOR[m]])})
        else:
            _, c, rot, radii, m = prim
            out.append({"kind": "ell", "c": list(map(float, c)), "rot": np.asarray(rot, float).tolist(),
                        "radii": list(map(float, radii)), "color": list(colors[_MATERIAL_COLOR[m]])})
    return out


def scene_spec(job: Job, plans: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON render_job.py reads: image size, Cycles settings and per-sample camera, joints and body."""
    return {
        "width": job["image"]["width"], "height": job["image"]["height"],
        "samples_per_pixel": int(job["render"].get("samples", DEFAULT_SPP)), "seed": int(job["seed"]),
        "threads": int(os.environ.get(ENV_BLENDER_THREADS, "0")),
        "samples": [{
            "sample_id": p["sid"], "camera": _blender_camera(p["camera"]),
            "joints_world": {k: list(map(float, v)) for k, v in p["pose"].joints_world.items()},
            "primitives": _primitives_json(p["pose"]),
        } for p in plans],
    }


def run_blender(spec_path: Path, raw_dir: Path, *, timeout_s: float, expect: str = "blender.json") -> str:
    """Run Blender on the scene file; return its output.

    Raises SceneError when render_job.py reports a problem with the user's scene (error.json), ToolError
    on a missing binary or any other failure.
    """
    cmd = [blender_executable(), "-b", "--factory-startup", "-noaudio", "-P", str(RENDER_SCRIPT), "--",
           str(spec_path), str(raw_dir)]
    log_command(logging.getLogger(__name__), cmd)
    # Blender makes a session folder (blender_XXXXXX) in TMPDIR and removes it only on a normal quit, which
    # render_job.py skips (os._exit) and a timeout or kill never reaches: it goes in a folder of ours instead.
    session_tmp = tempfile.mkdtemp(prefix=".blender-tmp-", dir=spec_path.parent)
    env = {**os.environ, "TMPDIR": session_tmp, "TEMP": session_tmp, "TMP": session_tmp}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"blender did not finish within {timeout_s:.0f} s", where="blender render",
                        hint="render fewer samples per job, a smaller image or fewer Cycles samples") from exc
    except OSError as exc:
        raise ToolError(f"could not start blender: {exc}", where=cmd[0]) from exc
    finally:
        shutil.rmtree(session_tmp, ignore_errors=True)
    if (raw_dir / "error.json").is_file():
        problem = json.loads((raw_dir / "error.json").read_text())
        raise _scene_error(problem)
    if done.returncode != 0 or not (raw_dir / expect).is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ToolError(f"blender failed (exit {done.returncode}):\n{tail}", where="blender render",
                        hint="run the command by hand to see the full log: " + " ".join(cmd))
    return done.stdout


def _scene_error(problem: dict[str, Any]) -> SceneError:
    names = problem.get("names") or []
    what = "the armature's bones" if problem.get("kind") == "missing_bones" else "available"
    listed = f"; {what}: {', '.join(names[:400])}{' ...' if len(names) > 400 else ''}" if names else ""
    return SceneError(problem["message"] + listed, where="job.scene / job.rig / job.poses",
                      hint=_SCENE_HINTS.get(str(problem.get("kind")), "check the job's scene, rig and motion fields"))


def assets_dir(settings: Settings) -> Path:
    """Where scene assets are looked up on this machine: $POSE_FACTORY_ASSETS, else <project>/assets."""
    env = os.environ.get(ENV_ASSETS)
    return Path(env) if env else settings.layout.assets_dir


@dataclass
class SceneAssets:
    """Local paths of a job's scene assets, after fetching and checking them."""

    blend: Path
    hdri: Path | None = None
    bvh: Path | None = None


def resolve_assets(job: Job, settings: Settings, storage: Any = None, fetch_to: Path | None = None
                   ) -> SceneAssets:
    """The job's .blend, HDRI and BVH as local files; fetched from the bucket's assets/ prefix when given a
    storage and not found locally; the .blend checked against scene.blend_sha256 when the job gives it.

    Raises SceneError (before any rendering) for a missing, unreadable or mismatching file.
    """
    scene, poses = job["scene"], job["poses"]
    refs = {"blend": ("job.scene.blend_file", scene["blend_file"]),
            "hdri": ("job.scene.hdri", scene.get("hdri")),
            "bvh": ("job.poses.motion_file", poses.get("motion_file"))}
    found: dict[str, Path | None] = {}
    for kind, (field, ref) in refs.items():
        if not ref:
            found[kind] = None
            continue
        rel = check_relative_path(ref, where=field)
        path = assets_dir(settings) / rel
        if not path.is_file() and storage is not None:
            key = ASSETS_PREFIX + rel
            if storage.head(key) is None:
                raise SceneError(f"{ref} is neither in {assets_dir(settings)} nor in the bucket at {key}",
                                 where=field, hint=_SCENE_HINTS["missing_file"])
            path = (fetch_to or Path(tempfile.mkdtemp(prefix="pose-factory-assets-"))) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            storage.download_file(key, path)
        if not path.is_file():
            raise SceneError(f"{ref} is not in the assets folder {assets_dir(settings)}", where=field,
                             hint=_SCENE_HINTS["missing_file"])
        found[kind] = path
    blend = found["blend"]
    assert blend is not None
    with open(blend, "rb") as handle:
        head = handle.read(8)
    if not head.startswith(BLEND_MAGIC):
        raise SceneError(f"{scene['blend_file']} is not a .blend file", where="job.scene.blend_file",
                         hint=_SCENE_HINTS["unreadable_file"])
    expected = scene.get("blend_sha256")
    if expected:
        actual = file_sha256(blend)  # streamed: a scene file can be gigabytes
        if actual != expected:
            raise SceneError(f"{scene['blend_file']} has sha256 {actual[:16]}..., the job expects {expected[:16]}...",
                             where="job.scene.blend_sha256", hint="upload the .blend the job was written for")
    if found["bvh"] is not None and found["bvh"].suffix.lower() != ".bvh":
        raise SceneError(f"poses.motion_file {poses['motion_file']!r} is not a .bvh file (for an action of the "
                         ".blend use poses.action)", where="job.poses.motion_file")
    return SceneAssets(blend=blend, hdri=found["hdri"], bvh=found["bvh"])


def rig_mapping(job: Job) -> dict[str, list[str]]:
    """COCO-18 joint -> the rig points it is the mean of (a built-in mapping or the job's own)."""
    mapping = job["rig"].get("mapping", "rigify")
    if isinstance(mapping, str):
        if mapping not in RIG_MAPPINGS:
            raise UsageError(f"unknown rig mapping {mapping!r}", where="job.rig.mapping",
                             hint="built in: " + ", ".join(RIG_MAPPINGS) + "; or an object joint -> bone")
        mapping = RIG_MAPPINGS[mapping]

    def points(value: str | list[str]) -> list[str]:
        return [value] if isinstance(value, str) else list(value)

    return {joint: points(mapping[joint]) for joint in encode.COCO18_JOINTS}


@dataclass
class PreparedScene:
    """A user scene checked before rendering: its assets and what the probe found in Blender."""

    assets: SceneAssets
    probe: dict[str, Any]


def prepare_scene(job: Job, settings: Settings, storage: Any = None, work_dir: Path | None = None,
                  timeout_s: float = 600.0) -> PreparedScene:
    """Fetch and check the job's scene assets and probe the scene in Blender: the file opens, the character,
    armature, mapped bones and motion exist. Raises SceneError before anything is rendered."""
    assets = resolve_assets(job, settings, storage, work_dir)
    blender_executable()
    scratch = Path(tempfile.mkdtemp(prefix="pose-factory-probe-", dir=work_dir))
    try:
        spec = {"mode": "probe", **_user_scene_fields(job, assets),
                "points": sorted({ref for refs in rig_mapping(job).values() for ref in refs}),
                "frame_start": job["poses"].get("frame_start"), "frame_end": job["poses"].get("frame_end"),
                "frame_step": job["poses"].get("frame_step", 1)}
        (scratch / "probe-spec.json").write_text(json.dumps(spec))
        run_blender(scratch / "probe-spec.json", scratch / "raw", timeout_s=timeout_s, expect="probe.json")
        probe = json.loads((scratch / "raw" / "probe.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return PreparedScene(assets, probe)


def _user_scene_fields(job: Job, assets: SceneAssets) -> dict[str, Any]:
    poses, rig, scene = job["poses"], job["rig"], job["scene"]
    motion: dict[str, Any] = {}
    if assets.bvh is not None:
        motion = {"bvh": str(assets.bvh), "scale": poses.get("motion_scale", 1.0)}
    elif poses.get("action"):
        motion = {"action": poses["action"]}
    return {"blend_file": str(assets.blend), "character": rig.get("character"), "armature": rig.get("armature"),
            "motion": motion, "hdri": str(assets.hdri) if assets.hdri else None,
            "hdri_strength": scene.get("hdri_strength", 1.0)}


def _clip_frame(job: Job, plan: Any, frames: list[int]) -> int:
    """The clip frame a sample shows (docs/batch-contract.md section 3)."""
    if plan.position is None:  # sequential: the (i div V)-th frame of the clip's grid, the last one after its end
        return frames[min(len(frames) - 1, plan.index // len(camera_views(job)))]
    return frames[min(len(frames) - 1, int(plan.position * len(frames)))]


def _user_plans(job: Job, probe: dict[str, Any], indices: range) -> list[dict[str, Any]]:
    mapping = rig_mapping(job)
    frames = probe["frames"]
    out = []
    for index in indices:
        plan = plan_sample(job, index)
        frame = _clip_frame(job, plan, frames)
        data = probe["per_frame"][str(frame)]
        joints = np.array([np.mean([data["points"][ref] for ref in mapping[j]], axis=0)
                           for j in encode.COCO18_JOINTS])
        lo, hi = (np.array(v, dtype=float) for v in data["bounds"])
        camera = frame_view(job, plan, lo, hi)
        out.append({"index": index, "sid": contract.sample_id(index), "view_index": plan.view_index,
                    "frame": frame, "camera": camera, "joints": joints, "height": float(hi[2] - lo[2])})
    return out


def _render_user_scene(job: Job, prepared: PreparedScene, scratch: Path, work: Path, batch_id: str,
                       timeout_s: float | None, progress: Progress, indices: range) -> dict[str, Any]:
    plans = _user_plans(job, prepared.probe, indices)
    labels = [name for name in encode.ADE20K if name != "sky"]
    spec = {"mode": "scene", **_user_scene_fields(job, prepared.assets),
            "points": [], "labels": labels, "default_class": job["scene"].get("default_class", "wall"),
            "width": job["image"]["width"], "height": job["image"]["height"],
            "samples_per_pixel": int(job["render"].get("samples", DEFAULT_SPP)), "seed": int(job["seed"]),
            "device": job["render"].get("device", "auto"),
            "threads": int(os.environ.get(ENV_BLENDER_THREADS, "0")),
            "samples": [{"sample_id": p["sid"], "frame": p["frame"], "camera": _blender_camera(p["camera"])}
                        for p in plans]}
    (scratch / "scene.json").write_text(json.dumps(spec))
    raw = scratch / "raw"
    pixels = job["image"]["width"] * job["image"]["height"] * spec["samples_per_pixel"]
    run_blender(scratch / "scene.json", raw, timeout_s=timeout_s if timeout_s is not None
                else 300.0 + len(plans) * (60.0 + pixels / 2e4))
    info = json.loads((raw / "blender.json").read_text())
    label_names = ("sky", *labels)
    options = encode.Options.from_job(job)
    samples = []
    with progress.task(f"convert {batch_id}", len(plans), "samples") as bar:
        for plan in plans:
            camera = plan["camera"]
            z, n_world, index = _load_passes(raw / plan["sid"])
            geom = (z < BACKGROUND_Z) & (index > 0)
            labels_px = np.where(geom, np.clip(index, 0, len(labels)), 0).astype(np.uint8)
            rgb = np.asarray(Image.open(raw / plan["sid"] / "rgb.png").convert("RGB"))
            # Joint centres sit inside the character's flesh about as deep as in the mannequin, scaled by height.
            embed = figure.embed_depth("mannequin-a") * (plan["height"] / figure.RIGS["mannequin-a"]["height_m"])
            view = encode.View(camera=camera, z=np.where(geom, z, np.inf),
                               normal_cam=np.where(geom[..., None], n_world @ camera.R_w2c().T, 0.0),
                               labels=labels_px, label_names=label_names, rgb=rgb,
                               keypoints_world=plan["joints"], embed_m=embed)
            pose = {"set": job["poses"]["set"], "rig": job["rig"]["name"], "frame": int(plan["frame"])}
            samples.append(encode.write_sample(work, job, batch_id, plan["index"], encode.encode_view(view, options),
                                               encode.camera_block(camera, plan["view_index"],
                                                                   job["cameras"]["focal_length_mm"]), pose))
            bar.advance()
    return {"samples": samples, "info": info}


def _load_passes(raw: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.load(raw / "depth.npy").astype(np.float64)
    n_world = np.load(raw / "normal.npy").astype(np.float64)
    index = np.rint(np.load(raw / "index.npy")).astype(np.int64)
    return z, n_world, index


def _convert_sample(plan: dict[str, Any], raw: Path, out: Path, job: Job, batch_id: str
                    ) -> dict[str, Any]:
    """Blender passes -> a View for the shared encoder, which writes the contract files and annotation."""
    camera: figure.Camera = plan["camera"]
    pose: figure.Pose = plan["pose"]
    z = np.load(raw / "depth.npy").astype(np.float64)
    n_world = np.load(raw / "normal.npy").astype(np.float64)
    index = np.rint(np.load(raw / "index.npy")).astype(np.int64)
    geom = (z < BACKGROUND_Z) & (index > 0)
    labels = np.zeros(z.shape, dtype=np.uint8)  # index into _LABELS
    labels[geom & (index == _FLOOR_INDEX)] = 1
    labels[geom & (index == _PERSON_INDEX)] = 2
    rgb = np.asarray(Image.open(raw / "rgb.png").convert("RGB"))
    view = encode.View(camera=camera, z=np.where(geom, z, np.inf),
                       normal_cam=np.where(geom[..., None], n_world @ camera.R_w2c().T, 0.0),
                       labels=labels, label_names=_LABELS, rgb=rgb,
                       keypoints_world=np.stack([pose.joints_world[n] for n in encode.COCO18_JOINTS]),
                       embed_m=figure.embed_depth(pose.rig))
    encoded = encode.encode_view(view, encode.Options.from_job(job))
    return encode.write_sample(out, job, batch_id, plan["index"], encoded,
                               encode.camera_block(camera, plan["view_index"], job["cameras"]["focal_length_mm"]),
                               pose_block(pose, plan["frame"]))


def check_engine(job: Job) -> None:
    """Refuse engines the pod cannot render the contract's passes with, saying why."""
    engine = job["render"]["engine"]
    if engine in ("BLENDER_EEVEE_NEXT", "BLENDER_EEVEE"):
        raise UsageError("EEVEE is refused: it has no Object Index pass, so no segmentation map, and on a headless "
                         "pod it runs on a software OpenGL context (a 32x32 frame took 24 s here)",
                         where="job.render.engine", hint="use CYCLES (it uses the pod's GPU when there is one)")
    if engine == "BLENDER_WORKBENCH":
        raise UsageError("Workbench is refused: no depth, normal or object index passes the contract needs",
                         where="job.render.engine", hint="use CYCLES")
    if engine not in ("CYCLES", "synthetic"):
        raise UsageError(f"render engine {engine!r} is not supported; use CYCLES", where="job.render.engine")


def _seal(work: Path, final_dir: Path, job: Job, batch_id: str, samples: list[dict[str, Any]],
          info: dict[str, Any], seconds: float) -> None:
    device = info.get("device") or {"type": "CPU", "names": []}
    if isinstance(device, str):
        device = {"type": device, "names": []}
    software = software_block()
    software.update({"generator": "pose-factory-blender", "blender_version": info["blender_version"],
                     "render_engine": info["render_engine"],
                     "gpu": ", ".join(device["names"]) if device["type"] != "CPU" and device["names"] else None,
                     "render_device": device["type"], "python_version": platform.python_version()})
    seal_batch(work, final_dir, job, batch_id, samples, software)


def render_with_blender(job: Job, out_root: Path, settings: Settings, batch_id: str | None = None, *,
                        replace: bool = False, timeout_s: float | None = None, progress: Progress | None = None,
                        prepared: PreparedScene | None = None, storage: Any = None, indices: range | None = None
                        ) -> Path:
    """Render the job (or only `indices`: one shard) with Blender into `<out_root>/<batch_id>/` (written
    atomically) and return that folder.

    With `scene.blend_file` it renders the user's scene, character and motion (checked first by
    :func:`prepare_scene`, unless `prepared` is given); without, the built-in mannequin and pose sets.
    """
    schemas.check(job, "job", "job definition")
    if job["generator"] != "blender":
        raise UsageError(f"job generator is {job['generator']!r}, not 'blender'", where="job.generator")
    check_engine(job)
    if job["scene"].get("blend_file"):
        return _render_job(job, Path(out_root), settings, batch_id, replace, timeout_s, progress,
                           prepared or prepare_scene(job, settings, storage), indices)
    if job["poses"]["set"] not in figure.POSE_SETS:
        raise UsageError(f"unknown pose set {job['poses']['set']!r}", where="job.poses.set",
                         hint="known: " + ", ".join(figure.POSE_SETS))
    if job["rig"]["name"] not in figure.RIGS:
        raise UsageError(f"unknown rig {job['rig']['name']!r}", where="job.rig.name",
                         hint="known: " + ", ".join(figure.RIGS))
    blender_executable()  # fail fast, before any work, when Blender is missing
    return _render_job(job, Path(out_root), settings, batch_id, replace, timeout_s, progress, None, indices)


def _render_job(job: Job, out_root: Path, settings: Settings, batch_id: str | None, replace: bool,
                timeout_s: float | None, progress: Progress | None, prepared: PreparedScene | None,
                indices: range | None = None) -> Path:
    indices = indices if indices is not None else range(job["samples"])
    batch_id = batch_id or batch_id_for(job, settings)
    schemas.check({**job, "batch_id": batch_id}, "job", "batch id")
    out_root = Path(out_root)
    final_dir = out_root / batch_id
    if final_dir.exists() and not replace:
        raise PoseFactoryError("a batch with this id already exists", where=str(final_dir),
                               hint="pass replace=True to replace it, or another batch id")
    out_root.mkdir(parents=True, exist_ok=True)
    progress = progress or Progress(enabled=False)
    # Both held while it runs: a render killed at any instant leaves them, and the next one here removes them.
    with held_work_dir(out_root, f".{batch_id}.", ".partial") as work, \
            held_work_dir(out_root, f".{batch_id}.", ".blender") as scratch:
        try:
            for modality in job["render"]["modalities"]:
                (work / contract.MODALITIES[modality][0]).mkdir()
            (work / "annotations").mkdir()
            if prepared is not None:
                started = time.perf_counter()
                done = _render_user_scene(job, prepared, scratch, work, batch_id, timeout_s, progress, indices)
                _seal(work, final_dir, job, batch_id, done["samples"], done["info"], time.perf_counter() - started)
                return final_dir
            plans = [_sample_plan(job, i) for i in indices]
            spec_path = scratch / "scene.json"
            spec_path.write_text(json.dumps(scene_spec(job, plans)))
            raw_dir = scratch / "raw"
            pixels = job["image"]["width"] * job["image"]["height"] * int(job["render"].get("samples", DEFAULT_SPP))
            timeout = timeout_s if timeout_s is not None else 120.0 + len(plans) * (30.0 + pixels / 2e4)
            started = time.perf_counter()
            run_blender(spec_path, raw_dir, timeout_s=timeout)
            info = json.loads((raw_dir / "blender.json").read_text())
            samples = []
            with progress.task(f"convert {batch_id}", len(plans), "samples") as bar:
                for plan in plans:
                    samples.append(_convert_sample(plan, raw_dir / plan["sid"], work, job, batch_id))
                    bar.advance()
            _seal(work, final_dir, job, batch_id, samples, info, time.perf_counter() - started)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final_dir
