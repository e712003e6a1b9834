"""The pipeline from the user's side: `prepare-batch` (choose a batch, run `dvc repro`) and the ComfyUI link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pose_factory.core.errors import PoseFactoryError, RepositoryError, ToolError, UsageError
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvcrepo, params
from pose_factory.dataset.materialize import describe

WORKING_SET = Path("data") / "working" / "current_batch"


def prepare_batch(settings: Settings, batch_id: str) -> dict[str, Any]:
    """Select one registered batch as the working set in params.yaml and run `dvc repro`."""
    dvcrepo.require_repository(settings.root)
    document = params.read_params(settings)
    if batch_id not in (document.get("batches") or []):
        archived = batch_id in (document.get("archived") or [])
        raise RepositoryError(f"{batch_id} is not in the pipeline's batches", where=str(settings.params_file),
                              hint=f"`pose-sync restore {batch_id}` first" if archived
                              else f"`pose-sync pull {batch_id}` first")
    working = document.get("working")
    if working is None:
        document["working"] = working = {}
    working["batches"] = [batch_id]
    params.write_params(settings, document)
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=settings.root, text=True,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if done.returncode != 0:
        raise ToolError("dvc repro failed (its output is above)", where=str(settings.root),
                        hint="a batch that fails validation is listed with its problems above")
    return describe(settings.root / WORKING_SET)


def link_into_comfyui(settings: Settings, comfyui_dir: Path, name: str) -> tuple[Path, Path]:
    """Symlink the working set to `<COMFYUI_DIR>/input/<name>`; a swapped-in set shows up there at once."""
    comfyui_dir = comfyui_dir.expanduser().resolve()
    if not (comfyui_dir / "input").is_dir() and not (comfyui_dir / "main.py").is_file():
        raise UsageError("this does not look like a ComfyUI folder (no input/ and no main.py)", where=str(comfyui_dir),
                         hint="give the folder that holds ComfyUI's main.py")
    if "/" in name or name in ("", ".", ".."):
        raise UsageError(f"{name!r} is not a folder name", where="--name")
    target = settings.root / WORKING_SET
    if not (target / "index.json").is_file():
        raise PoseFactoryError("there is no working set yet", where=str(target),
                               hint="run `dvc repro` or `pose-sync prepare-batch BATCH_ID` first")
    link = comfyui_dir / "input" / name
    link.parent.mkdir(exist_ok=True)
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise UsageError("a real folder or file with that name is already in ComfyUI's input/", where=str(link),
                         hint="choose another --name; nothing was changed")
    link.symlink_to(target, target_is_directory=True)
    return link, target
