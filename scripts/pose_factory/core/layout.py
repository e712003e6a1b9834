"""Where things live. Every other module asks here instead of building paths itself."""

from __future__ import annotations

import os
from pathlib import Path

# The repository this code is part of (scripts/pose_factory/ -> repo root). Schemas travel with the code.
CODE_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = CODE_ROOT / "schemas"

MANIFEST_NAME = "manifest.json"
COMPLETE_MARKER_NAME = "_complete.json"
ANNOTATIONS_FOLDER = "annotations"


def project_root() -> Path:
    """The dataset repository the command works on.

    POSE_FACTORY_ROOT wins; else the nearest folder above the working directory that holds both
    `.dvc/` and `config/` (so a second clone works on itself); else the repository of this code.
    """
    override = os.environ.get("POSE_FACTORY_ROOT")
    if override:
        return Path(override).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir() and (folder / "config").is_dir():
            return folder
    return CODE_ROOT
