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
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pose_factory.core import contract, schemas
from pose_factory.core.errors import PoseFactoryError, ToolError, UsageError
from pose_factory.core.progress import Progress
from pose_factory.core.settings import Settings
from pose_factory.producer import encode, figure
from pose_factory.producer.generate import (
    batch_id_for,
    frame_view,
    plan_sample,
    pose_block,
    seal_batch,
    software_block,
    synthetic_pose,
)

RENDER_SCRIPT = Path(__file__).resolve().parents[2] / "blender" / "render_job.py"
BACKGROUND_Z = 1e9  # Cycles writes 1e10 where nothing is hit
DEFAULT_SPP = 8
_PERSON_INDEX, _FLOOR_INDEX = 1, 2
_LABELS = ("sky", "floor", "person")
_MATERIAL_COLOR = {figure._SKIN: "skin", figure._HAIR: "hair", figure._SHIRT: "shirt",
                   figure._TROUSERS: "trousers", figure._SHOES: "shoes"}


def blender_executable() -> str:
    """The Blender binary: $POSE_FACTORY_BLENDER, else `blender` on PATH."""
    exe = os.environ.get("POSE_FACTORY_BLENDER") or shutil.which("blender")
    if not exe:
        raise ToolError("blender is not installed (not on PATH)", where="generator blender",
                        hint="install it (Debian/Ubuntu: apt-get install blender; or a blender.org build) "
                             "or set POSE_FACTORY_BLENDER to the binary")
    return exe


def _sample_plan(job: dict[str, Any], index: int) -> dict[str, Any]:
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


def scene_spec(job: dict[str, Any], plans: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON render_job.py reads: image size, Cycles settings and per-sample camera, joints and body."""
    return {
        "width": job["image"]["width"], "height": job["image"]["height"],
        "samples_per_pixel": int(job["render"].get("samples", DEFAULT_SPP)), "seed": int(job["seed"]),
        "threads": int(os.environ.get("POSE_FACTORY_BLENDER_THREADS", "0")),
        "samples": [{
            "sample_id": p["sid"], "camera": _blender_camera(p["camera"]),
            "joints_world": {k: list(map(float, v)) for k, v in p["pose"].joints_world.items()},
            "primitives": _primitives_json(p["pose"]),
        } for p in plans],
    }


def run_blender(spec_path: Path, raw_dir: Path, *, timeout_s: float) -> str:
    """Run Blender on the scene file; return its output. Raises ToolError on a missing binary or failure."""
    cmd = [blender_executable(), "-b", "--factory-startup", "-noaudio", "-P", str(RENDER_SCRIPT), "--",
           str(spec_path), str(raw_dir)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"blender did not finish within {timeout_s:.0f} s", where="blender render",
                        hint="render fewer samples per job, a smaller image or fewer Cycles samples") from exc
    except OSError as exc:
        raise ToolError(f"could not start blender: {exc}", where=cmd[0]) from exc
    if done.returncode != 0 or not (raw_dir / "blender.json").is_file():
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ToolError(f"blender failed (exit {done.returncode}):\n{tail}", where="blender render",
                        hint="run the command by hand to see the full log: " + " ".join(cmd))
    return done.stdout


def _convert_sample(plan: dict[str, Any], raw: Path, out: Path, job: dict[str, Any], batch_id: str
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


def render_with_blender(job: dict[str, Any], out_root: Path, settings: Settings, batch_id: str | None = None, *,
                        replace: bool = False, timeout_s: float | None = None, progress: Progress | None = None
                        ) -> Path:
    """Render the job with Blender into `<out_root>/<batch_id>/` (written atomically) and return that folder."""
    schemas.check(job, "job", "job definition")
    if job["generator"] != "blender":
        raise UsageError(f"job generator is {job['generator']!r}, not 'blender'", where="job.generator")
    if job["render"]["engine"] not in ("CYCLES", "synthetic"):
        raise UsageError(f"render engine {job['render']['engine']!r} is not supported yet; use CYCLES",
                         where="job.render.engine")
    if job["poses"]["set"] not in figure.POSE_SETS:
        raise UsageError(f"unknown pose set {job['poses']['set']!r}", where="job.poses.set",
                         hint="known: " + ", ".join(figure.POSE_SETS))
    if job["rig"]["name"] not in figure.RIGS:
        raise UsageError(f"unknown rig {job['rig']['name']!r}", where="job.rig.name",
                         hint="known: " + ", ".join(figure.RIGS))
    blender_executable()  # fail fast, before any work, when Blender is missing
    batch_id = batch_id or batch_id_for(job, settings)
    schemas.check({**job, "batch_id": batch_id}, "job", "batch id")
    out_root = Path(out_root)
    final_dir = out_root / batch_id
    if final_dir.exists() and not replace:
        raise PoseFactoryError("a batch with this id already exists", where=str(final_dir),
                               hint="pass replace=True to replace it, or another batch id")
    out_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{batch_id}.", suffix=".partial", dir=out_root))
    scratch = Path(tempfile.mkdtemp(prefix=f".{batch_id}.", suffix=".blender", dir=out_root))
    try:
        plans = [_sample_plan(job, i) for i in range(job["samples"])]
        spec_path = scratch / "scene.json"
        spec_path.write_text(json.dumps(scene_spec(job, plans)))
        raw_dir = scratch / "raw"
        pixels = job["image"]["width"] * job["image"]["height"] * int(job["render"].get("samples", DEFAULT_SPP))
        timeout = timeout_s if timeout_s is not None else 120.0 + job["samples"] * (30.0 + pixels / 2e4)
        started = time.perf_counter()
        run_blender(spec_path, raw_dir, timeout_s=timeout)
        info = json.loads((raw_dir / "blender.json").read_text())
        info["wall_seconds"] = round(time.perf_counter() - started, 3)

        for modality in job["render"]["modalities"]:
            (work / contract.MODALITIES[modality][0]).mkdir()
        (work / "annotations").mkdir()
        progress = progress or Progress(enabled=False)
        samples = []
        with progress.task(f"convert {batch_id}", len(plans), "samples") as bar:
            for plan in plans:
                samples.append(_convert_sample(plan, raw_dir / plan["sid"], work, job, batch_id))
                bar.advance()
        software = software_block()
        software.update({"generator": "pose-factory-blender", "blender_version": info["blender_version"],
                         "render_engine": info["render_engine"], "gpu": None,
                         "python_version": platform.python_version()})
        seal_batch(work, final_dir, job, batch_id, samples, software)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final_dir
