"""The pipeline from the user's side: `prepare-batch` (choose a batch, run `dvc repro`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pose_factory.core.errors import PoseFactoryError, RepositoryError, ToolError
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
        # The working set is a persisted output built beside the old one, so a failed repro leaves the old one.
        try:
            kept = f"the previous working set ({', '.join(describe(settings.root / WORKING_SET)['batches'])}) is " \
                   "still in place for ComfyUI"
        except PoseFactoryError:
            kept = "there is no working set yet"
        raise ToolError("dvc repro failed (its output is above)", where=str(settings.root),
                        hint=f"{kept}; params.yaml now asks for {batch_id}: fix what is listed above (a batch that "
                             "fails validation is listed with its problems), then run `dvc repro`")
    return describe(settings.root / WORKING_SET)
