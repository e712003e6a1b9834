"""Drive RunPod render jobs from the laptop: submit, watch, confirm in the bucket, shut the pod down.

RunPod's REST API v1 (https://rest.runpod.io/v1, `Authorization: Bearer <RUNPOD_API_KEY>`): `POST /pods`,
`GET /pods`, `GET /pods/{id}`, `POST /pods/{id}/stop`, `DELETE /pods/{id}`. A pod costs money by the hour,
so every way out of `watch` (done, failed, timeout, a worker that stopped heartbeating, Ctrl-C, an error)
goes through the same `finally` that shuts the pod down.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pose_factory.bucket.backends import ObjectMissingError, Storage, join_key
from pose_factory.bucket.jobs import job_key
from pose_factory.core import contract, schemas
from pose_factory.core.errors import CredentialsError, PoseFactoryError, StorageError
from pose_factory.core.fsutil import atomic_write_path
from pose_factory.core.settings import Settings, r2_credentials
from pose_factory.producer.worker import status_key

ENV_API_KEY = "RUNPOD_API_KEY"
POD_NAME_PREFIX = "pose-factory-"
RESULT_VERSION = 1


class RunPodError(PoseFactoryError):
    """RunPod refused a request, or a job ended badly."""

    exit_code = 13


def api_key() -> str:
    key = os.environ.get(ENV_API_KEY, "").strip()
    if not key:
        raise CredentialsError(f"{ENV_API_KEY} is not set", where="environment / .env",
                               hint="create an API key in the RunPod console and put it in .env")
    return key


class RunPodClient:
    """The pod endpoints of RunPod's REST API, with retries for 429 and 5xx."""

    def __init__(self, base_url: str, key: str, attempts: int = 5):
        import requests

        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.attempts = attempts

    def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        import requests

        delay = 0.2
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.session.request(method, self.base + path, json=body, timeout=30)
            except requests.RequestException as exc:
                if attempt == self.attempts:
                    raise StorageError(f"cannot reach RunPod ({type(exc).__name__})", where=self.base,
                                       hint="check the network, or runpod.api_url in config/local.yaml") from None
            else:
                if response.status_code == 401:
                    raise CredentialsError("RunPod refused the API key", where=self.base,
                                           hint=f"check {ENV_API_KEY}")
                if response.status_code == 429 or response.status_code >= 500:
                    if attempt == self.attempts:
                        raise RunPodError(f"RunPod kept answering {response.status_code} to {method} {path}",
                                          where=self.base, hint="wait a minute and run the command again")
                elif response.status_code >= 400:
                    raise RunPodError(f"RunPod refused {method} {path} ({response.status_code}): "
                                      f"{response.text[:300]}", where=self.base)
                else:
                    return response.json() if response.content else None
            time.sleep(delay)
            delay = min(delay * 2, 5)
        raise AssertionError("unreachable")

    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/pods", body)

    def get_pod(self, pod_id: str) -> dict[str, Any]:
        return self._call("GET", f"/pods/{pod_id}")

    def list_pods(self) -> list[dict[str, Any]]:
        return self._call("GET", "/pods") or []

    def stop_pod(self, pod_id: str) -> None:
        self._call("POST", f"/pods/{pod_id}/stop")

    def terminate_pod(self, pod_id: str) -> None:
        self._call("DELETE", f"/pods/{pod_id}")


def client(settings: Settings) -> RunPodClient:
    return RunPodClient(settings.runpod["api_url"], api_key())


def _records_dir(settings: Settings) -> Path:
    return settings.root / "data" / "jobs"


def _record(settings: Settings, job_id: str) -> dict[str, Any]:
    path = _records_dir(settings) / f"{job_id}.json"
    if not path.is_file():
        raise PoseFactoryError(f"no job {job_id!r} was submitted from here", where=str(path.parent),
                               hint="`pose-sync job status` lists the jobs")
    return json.loads(path.read_text())


def _save_record(settings: Settings, record: dict[str, Any]) -> None:
    folder = _records_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(folder / f"{record['job_id']}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def submit(storage: Storage, settings: Settings, job_file: Path) -> dict[str, Any]:
    """Validate the job, upload it, start a pod that runs the worker; return the local job record."""
    job = schemas.load_json(job_file)
    schemas.check(job, "job", str(job_file))
    runpod = client(settings)
    credentials = r2_credentials(required=True)
    storage.ensure_bucket()
    storage.put_bytes(job_key(settings, job["job_id"]), contract.dumps(job))
    config = settings.runpod
    # Secrets travel in the request body as the pod's environment: never on a command line or in a log.
    env = {"CLOUDFLARE_R2_ACCESS_KEY_ID": credentials.access_key_id,
           "CLOUDFLARE_R2_SECRET_ACCESS_KEY": credentials.secret_access_key,
           "POSE_FACTORY_R2_ENDPOINT": credentials.endpoint_url, "POSE_FACTORY_R2_BUCKET": settings.bucket,
           "POSE_FACTORY_BACKEND": "r2", "POSE_FACTORY_JOB_ID": job["job_id"]}
    body = {"name": POD_NAME_PREFIX + job["job_id"], "imageName": config["image"], "gpuTypeIds": [config["gpu_type"]],
            "gpuCount": config["gpu_count"], "containerDiskInGb": config["container_disk_gb"],
            "volumeInGb": config["volume_gb"],
            "cloudType": config["cloud_type"], "env": env,
            "dockerStartCmd": ["pose-sync", "worker", "run", job["job_id"]]}
    pod = runpod.create_pod(body)
    record = {"version": RESULT_VERSION, "job_id": job["job_id"], "pod_id": pod["id"],
              "submitted_at": contract.utc_now_precise(), "state": "submitted", "batch_id": None,
              "gpu_type": config["gpu_type"], "cost_per_hr": pod.get("costPerHr", config["hourly_price_usd"])}
    _save_record(settings, record)
    return record


def _shutdown(runpod: RunPodClient, pod_id: str, how: str) -> None:
    (runpod.terminate_pod if how == "terminate" else runpod.stop_pod)(pod_id)


def _status(storage: Storage, settings: Settings, job_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_bytes(status_key(settings, job_id)))
    except ObjectMissingError:
        return None


def _age_s(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (datetime.now(UTC) - moment).total_seconds()


@dataclass
class WatchOutcome:
    record: dict[str, Any]
    ok: bool
    reason: str


def watch(storage: Storage, settings: Settings, job_id: str, *, on_update: Callable[[dict[str, Any]], None]
          = lambda _: None, timeout_s: float | None = None, poll_s: float | None = None) -> WatchOutcome:
    """Follow a job until its batch is complete in the bucket (or it fails); shut the pod down either way."""
    record = _record(settings, job_id)
    config = settings.runpod
    runpod = client(settings)
    timeout_s = timeout_s or config["job_timeout_s"]
    poll_s = poll_s or config["poll_s"]
    started = time.monotonic()
    outcome = WatchOutcome(record, False, "interrupted")
    try:
        while True:
            pod = runpod.get_pod(record["pod_id"])
            status = _status(storage, settings, job_id) or {}
            elapsed = time.monotonic() - started
            update = {"job_id": job_id, "pod_id": record["pod_id"], "pod_state": pod.get("desiredStatus"),
                      "state": status.get("state", "starting"), "samples_done": status.get("samples_done", 0),
                      "samples_total": status.get("samples_total"), "elapsed_s": round(elapsed, 1),
                      "cost_usd": round(elapsed / 3600 * float(record["cost_per_hr"]), 4)}
            on_update(update)
            batch_id = status.get("batch_id")
            if status.get("state") == "done" and batch_id and _complete(storage, settings, batch_id):
                outcome = WatchOutcome(record, True, "done")
                record["batch_id"] = batch_id
                break
            if status.get("state") == "failed":
                outcome = WatchOutcome(record, False, f"the worker failed: {status.get('error')}")
                break
            if status and _age_s(status.get("updated_at")) > config["heartbeat_timeout_s"]:
                outcome = WatchOutcome(record, False, "the worker stopped heartbeating")
                break
            if elapsed > timeout_s:
                outcome = WatchOutcome(record, False, f"the job ran past its timeout ({timeout_s:.0f} s)")
                break
            time.sleep(poll_s)
    finally:
        # Whatever happened above, including Ctrl-C: a pod left running costs money by the hour.
        try:
            _shutdown(runpod, record["pod_id"], config["shutdown"])
            record["pod_shutdown"] = config["shutdown"]
        finally:
            elapsed = time.monotonic() - started
            record.update(state="done" if outcome.ok else "failed", reason=outcome.reason,
                          finished_at=contract.utc_now_precise(), watched_s=round(elapsed, 1),
                          cost_usd=round(elapsed / 3600 * float(record["cost_per_hr"]), 4))
            _save_record(settings, record)
            try:
                storage.put_bytes(join_key(settings.prefixes.jobs, job_id, "result.json"), contract.dumps(record))
            except PoseFactoryError:
                pass  # the local record has it; the bucket copy is a convenience
    return outcome


def _complete(storage: Storage, settings: Settings, batch_id: str) -> bool:
    """The batch's marker is there and belongs to the manifest in the bucket (what `pull` requires too)."""
    from pose_factory.bucket.batches import batch_prefix, read_marker

    prefix = batch_prefix(settings, batch_id)
    marker = read_marker(storage, prefix + "_complete.json")
    if not marker or marker.get("batch_id") != batch_id:
        return False
    try:
        manifest = storage.read_bytes(prefix + "manifest.json")
    except ObjectMissingError:
        return False
    return marker["manifest_sha256"] == contract.sha256_bytes(manifest)


def list_running(settings: Settings) -> list[dict[str, Any]]:
    """Pods this tool started that are still up."""
    pods = client(settings).list_pods()
    return [p for p in pods if str(p.get("name", "")).startswith(POD_NAME_PREFIX)
            and p.get("desiredStatus") not in ("EXITED", "TERMINATED")]


def cancel(settings: Settings, job_id: str) -> dict[str, Any]:
    """Shut the job's pod down and mark the job cancelled."""
    record = _record(settings, job_id)
    _shutdown(client(settings), record["pod_id"], settings.runpod["shutdown"])
    record.update(state="cancelled", finished_at=contract.utc_now_precise(), pod_shutdown=settings.runpod["shutdown"])
    _save_record(settings, record)
    return record


def job_records(settings: Settings) -> list[dict[str, Any]]:
    folder = _records_dir(settings)
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
