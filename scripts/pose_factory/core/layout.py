"""Where things live. Every other module asks here instead of building paths itself."""

from __future__ import annotations

import os
from pathlib import Path

# The repository this code is part of (scripts/pose_factory/ -> repo root). Schemas travel with the code.
CODE_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = CODE_ROOT / "schemas"

# Pages for people (`pose-sync review`, `show`), relative to the project root; git-ignored.
REVIEW_PAGES = Path("data") / "reports" / "review"
CONTACT_SHEET_PAGES = Path("data") / "reports" / "show"
# The ComfyUI working set `dvc repro` builds (the materialize stage's output), relative to the project root.
WORKING_SET = Path("data") / "working" / "current_batch"

MANIFEST_NAME = "manifest.json"
COMPLETE_MARKER_NAME = "_complete.json"
ANNOTATIONS_FOLDER = "annotations"


ENV_ROOT = "POSE_FACTORY_ROOT"
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
