"""`pose-sync generate`: a realistic synthetic batch without a GPU or Blender (the pod's stand-in).

Writes the whole batch into a hidden temporary folder next to the destination and renames it into
place only when every file and the manifest are written, so an interrupted run leaves nothing that
looks like a batch.
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pose_factory import __version__
from pose_factory.core import contract, killpoint, schemas
from pose_factory.core.errors import PoseFactoryError, UsageError
from pose_factory.core.fsutil import held_work_dir, swap_dir
from pose_factory.core.layout import MANIFEST_NAME
from pose_factory.core.progress import Progress
from pose_factory.core.settings import Settings

if TYPE_CHECKING:
    from pose_factory.core.models import Job

DEFAULT_AZIMUTHS: list[float] = [0, 45, 90, 135, 180, 225, 270, 315]
DEFAULT_SIZE = (1024, 1024)
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def parse_size(text: str) -> tuple[int, int]:
    """'1024x768' -> (1024, 768)."""
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match:
        raise UsageError(f"image size {text!r} is not WIDTHxHEIGHT", where="--size", hint="e.g. --size 1024x1024")
    width, height = int(match.group(1)), int(match.group(2))
    if not (16 <= width <= 8192 and 16 <= height <= 8192):
        raise UsageError(f"image size {text!r} is out of range 16..8192", where="--size")
    return width, height


def default_job(project: str, samples: int, size: tuple[int, int], seed: int, pose_set: str = "run-cycle",
                rig: str = "mannequin-a", keypoints: Literal["detector", "all"] = "detector") -> Job:
    """The job a pod would receive, for a synthetic batch."""
    if not SLUG.match(project):
        raise UsageError(f"project {project!r} is not a slug (lowercase letters, digits and '-')", where="--project",
                         hint="e.g. --project run-cycle")
    return {
        "schema_version": contract.CONTRACT_VERSION,
        "job_id": f"job-{project}-{seed}",
        "project": project,
        "generator": "synthetic",
        "scene": {"name": "studio-floor"},
        "rig": {"name": rig, "character": "mannequin"},
        "poses": {"set": pose_set},
        "cameras": {"azimuths_deg": DEFAULT_AZIMUTHS, "elevations_deg": [10], "distances_m": [4.0],
                    "focal_length_mm": 50},
        "image": {"width": size[0], "height": size[1]},
        "samples": samples,
        "seed": seed,
        "render": {"engine": "synthetic", "modalities": list(contract.DEFAULT_MODALITIES), "keypoints": keypoints},
    }


def load_job(path: Path) -> Job:
    """Read and schema-check a job definition file."""
    job = schemas.load_json(path)
    schemas.check(job, "job", str(path))
    return job


def batch_id_for(job: Job, settings: Settings, on: date | None = None) -> str:
    """The batch id from the naming convention (date + project), unless the job names one."""
    if job.get("batch_id"):
        return job["batch_id"]
    # The UTC day, the same clock as the manifest's created_at, so the two never disagree near midnight.
    day = (on or contract.utc_today()).strftime(settings.date_format)
    return settings.batch_pattern.format(date=day, project=job["project"])


def camera_views(job: Job) -> list[tuple[float, float, float]]:
    """(azimuth, elevation, distance) for every view, azimuths varying slowest."""
    cams = job["cameras"]
    return list(itertools.product(cams["azimuths_deg"], cams["elevations_deg"], cams["distances_m"]))


def spread_order(count: int) -> list[int]:
    """0..count-1 in bit-reversed order (0, 4, 2, 6, 1, 5, 3, 7 for 8): every prefix is spread evenly."""
    bits = max(1, (count - 1).bit_length())
    order = [int(format(i, f"0{bits}b")[::-1], 2) for i in range(1 << bits)]
    return [i for i in order if i < count]


@dataclass(frozen=True)
class SamplePlan:
    """Which camera view and which pose sample `index` shows."""

    index: int
    view_index: int
    azimuth: float
    elevation: float
    distance: float
    frame: int                    # the annotation's pose.frame
    position: float | None        # spread sampling: fraction of the cycle / clip, in [0, 1)


def plan_sample(job: Job, index: int) -> SamplePlan:
    """The documented sampling (docs/batch-contract.md, section 3) of sample `index`.

    `spread` (default): views in bit-reversed order of the view list, so any number of samples covers the
    azimuths evenly; poses stratified over the whole cycle or clip, position (i + u_i) / N with a seeded
    u_i in [0, 1), so every sample has its own phase. `sequential` (contract 1.0): view i mod V, frame
    (i div V) x frame_step.
    """
    views = camera_views(job)
    poses = job["poses"]
    if poses.get("sampling", "spread") == "sequential":
        view_index = index % len(views)
        frame = poses.get("frame_start", 0) + (index // len(views)) * poses.get("frame_step", 1)
        position = None
    else:
        view_index = spread_order(len(views))[index % len(views)]
        jitter = float(np.random.default_rng((int(job["seed"]), int(index), 0x5A3)).uniform())
        position = (index + jitter) / job["samples"]
        frame = index
    azimuth, elevation, distance = views[view_index]
    return SamplePlan(index, view_index, float(azimuth), float(elevation), float(distance), frame, position)


def frame_view(job: Job, plan: SamplePlan, lo: np.ndarray, hi: np.ndarray) -> Any:
    """The framed camera of a sample around the body's bounding box (see figure.frame_camera)."""
    from pose_factory.producer import figure

    cams = job["cameras"]
    return figure.frame_camera(lo, hi, plan.azimuth, plan.elevation, plan.distance, cams["focal_length_mm"],
                               job["image"]["width"], job["image"]["height"], cams.get("sensor_width_mm", 36.0))


def synthetic_pose(job: Job, plan: SamplePlan) -> Any:
    """The built-in pose of a sample."""
    from pose_factory.producer import figure

    return figure.make_pose(job["poses"]["set"], job["rig"]["name"], job["seed"], plan.frame, plan.position)


@dataclass(frozen=True)
class _SampleTask:
    index: int
    job: Job
    batch_id: str
    out_dir: str


def _render_sample(task: _SampleTask) -> dict[str, Any]:
    """Render and write one sample; return its manifest `samples` entry. Runs in a worker process."""
    from pose_factory.producer import encode, figure

    job = task.job
    plan = plan_sample(job, task.index)
    pose = synthetic_pose(job, plan)
    camera = frame_view(job, plan, *figure.body_bounds(pose))
    encoded = encode.encode_view(figure.render_view(pose, camera), encode.Options.from_job(job))
    return encode.write_sample(Path(task.out_dir), job, task.batch_id, task.index, encoded,
                               encode.camera_block(camera, plan.view_index, job["cameras"]["focal_length_mm"]),
                               pose_block(pose, plan.frame))


def pose_block(pose: Any, frame: int) -> dict[str, Any]:
    """The annotation's `pose` object for a built-in pose."""
    return {"set": pose.pose_set, "rig": pose.rig, "frame": frame, "phase": round(float(pose.phase), 6),
            "joint_angles_deg": {k: round(float(v), 4) for k, v in sorted(pose.joint_angles_deg.items())}}


def software_block() -> dict[str, Any]:
    """The manifest's `software` block for this package (renderers fill in their own fields)."""
    import PIL

    return {"generator": "pose-factory-synthetic", "generator_version": __version__, "generator_commit": None,
            "blender_version": None, "render_engine": "synthetic", "gpu": None,
            "python_version": platform.python_version(),
            "libraries": {"numpy": np.__version__, "pillow": PIL.__version__}}


@dataclass(frozen=True)
class GenerateResult:
    batch_id: str
    batch_dir: Path
    samples: int
    files: int
    bytes: int


def generate_batch(job: Job, out_root: Path, settings: Settings, *, batch_id: str | None = None,
                   replace: bool = False, workers: int | None = None, progress: Progress | None = None,
                   indices: range | None = None) -> GenerateResult:
    """Render every sample of the job (or only `indices`: one shard) into `<out_root>/<batch_id>/` with its manifest."""
    from pose_factory.producer import figure

    schemas.check(job, "job", "job definition")
    if job["poses"]["set"] not in figure.POSE_SETS:
        raise UsageError(f"unknown pose set {job['poses']['set']!r}", where="job.poses.set",
                         hint="the synthetic generator knows: " + ", ".join(figure.POSE_SETS))
    if job["rig"]["name"] not in figure.RIGS:
        raise UsageError(f"unknown rig {job['rig']['name']!r}", where="job.rig.name",
                         hint="the synthetic generator knows: " + ", ".join(figure.RIGS))
    batch_id = batch_id or batch_id_for(job, settings)
    schemas.check({**job, "batch_id": batch_id}, "job", "batch id")
    final_dir = out_root / batch_id
    if final_dir.exists() and not replace:
        raise PoseFactoryError("a batch with this id already exists", where=str(final_dir),
                               hint="pass --force to replace it, or --batch-id for another id")
    out_root.mkdir(parents=True, exist_ok=True)
    # Held while it runs: a generate killed at any instant leaves its folder, and the next one here removes it.
    with held_work_dir(out_root, f".{batch_id}.", ".partial") as work:
        try:
            for modality in job["render"]["modalities"]:
                (work / contract.MODALITIES[modality][0]).mkdir()
            (work / "annotations").mkdir()
            wanted = indices if indices is not None else range(job["samples"])
            tasks = [_SampleTask(i, job, batch_id, str(work)) for i in wanted]
            workers = workers or min(os.cpu_count() or 1, max(1, len(tasks) // 4))
            progress = progress or Progress(enabled=False)
            with progress.task(f"generate {batch_id}", len(tasks), "samples") as bar:
                if workers > 1:
                    with ProcessPoolExecutor(workers) as pool:
                        samples = []
                        for entry in pool.map(_render_sample, tasks, chunksize=4):
                            samples.append(entry)
                            bar.advance()
                            killpoint.reached("generate:sample")
                else:
                    samples = []
                    for task in tasks:
                        samples.append(_render_sample(task))
                        bar.advance()
                        killpoint.reached("generate:sample")
            manifest = seal_batch(work, final_dir, job, batch_id, samples, software_block())
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    totals = manifest["totals"]
    return GenerateResult(batch_id, final_dir, totals["samples"], totals["files"], totals["bytes"])


def seal_batch(work: Path, final_dir: Path, job: Job, batch_id: str, samples: list[dict[str, Any]],
               software: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest of a fully rendered batch folder and rename it into place; return the manifest.

    Shared by every renderer (synthetic, Blender), so all batches get the same manifest and the same
    all-or-nothing arrival.
    """
    from pose_factory.producer import encode

    rel_files = [p.relative_to(work).as_posix() for p in sorted(work.rglob("*")) if p.is_file()]
    files = contract.file_entries(work, rel_files)
    manifest = {
        "schema_version": contract.CONTRACT_VERSION,
        "batch_id": batch_id,
        "project": job["project"],
        "created_at": contract.utc_now(),
        "job": job,
        "software": software,
        "conventions": encode.conventions(job),
        "image": dict(job["image"]),
        "modalities": contract.modalities_block(job["render"]["modalities"]),
        "samples": samples,
        "files": files,
        "totals": {"samples": len(samples), "files": len(files), "bytes": sum(f["size"] for f in files)},
    }
    schemas.check(manifest, "manifest", f"{batch_id}/{MANIFEST_NAME}")
    (work / MANIFEST_NAME).write_bytes(contract.dumps(manifest))
    swap_dir(work, final_dir)  # an earlier batch of the same id (--force) leaves only once this one is in place
    return manifest
