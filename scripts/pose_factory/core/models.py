"""The shapes of the JSON documents the code passes around, as TypedDicts: what a key holds, for mypy and for
the reader. They are the JSON Schemas in schemas/ said in Python (`tests/test_models.py` holds each one to its
schema: same keys, same required keys, same simple types), so the schemas stay what a document is checked
against and these are what the code is checked against.

A document read from outside becomes one of these only after its schema check (`contract.load_manifest`,
`bucket.jobs.read_job`, ...). Nested parts the code does not look into stay `dict[str, Any]`.
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired[...] when the class is made, so the
# annotations must be real objects for __required_keys__ to be right (Python 3.11).
from typing import Any, Literal, NotRequired, TypedDict

# --- the render job (schemas/job.schema.json) ------------------------------------------------------------


class ImageSize(TypedDict):
    width: int
    height: int


class JobScene(TypedDict):
    name: str
    blend_file: NotRequired[str]
    blend_sha256: NotRequired[str]
    hdri: NotRequired[str]
    hdri_strength: NotRequired[float]
    default_class: NotRequired[str]


class JobRig(TypedDict):
    name: str
    character: NotRequired[str]
    armature: NotRequired[str]
    mapping: NotRequired[str | dict[str, str | list[str]]]


class JobPoses(TypedDict):
    set: str
    motion_file: NotRequired[str]
    motion_scale: NotRequired[float]
    action: NotRequired[str]
    frame_step: NotRequired[int]
    sampling: NotRequired[Literal["spread", "sequential"]]
    frame_start: NotRequired[int]
    frame_end: NotRequired[int]


class JobCameras(TypedDict):
    azimuths_deg: list[float]
    elevations_deg: list[float]
    distances_m: list[float]
    focal_length_mm: float
    sensor_width_mm: NotRequired[float]


class JobRender(TypedDict):
    engine: Literal["synthetic", "CYCLES", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH"]
    samples: NotRequired[int]
    modalities: list[str]
    device: NotRequired[Literal["auto", "CPU", "GPU"]]
    keypoints: NotRequired[Literal["detector", "all"]]
    stick_scale: NotRequired[float]


class Job(TypedDict):
    """A render job: what one pod run (or `pose-sync generate`) renders into one batch."""

    schema_version: str
    job_id: str
    project: str
    batch_id: NotRequired[str]
    generator: Literal["blender", "synthetic"]
    scene: JobScene
    rig: JobRig
    poses: JobPoses
    cameras: JobCameras
    image: ImageSize
    samples: int
    seed: int
    render: JobRender
    tags: NotRequired[list[str]]


# --- the batch manifest (schemas/manifest.schema.json) ---------------------------------------------------


class Software(TypedDict):
    generator: str
    generator_version: str
    generator_commit: NotRequired[str | None]
    blender_version: NotRequired[str | None]
    render_engine: NotRequired[str]
    gpu: NotRequired[str | None]
    render_device: NotRequired[str]
    python_version: NotRequired[str]
    libraries: NotRequired[dict[str, str]]


class Modality(TypedDict):
    folder: str
    extension: Literal[".png", ".json"]
    format: str


class ManifestSample(TypedDict):
    """One sample in the manifest: where its annotation and its file of each modality are."""

    sample_id: str
    annotation: str
    files: dict[str, str]


class FileEntry(TypedDict):
    """One file of the batch as the manifest lists it."""

    path: str
    size: int
    sha256: str


class Totals(TypedDict):
    samples: int
    files: int
    bytes: int


class Manifest(TypedDict):
    """`manifest.json` at the root of a batch."""

    schema_version: str
    batch_id: str
    project: str
    created_at: str
    job: Job
    software: Software
    conventions: dict[str, Any]
    image: ImageSize
    modalities: dict[str, Modality]
    samples: list[ManifestSample]
    files: list[FileEntry]
    totals: Totals


class CompletionMarker(TypedDict):
    """`_complete.json`, uploaded last (schemas/complete.schema.json)."""

    version: Literal[1]
    batch_id: str
    manifest_sha256: str
    project: str
    created_at: str
    samples: int
    files: int
    bytes: int
    completed_at: str


# --- the per-sample annotation (schemas/sample.schema.json) ----------------------------------------------


class Camera(TypedDict):
    width: int
    height: int
    K: list[list[float]]
    R_w2c: list[list[float]]
    t_w2c: list[float]
    azimuth_deg: float
    elevation_deg: float
    distance_m: float
    focal_length_mm: float
    view_index: NotRequired[int]
    target: NotRequired[list[float]]


class Pose(TypedDict):
    set: str
    rig: str
    frame: int
    phase: NotRequired[float]
    joint_angles_deg: NotRequired[dict[str, float]]


class Person(TypedDict):
    instance_id: int
    keypoints_2d: list[list[float]]  # [x, y, visibility] per COCO-18 joint
    keypoints_3d_cam: NotRequired[list[list[float]]]
    bbox: list[float]
    visible_fraction: float


class Annotation(TypedDict):
    """`annotations/<sample_id>.json`: the camera, the pose and every person's keypoints of one sample."""

    schema_version: str
    batch_id: str
    sample_id: str
    index: int
    files: dict[str, str]
    camera: Camera
    pose: Pose
    persons: list[Person]
    depth_range_m: list[float]
    tags: NotRequired[list[str]]


# --- the working set's index.json (schemas/index.schema.json) --------------------------------------------


class IndexFields(TypedDict):
    """What index.json keeps of a sample's annotation (its IndexRow's metadata, read by materialize)."""

    azimuth_deg: float
    elevation_deg: float
    distance_m: float
    focal_length_mm: float
    rig: str
    pose_set: str
    frame: int
    visible_fraction: float | None
    bbox: list[float] | None


class IndexRow(IndexFields):
    """One sample of the working set: its files there, where they came from, and the metadata to filter on."""

    index: int
    name: str
    batch_id: str
    sample_id: str
    files: dict[str, str]
    source: dict[str, str]


class IndexBatch(TypedDict):
    batch_id: str
    manifest_sha256: str


class WorkingIndex(TypedDict):
    """`data/working/current_batch/index.json`."""

    version: int
    batches: list[IndexBatch]
    modalities: list[str]
    link_mode: Literal["hardlink", "symlink", "copy", "clone"]
    working: dict[str, Any]
    samples: list[IndexRow]
