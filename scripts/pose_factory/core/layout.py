"""Where things live. Every other module asks here instead of building paths itself.

A project's folders are fixed relative to its root: they are part of the repository (dvc.yaml names them,
git records the `.dvc` files and `.gitignore` entries in them), so every clone must agree on them and no
setting moves them. `Layout(root)` gives each one as an absolute path (`Settings.layout` is the project's);
the relative forms below are what dvc.yaml writes out (tests/test_layout.py compares the two).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pose_factory.core.envnames import ENV_ROOT

# The repository this code is part of (scripts/pose_factory/ -> repo root). Schemas travel with the code.
CODE_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = CODE_ROOT / "schemas"

# --- a project's folders, relative to its root ----------------------------------------------------------
DATA = Path("data")
RAW = DATA / "raw"  # the mirror and, beside it, the lock, journals and staging of the commands that change it
MIRROR = RAW / "pose-factory"
TRANSACTION = RAW / ".pose-sync"
ARCHIVE = DATA / "archive" / "pose-factory"
WORKING = DATA / "working"
# The ComfyUI working set `dvc repro` builds (the materialize stage's output).
WORKING_SET = WORKING / "current_batch"
COMFYUI_OUTPUTS = WORKING / "outputs"
VALIDATION_REPORTS = DATA / "reports" / "validate"
# Pages for people (`pose-sync review`, `show`); git-ignored.
REVIEW_PAGES = DATA / "reports" / "review"
CONTACT_SHEET_PAGES = DATA / "reports" / "show"
CURATION = DATA / "curation"
CACHE = DATA / "cache"
JOBS = DATA / "jobs"
# The embedded bucket without an R2 account: the default of the setting storage.local_bucket_dir.
LOCAL_BUCKET = DATA / "local-bucket"
# Where the README and hints suggest `generate --out` (a pod's output folder, on the laptop).
POD_OUTBOX = DATA / "pod-outbox"
# `make demo`'s sandbox repository and DVC remote, in the code's own checkout.
DEMO = DATA / "demo"
# Blender scenes, HDRIs and motion files of render jobs (POSE_FACTORY_ASSETS overrides it).
ASSETS = Path("assets")
PARAMS_FILE = Path("params.yaml")
CONFIG_FILE = Path("config") / "local.yaml"


@dataclass(frozen=True)
class Layout:
    """Every folder of one project, as absolute paths."""

    root: Path
    # A setting (storage.local_bucket_dir), resolved against the root: the local bucket is no part of the
    # repository, so each machine may put it where it likes.
    local_bucket_dir: Path

    @classmethod
    def of(cls, root: Path) -> Layout:
        """The layout of the project at root, with the local bucket where it is by default."""
        return cls(root, root / LOCAL_BUCKET)

    @property
    def raw_dir(self) -> Path:
        """`data/raw/`: the mirror and the transaction folder beside it."""
        return self.root / RAW

    @property
    def mirror_dir(self) -> Path:
        """`data/raw/pose-factory/`: the read-only mirror of the bucket's batches, one folder per batch."""
        return self.root / MIRROR

    @property
    def transaction_dir(self) -> Path:
        """`data/raw/.pose-sync/`: the lock, journals and staging of the commands that change the mirror.

        Beside the mirror, so a verified batch enters it by a rename on the same filesystem; it ignores
        itself in git (its own .gitignore) and is outside every folder DVC tracks.
        """
        return self.root / TRANSACTION

    @property
    def staging_dir(self) -> Path:
        """Downloads land here and are verified before they enter the mirror."""
        return self.transaction_dir / "staging"

    @property
    def seal_dir(self) -> Path:
        """What each batch folder looked like when pull or fetch last put it in step with its .dvc file (dvccache):
        `status` reads these instead of asking DVC to stat every file."""
        return self.transaction_dir / "seals"

    @property
    def fetch_dir(self) -> Path:
        """`pose-sync fetch`'s downloads and the folders it builds, before they enter DVC's cache and the mirror."""
        return self.transaction_dir / "fetch"

    @property
    def journal_dir(self) -> Path:
        """One journal per batch a pull, archive or restore is changing."""
        return self.transaction_dir / "journal"

    @property
    def lock_file(self) -> Path:
        """The repository lock `pull`, `archive` and `restore` hold for their whole run."""
        return self.transaction_dir / "lock"

    @property
    def archive_dir(self) -> Path:
        """`data/archive/pose-factory/`: archived batches, still versioned, out of the pipeline."""
        return self.root / ARCHIVE

    @property
    def working_set(self) -> Path:
        """`data/working/current_batch/`: the folder ComfyUI reads, built by the materialize stage."""
        return self.root / WORKING_SET

    @property
    def comfyui_outputs(self) -> Path:
        """`data/working/outputs/<batch>/<workflow>/`: what `comfyui queue` downloads, with its records."""
        return self.root / COMFYUI_OUTPUTS

    @property
    def validation_reports(self) -> Path:
        """`data/reports/validate/<batch>/`: the validate stage's metrics, report and plots."""
        return self.root / VALIDATION_REPORTS

    @property
    def review_pages(self) -> Path:
        return self.root / REVIEW_PAGES

    @property
    def contact_sheet_pages(self) -> Path:
        return self.root / CONTACT_SHEET_PAGES

    @property
    def curation_dir(self) -> Path:
        """`data/curation/`: one decisions file per curated batch (git-tracked; a dependency of materialize)."""
        return self.root / CURATION

    @property
    def cache_dir(self) -> Path:
        """`data/cache/`: things made once and kept out of git (the curation page's thumbnails)."""
        return self.root / CACHE

    @property
    def jobs_dir(self) -> Path:
        """`data/jobs/<job>.json`: the RunPod jobs submitted from this project."""
        return self.root / JOBS

    @property
    def assets_dir(self) -> Path:
        return self.root / ASSETS

    @property
    def params_file(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE


MANIFEST_NAME = "manifest.json"
COMPLETE_MARKER_NAME = "_complete.json"
TOMBSTONE_NAME = "_pruned.json"  # a batch pruned from the bucket (prune-bucket): its version is in the DVC remote
ANNOTATIONS_FOLDER = "annotations"


# What makes a folder a Pose Factory project (a clone of the dataset repository): DVC's folder and the
# settings folder. The start-up hook (envhook) recognises a project the same way.
PROJECT_MARKERS = (".dvc", "config")


def is_project(folder: Path) -> bool:
    """Whether a folder is the root of a Pose Factory project."""
    return all((folder / marker).is_dir() for marker in PROJECT_MARKERS)


def find_project_root(start: Path | None = None) -> Path | None:
    """The project a command works on, or None outside any.

    POSE_FACTORY_ROOT wins; else the nearest folder at or above the working directory that holds both
    `.dvc/` and `config/`, as git looks for `.git/`. Never the repository this code was installed from:
    a command run outside a project must not read or commit someone else's files.
    """
    override = os.environ.get(ENV_ROOT)
    if override:
        return Path(override).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if is_project(folder)), None)


def project_root() -> Path:
    """The project root; RepositoryError (exit 10, like git's "not a git repository") outside any."""
    from pose_factory.core.errors import RepositoryError

    root = find_project_root()
    if root is None:
        raise RepositoryError("not a Pose Factory project, nor is any folder above it", where=str(Path.cwd()),
                              hint="run it inside your clone of the dataset repository (a folder with .dvc/ and "
                                   f"config/), or point {ENV_ROOT} at one")
    if not root.is_dir():
        raise RepositoryError(f"{ENV_ROOT} names a folder that does not exist", where=str(root),
                              hint=f"point {ENV_ROOT} at your dataset repository, or unset it")
    return root
