"""`pose-sync worker run JOB_ID`: what a pod runs. Reads the job from the bucket, renders the batch,
publishes it (completion marker last) and keeps a status object with a heartbeat in the bucket, so the
laptop can follow the job and shut the pod down when it is done, stuck or failed.

Status object: `<jobs prefix><job_id>/status.json` =
`{"version": 1, "job_id", "state": "starting"|"rendering"|"publishing"|"done"|"failed", "samples_done",
"samples_total", "batch_id", "error", "updated_at"}`; `updated_at` is refreshed every heartbeat interval.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pose_factory.bucket.backends import Storage, join_key
from pose_factory.bucket.jobs import job_key
from pose_factory.core import contract
from pose_factory.core.errors import PoseFactoryError
from pose_factory.core.progress import Progress, Task
from pose_factory.core.settings import Settings

STATUS_VERSION = 1
HEARTBEAT_S = 5.0


def status_key(settings: Settings, job_id: str) -> str:
    return join_key(settings.prefixes.jobs, job_id, "status.json")


class _CountingProgress(Progress):
    """Progress that remembers its current task, so the heartbeat can report samples rendered."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.current: Task | None = None

    @contextmanager
    def task(self, description: str, total: float, unit: str = "files") -> Iterator[Task]:
        with super().task(description, total, unit) as task:
            self.current = task
            yield task


class StatusWriter:
    """Writes the job's status object now and then every heartbeat interval until stopped."""

    def __init__(self, storage: Storage, settings: Settings, job_id: str, total: int, interval_s: float):
        self.storage, self.key, self.interval = storage, status_key(settings, job_id), interval_s
        self.state: dict[str, Any] = {"version": STATUS_VERSION, "job_id": job_id, "state": "starting",
                                      "samples_done": 0, "samples_total": total, "batch_id": None, "error": None}
        self.progress = _CountingProgress()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def write(self, **changes: Any) -> None:
        self.state.update(changes)
        if self.progress.current is not None and self.state["state"] == "rendering":
            self.state["samples_done"] = int(self.progress.current.done)
        self.state["updated_at"] = contract.utc_now_precise()
        self.storage.put_bytes(self.key, json.dumps(self.state).encode())

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except PoseFactoryError:
                pass  # a missed heartbeat is what the laptop watches for; the render goes on

    def __enter__(self) -> StatusWriter:
        self.write()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_worker(storage: Storage, settings: Settings, job_id: str, *, heartbeat_s: float = HEARTBEAT_S) -> str:
    """Render and publish the job's batch; return its batch id. Failures are written to the status object."""
    from pose_factory.bucket.batches import publish_batch
    from pose_factory.producer.generate import generate_batch

    job = json.loads(storage.read_bytes(job_key(settings, job_id)))
    with StatusWriter(storage, settings, job_id, job["samples"], heartbeat_s) as status:
        try:
            with tempfile.TemporaryDirectory(prefix="pose-factory-worker-") as scratch:
                prepared = None
                if job["generator"] == "blender" and job["scene"].get("blend_file"):
                    from pose_factory.producer.blender_render import prepare_scene

                    prepared = prepare_scene(job, settings, storage, Path(scratch))  # SceneError: failed, not rendered
                status.write(state="rendering")
                if job["generator"] == "blender":
                    from pose_factory.producer.blender_render import render_with_blender

                    batch_dir = render_with_blender(job, Path(scratch), settings, replace=True,
                                                    progress=status.progress, prepared=prepared)
                else:
                    batch_dir = generate_batch(job, Path(scratch), settings, replace=True,
                                               progress=status.progress).batch_dir
                status.write(state="publishing", samples_done=job["samples"], batch_id=batch_dir.name)
                publish_batch(storage, settings, batch_dir)
            status.write(state="done")
            return batch_dir.name
        except BaseException as exc:
            message = exc.message if isinstance(exc, PoseFactoryError) else f"{type(exc).__name__}: {exc}"
            status.write(state="failed", error=message)
            raise
