"""`pose-sync worker run JOB_ID`: what a pod runs (the worker image's command).

The worker needs nothing but the image's files and the pod's request: its settings (bucket, prefixes,
RunPod API URL, how to shut down) come in `POSE_FACTORY_WORKER_SETTINGS` (JSON, no secrets), the R2
credentials in the pod's environment (as RunPod secrets when the user set them up), the job id, batch id
and shard on the command line. No project folder, no config/ or .dvc/ is read.

RunPod restarts a pod's container whenever its command exits, so the worker is idempotent: a batch (or
shard) already complete in the bucket for this job is not rendered again, and a restart never removes a
completion marker. A failure is recorded durably in the status object, which a restart of the same pod
does not overwrite; a container that keeps restarting mid-render is recorded as failed after
`runpod.worker_max_restarts`. When it is done (or failed) the worker stops or terminates its own pod with
the pod-scoped `RUNPOD_POD_ID` / `RUNPOD_API_KEY` that RunPod sets in every pod; the laptop's
`job watch` shuts pods down too, as the second line of defence.

Status object `<jobs prefix><job_id>/shards/<k>/status.json`: `{"version": 2, "job_id", "shard", "shards",
"pod_id", "state": "starting"|"rendering"|"publishing"|"done"|"failed", "samples_done", "samples_total",
"batch_id", "error", "restarts", "note", "updated_at"}`; `updated_at` is refreshed every heartbeat.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from pose_factory.bucket.backends import Storage, join_key
from pose_factory.bucket.jobs import MAX_JOB_BYTES, read_job
from pose_factory.core import contract, schemas
from pose_factory.core.envnames import ENV_POD_ID, ENV_RUNPOD_API_KEY, ENV_WORKER_SETTINGS
from pose_factory.core.errors import (
    ConfigError,
    ObjectMissingError,
    PoseFactoryError,
    RunPodError,
    SchemaError,
    UsageError,
)
from pose_factory.core.fsutil import held_work_dir
from pose_factory.core.progress import Progress, Task
from pose_factory.core.settings import Settings

if TYPE_CHECKING:
    from pose_factory.core.models import Job

STATUS_VERSION = 2
HEARTBEAT_S = 5.0
LINGER_S = 120.0  # after asking RunPod to shut the pod down, wait to be stopped rather than exit (and restart)


@dataclass(frozen=True)
class Shard:
    """Which part of the job this pod renders: shard `index` of `count` (count 1: the whole batch)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'2/4' -> Shard(2, 4)."""
        match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
        if not match or not int(match.group(1)) < int(match.group(2)):
            raise UsageError(f"{text!r} is not a shard K/N with 0 <= K < N", where="--shard", hint="e.g. --shard 0/4")
        return cls(int(match.group(1)), int(match.group(2)))

    def samples(self, total: int) -> range:
        """The contiguous sample indices of this shard (N samples split as evenly as possible)."""
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)


def shard_prefix(settings: Settings, job_id: str, index: int) -> str:
    return join_key(settings.prefixes.jobs, job_id, "shards", str(index)) + "/"


def status_key(settings: Settings, job_id: str, index: int = 0) -> str:
    """Where the worker of shard `index` keeps its status and heartbeat."""
    return shard_prefix(settings, job_id, index) + "status.json"


def shard_record_key(settings: Settings, job_id: str, index: int) -> str:
    """Where a published shard's record goes (written last: the shard is done)."""
    return shard_prefix(settings, job_id, index) + "shard.json"


def read_json(storage: Storage, key: str) -> dict[str, Any] | None:
    """A small JSON object from the bucket; None when missing or unreadable."""
    try:
        document = schemas.parse_json(storage.read_bytes(key, MAX_JOB_BYTES), key)
    except (ObjectMissingError, SchemaError):
        return None
    return document if isinstance(document, dict) else None


def shard_identity(job: Job, batch_id: str, shard: Shard) -> dict[str, Any]:
    """What a shard record must match to count for this job: same job, batch, split and range."""
    samples = shard.samples(job["samples"])
    return {"job_id": job["job_id"], "shard": shard.index, "shards": shard.count, "first": samples.start,
            "count": len(samples), "job": job}


def shard_record_matches(record: dict[str, Any] | None, job: Job, batch_id: str, shard: Shard
                         ) -> TypeGuard[dict[str, Any]]:
    """The shard record exists and is this job's, batch's and shard's."""
    return bool(record) and record is not None and record.get("batch_id") == batch_id and all(
        record.get(k) == v for k, v in shard_identity(job, batch_id, shard).items())


# --- settings from the pod's request ----------------------------------------------------------------------

def settings_for_pod(settings: Settings) -> dict[str, Any]:
    """The laptop side: the settings a worker needs, for `POSE_FACTORY_WORKER_SETTINGS` (no secrets in here)."""
    runpod = settings.runpod
    return {"bucket": settings.bucket,
            "prefixes": {"batches": settings.prefixes.batches, "dvc": settings.prefixes.dvc,
                         "jobs": settings.prefixes.jobs},
            "storage": {"concurrency": settings.concurrency, "max_attempts": settings.max_attempts,
                        "connect_timeout_s": settings.connect_timeout_s, "read_timeout_s": settings.read_timeout_s},
            "runpod": {key: getattr(runpod, key) for key in ("api_url", "shutdown", "self_shutdown_s",
                                                             "worker_max_restarts", "request_timeout_s",
                                                             "api_attempts", "api_backoff_s")}}


def settings_from_request(environ: Mapping[str, str] | None = None) -> Settings:
    """The pod side: Settings from `POSE_FACTORY_WORKER_SETTINGS` alone (validated like a config file)."""
    from pose_factory.core.settings import load_settings

    environ = os.environ if environ is None else environ
    raw = environ.get(ENV_WORKER_SETTINGS)
    if not raw:
        raise ConfigError(f"{ENV_WORKER_SETTINGS} is not set", where="the pod's environment",
                          hint="`pose-sync worker run` runs on a pod started by `pose-sync job submit`; to run it by "
                               "hand, set it to the JSON `job submit` puts there")
    try:
        json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{ENV_WORKER_SETTINGS} is not valid JSON ({exc})", where="the pod's environment") from None
    with tempfile.TemporaryDirectory(prefix="pose-factory-worker-settings-") as scratch:
        config = Path(scratch) / "worker-settings.yaml"  # JSON is YAML: validated like any config file
        config.write_text(raw)
        return load_settings(root=Path(scratch), config_file=config)


# --- status object ----------------------------------------------------------------------------------------

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
    """Writes the shard's status object now and then every heartbeat interval until stopped."""

    def __init__(self, storage: Storage, key: str, state: dict[str, Any], interval_s: float):
        self.storage, self.key, self.interval = storage, key, interval_s
        self.state = {"version": STATUS_VERSION, **state}
        self.progress = _CountingProgress()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def write(self, **changes: Any) -> None:
        with self._lock:
            self.state.update(changes)
            if self.progress.current is not None and self.state["state"] == "rendering":
                self.state["samples_done"] = int(self.progress.current.done)
            self.state["updated_at"] = contract.utc_now_precise()
            self.storage.put_bytes(self.key, json.dumps(self.state).encode())

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if self.state["state"] in ("done", "failed"):
                return
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


# --- the work ---------------------------------------------------------------------------------------------

@dataclass
class WorkerOutcome:
    state: str  # done | failed
    job_id: str
    batch_id: str | None
    shard: Shard
    error: str | None = None
    note: str | None = None
    shutdown: str | None = None
    shutdown_failed: bool = False  # on a pod, and RunPod never accepted its stop / terminate
    failure: Exception | None = None  # what failed the job, raised again once the pod is shut down


def _already_done(storage: Storage, settings: Settings, job: Job, batch_id: str, shard: Shard) -> bool:
    """This job's batch is complete in the bucket, or (for a shard) its record is there and its objects match."""
    from pose_factory.bucket.batches import complete_manifest, shard_problems

    manifest = complete_manifest(storage, settings, batch_id)
    if manifest is not None and manifest["job"] == job:
        return True
    if shard.count == 1:
        return False
    record = read_json(storage, shard_record_key(settings, job["job_id"], shard.index))
    if not shard_record_matches(record, job, batch_id, shard):
        return False
    return not shard_problems(storage, settings, batch_id, [record])


def _prepare(job: Job, settings: Settings, storage: Storage, scratch: Path) -> Any:
    """The user's Blender scene, checked and fetched before any rendering (a SceneError fails the job here)."""
    if job["generator"] != "blender" or not job["scene"].get("blend_file"):
        return None
    from pose_factory.producer.blender_render import prepare_scene

    return prepare_scene(job, settings, storage, scratch)


def _render(job: Job, batch_id: str, shard: Shard, scratch: Path, settings: Settings,
            progress: Progress, prepared: Any) -> Path:
    indices = shard.samples(job["samples"]) if shard.count > 1 else None
    if job["generator"] == "blender":
        from pose_factory.producer.blender_render import render_with_blender

        return render_with_blender(job, scratch, settings, batch_id, replace=True, progress=progress,
                                   prepared=prepared, indices=indices)
    from pose_factory.producer.generate import generate_batch

    return generate_batch(job, scratch, settings, batch_id=batch_id, replace=True, progress=progress,
                          indices=indices).batch_dir


def run_worker(storage: Storage, settings: Settings, job_id: str, shard: Shard = Shard(), *,
               batch_id: str | None = None, heartbeat_s: float = HEARTBEAT_S) -> WorkerOutcome:
    """Render and publish the job's batch (or one shard of it), unless it is already there. A failure is written
    to the status object first, then raised."""
    from pose_factory.bucket.batches import publish_batch, publish_shard
    from pose_factory.producer.generate import batch_id_for

    pod_id = os.environ.get(ENV_POD_ID) or "local"
    key = status_key(settings, job_id, shard.index)
    previous = read_json(storage, key)
    # This pod's own earlier life (a container restart). Run by hand, off a pod, every run starts afresh.
    mine = previous if previous and pod_id != "local" and previous.get("pod_id") == pod_id \
        and previous.get("shards") == shard.count else None
    if mine and mine.get("state") == "failed":
        # A restart of a container whose worker failed: the failure stands, "starting" must not replace it.
        raise RunPodError(f"the worker failed before this container restart: {mine.get('error')}",
                          where=f"{storage.description}: {key}",
                          hint="the failure stands; `pose-sync job watch` retries the shard on a new pod")
    restarts = mine.get("restarts", 0) + 1 if mine and mine.get("state") != "done" else 0
    state = {"job_id": job_id, "shard": shard.index, "shards": shard.count, "pod_id": pod_id, "state": "starting",
             "samples_done": 0, "samples_total": None, "batch_id": batch_id, "error": None, "restarts": restarts,
             "note": None}
    if mine and mine.get("state") == "done":  # a restart after the work was done: "done" stays while it checks
        state.update({k: mine.get(k) for k in ("state", "samples_done", "samples_total", "batch_id")})
    with StatusWriter(storage, key, state, heartbeat_s) as status:
        try:
            job = read_job(storage, settings, job_id)
            batch_id = batch_id or batch_id_for(job, settings)
            samples = shard.samples(job["samples"])
            if shard.count > job["samples"]:
                raise UsageError(f"{shard.count} shards for {job['samples']} samples", where="--shard")
            status.write(batch_id=batch_id, samples_total=len(samples))
            if _already_done(storage, settings, job, batch_id, shard):
                note = "already complete in the bucket: nothing rendered again"
                status.write(state="done", samples_done=len(samples), note=note)
                return WorkerOutcome("done", job_id, batch_id, shard, note=note)
            limit = settings.runpod.worker_max_restarts
            if restarts > limit:
                raise PoseFactoryError(f"the container restarted {restarts} times before the shard was done",
                                       where=f"pod {pod_id}", hint="see the pod's logs (out of memory? a crash in "
                                       "Blender?); raise runpod.worker_max_restarts to allow more")
            # Held while it runs: the folder a worker killed mid-render left (a container restart keeps the temporary
            # folder) is removed by the next one, where TemporaryDirectory would leave it behind.
            with held_work_dir(Path(tempfile.gettempdir()), ".pose-factory-worker.", ".scratch",
                               remove=True) as scratch:
                prepared = _prepare(job, settings, storage, scratch)
                status.write(state="rendering")
                batch_dir = _render(job, batch_id, shard, scratch, settings, status.progress, prepared)
                status.write(state="publishing", samples_done=len(samples))
                if shard.count == 1:
                    publish_batch(storage, settings, batch_dir)
                else:
                    publish_shard(storage, settings, batch_dir, shard_record_key(settings, job_id, shard.index),
                                  shard_identity(job, batch_id, shard))
            status.write(state="done")
            return WorkerOutcome("done", job_id, batch_id, shard)
        except BaseException as exc:
            message = exc.message if isinstance(exc, PoseFactoryError) else f"{type(exc).__name__}: {exc}"
            status.write(state="failed", error=message)
            raise


def shut_down_own_pod(settings: Settings, *, sleep=time.sleep) -> tuple[bool, str]:
    """Stop or terminate the pod this runs on (runpod.shutdown) with its pod-scoped key, retried with backoff for
    up to runpod.self_shutdown_s. Returns (whether RunPod accepted it, what happened in words)."""
    from pose_factory.core.errors import CredentialsError
    from pose_factory.integrations.runpod import RunPodClient

    pod_id, key = os.environ.get(ENV_POD_ID), os.environ.get(ENV_RUNPOD_API_KEY)
    if not pod_id:
        return False, "not on a RunPod pod: nothing to shut down"
    if not key:
        return False, f"no {ENV_RUNPOD_API_KEY} on the pod: the pod is left to `pose-sync job watch`"
    config = settings.runpod
    how = config.shutdown
    deadline = time.monotonic() + float(config.self_shutdown_s)
    delay, last = 1.0, ""
    while True:
        try:
            client = RunPodClient(config.api_url, key, attempts=config.api_attempts,
                                  timeout_s=config.request_timeout_s, backoff_s=config.api_backoff_s)
            return True, f"pod {pod_id}: {client.shut_down(pod_id, how)}"
        except CredentialsError as exc:
            last = exc.message
            if how == "terminate":
                how = "stop"  # a pod-scoped key may be allowed to stop its pod but not to delete it
                continue
        except PoseFactoryError as exc:
            last = exc.message
        if time.monotonic() + delay > deadline:
            return False, f"pod {pod_id}: could not shut it down ({last}); `pose-sync job watch` will"
        sleep(delay)
        delay = min(delay * 2, 30.0)


def run_on_pod(job_id: str, shard: Shard, batch_id: str | None, *,
               report: Callable[[WorkerOutcome], None] = lambda _: None) -> WorkerOutcome:
    """Everything `worker run` does: settings from the request, render and publish (reported before anything
    else, since the shutdown ends this process), then shut the own pod down."""
    from pose_factory.bucket.backends import open_storage

    settings = settings_from_request()
    try:
        outcome = run_worker(open_storage(settings, "r2"), settings, job_id, shard, batch_id=batch_id)
    except Exception as exc:  # recorded in the status object; the pod is shut down all the same
        message = exc.message if isinstance(exc, PoseFactoryError) else f"{type(exc).__name__}: {exc}"
        outcome = WorkerOutcome("failed", job_id, batch_id, shard, message, failure=exc)
    report(outcome)
    accepted, outcome.shutdown = shut_down_own_pod(settings)
    outcome.shutdown_failed = bool(os.environ.get(ENV_POD_ID)) and not accepted
    if accepted:
        time.sleep(LINGER_S)  # RunPod is stopping this container; exiting now would only restart it
    return outcome
