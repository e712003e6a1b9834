"""Drive RunPod render jobs from the laptop: submit, watch, assemble, confirm in the bucket, shut pods down.

RunPod's REST API v2 (https://api.runpod.io/v2, `Authorization: Bearer <RUNPOD_API_KEY>`): `POST /pods`,
`GET /pods` (`{"pods": [...]}`), `GET /pods/{id}`, `POST /pods/{id}/action` (`{"action": "stop"|"terminate"}`),
errors as RFC 9457 problems, 429 with `Retry-After`. REST v1 (https://rest.runpod.io/v1) is retired.

A pod costs money by the hour, so:
  * a pod is never created twice: `POST /pods` is never retried blindly. Every pod has a unique name
    (`pose-factory-<job>-<run>-s<shard>-a<attempt>`), and after an ambiguous answer (5xx, timeout, dropped
    connection) the pod is looked up by that name before anything is sent again;
  * reads and shutdowns are retried (urllib3 `Retry`, honouring `Retry-After`); a few API errors while
    watching do not end a healthy job, the pods' progress is in the bucket anyway;
  * every way out of `watch` (done, failed, timeout, Ctrl-C, an error) goes through one `finally` that shuts
    down every pod of the job (those recorded and any listed under the job's name prefix) and retries until
    RunPod confirms each is down; a pod it cannot confirm is said loudly (exit 15, `job list`, `job status`).

A job may be split over K pods (`job submit --pods K`): shard k renders a contiguous range of samples and
publishes its files and a shard record; `watch` retries a failed shard on a new pod (`runpod.shard_attempts`)
without touching the others, and assembles the batch (one manifest, one marker) once every shard checks out.
The laptop assembles, not the last pod: one writer, no race between pods finishing together, and the laptop
is in the loop anyway to retry failed shards and to be the second line of defence for shutdowns; assembly
reads one listing and writes two small objects, so it needs no pixels.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pose_factory.bucket.backends import Storage, join_key
from pose_factory.bucket.jobs import job_key, read_job
from pose_factory.core import contract, schemas
from pose_factory.core.envnames import ENV_RUNPOD_API_KEY, ENV_WORKER_SETTINGS
from pose_factory.core.errors import (
    ConfigError,
    CredentialsError,
    PodConflictError,
    PodGoneError,
    PodsMayBeRunningError,
    PoseFactoryError,
    RunPodApiError,
    RunPodError,
    SchemaError,
    UsageError,
)
from pose_factory.core.fsutil import atomic_write_path
from pose_factory.core.settings import (
    ENV_ACCESS_KEY,
    ENV_ACCOUNT_ID,
    ENV_ENDPOINT,
    ENV_SECRET_KEY,
    R2Credentials,
    Settings,
    r2_credentials,
)
from pose_factory.producer.worker import (
    Shard,
    read_json,
    settings_for_pod,
    shard_record_key,
    shard_record_matches,
    status_key,
)

if TYPE_CHECKING:
    from pose_factory.core.models import Job

API_V2 = "https://api.runpod.io/v2"
POD_NAME_PREFIX = "pose-factory-"
POD_NAME = re.compile(r"^pose-factory-(?P<job>[a-z0-9][a-z0-9-]*)-(?P<run>[0-9a-f]{6})"
                      r"-s(?P<shard>\d+)-a(?P<attempt>\d+)$")
RECORD_VERSION = 2
JSON_VERSION = 2  # `job status --json` and `job list --json`
DOWN = ("EXITED", "TERMINATED")
FINAL = ("done", "failed", "cancelled")


def check_api_url(url: str, where: str = "runpod.api_url") -> str:
    """The API base URL, refusing RunPod's retired REST v1 with the fix."""
    parts = urlsplit(url)
    if parts.hostname == "rest.runpod.io" or parts.path.rstrip("/").endswith("/v1"):
        raise ConfigError(f"runpod.api_url is {url}, RunPod's REST API v1, retired from 2026-12-01", where=where,
                          hint=f"migrate to REST API v2: set runpod.api_url to {API_V2} in config/local.yaml (or "
                               "remove the key: it is the default); see RunPod's guide 'Migrate from API v1'")
    return url.rstrip("/")


def api_key() -> str:
    key = os.environ.get(ENV_RUNPOD_API_KEY, "").strip()
    if not key:
        raise CredentialsError(f"{ENV_RUNPOD_API_KEY} is not set", where="environment / .env",
                               hint="create an API key in the RunPod console and put it in .env")
    return key


# --- the API --------------------------------------------------------------------------------------------------

def _problem(response: Any) -> str:
    """The RFC 9457 problem's detail (and validation errors) of an error answer, or its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason
    if not isinstance(body, dict):
        return str(body)[:300]
    detail = str(body.get("detail") or body.get("title") or body)
    errors = body.get("errors") or []
    return detail + (": " + "; ".join(str(e) for e in errors[:5]) if errors else "")


def _retry_after(response: Any, default: float) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", default)))
    except ValueError:
        return default


class RunPodClient:
    """The pod endpoints of RunPod's REST API v2.

    Reads, actions and deletes go through urllib3's `Retry` (429 honouring `Retry-After`, 5xx, connection and
    read errors, with backoff): a stop or terminate sent twice is harmless. `POST /pods` goes through a session
    without retries, and `create_pod` decides what to do after an ambiguous answer.
    """

    def __init__(self, base_url: str, key: str, *, attempts: int = 5, timeout_s: float = 30.0,
                 backoff_s: float = 0.5, lookup_s: float = 10.0, where: str = "runpod.api_url"):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.base = check_api_url(base_url, where)
        self.timeout = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.lookup_s = lookup_s
        retries = Retry(total=self.attempts - 1, backoff_factor=backoff_s, backoff_max=30,
                        status_forcelist=(429, 500, 502, 503, 504),
                        allowed_methods=frozenset({"GET", "POST", "DELETE"}), respect_retry_after_header=True,
                        raise_on_status=False)
        self.session = requests.Session()
        self.session.mount(self.base, HTTPAdapter(max_retries=retries))
        self.create_session = requests.Session()  # no retries: a create is never sent twice blindly
        for session in (self.session, self.create_session):
            session.headers["Authorization"] = f"Bearer {key}"

    def _send(self, method: str, path: str, body: Any = None, *, session: Any = None) -> Any:
        import requests

        try:
            return (session or self.session).request(method, self.base + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RunPodApiError(f"cannot reach the RunPod API for {method} {path} ({type(exc).__name__})",
                                 where=self.base, hint="check the network; RunPod's status page: "
                                 "https://uptime.runpod.io") from None

    def _json(self, response: Any, method: str, path: str) -> Any:
        """The answer's JSON, or the typed error it stands for."""
        status = response.status_code
        if 200 <= status < 300:
            return response.json() if response.content else None
        what = f"{method} {path}"
        if status == 401:
            raise CredentialsError("RunPod refused the API key", where=self.base, hint=f"check {ENV_RUNPOD_API_KEY}")
        if status == 403:
            raise CredentialsError(f"RunPod denied access to {what}: {_problem(response)}", where=self.base,
                                   hint="the API key lacks a permission: give it read/write access to pods")
        if status == 404:
            raise PodGoneError(f"RunPod has no such pod ({what})", where=self.base)
        if status == 409:
            raise PodConflictError(f"RunPod: {_problem(response)} ({what})", where=self.base)
        if status == 429 or status >= 500:
            raise RunPodApiError(f"RunPod kept answering {status} to {what}: {_problem(response)}", where=self.base,
                                 hint="RunPod is rate-limiting or failing: wait a minute and run the command again")
        if status == 402:
            raise RunPodError(f"RunPod: insufficient balance ({_problem(response)})", where=self.base,
                              hint="add credit in the RunPod console")
        if status == 422:
            raise RunPodError(f"RunPod rejected the request body of {what}: {_problem(response)}", where=self.base,
                              hint="a setting under runpod: has a value RunPod does not accept, or pose-sync sent a "
                                   "field the API no longer knows")
        raise RunPodError(f"RunPod refused {what} ({status}): {_problem(response)}", where=self.base,
                          hint="for 'no instances available': another runpod.gpu_type or cloud_type, or later")

    def list_pods(self) -> list[dict[str, Any]]:
        return self._json(self._send("GET", "/pods"), "GET", "/pods")["pods"]

    def get_pod(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None when RunPod no longer has it."""
        try:
            return self._json(self._send("GET", f"/pods/{pod_id}"), "GET", f"/pods/{pod_id}")
        except PodGoneError:
            return None

    def pod_action(self, pod_id: str, action: str) -> dict[str, Any] | None:
        path = f"/pods/{pod_id}/action"
        return self._json(self._send("POST", path, {"action": action}), "POST", path)

    def pods_named(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.list_pods() if p.get("name") == name]

    def create_pod(self, body: dict[str, Any], *, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Create one pod named body["name"]; after an ambiguous answer, look it up by name before any retry."""
        import requests

        name = body["name"]
        ambiguous = ""
        for attempt in range(self.attempts):
            try:
                response = self.create_session.post(self.base + "/pods", json=body, timeout=self.timeout)
            except requests.RequestException as exc:
                ambiguous = type(exc).__name__
            else:
                if 200 <= response.status_code < 300:  # 201 Created
                    return response.json()
                if response.status_code == 429:  # refused before any work was done: safe to send again
                    sleep(_retry_after(response, self.backoff_s * 2 ** attempt))
                    continue
                if response.status_code < 500:
                    self._json(response, "POST", "/pods")  # raises the error the answer stands for
                ambiguous = f"HTTP {response.status_code}"
            found = self._look_up(name, sleep)  # RunPod may have created the pod before the answer went wrong
            if found is not None:
                return found
            sleep(self.backoff_s * 2 ** attempt)
        raise RunPodApiError(f"RunPod did not confirm creating pod {name} ({ambiguous}) after {self.attempts} tries, "
                             "and lists no pod of that name", where=self.base,
                             hint="wait a minute and submit again; `pose-sync job list` shows any pod it made")

    def _look_up(self, name: str, sleep: Callable[[float], None]) -> dict[str, Any] | None:
        """The pod of that name, polling for up to lookup_s (a new pod may take a moment to be listed)."""
        deadline = time.monotonic() + self.lookup_s
        delay = min(1.0, self.lookup_s / 4) or 0.01
        while True:
            found = self.pods_named(name)  # an API error here propagates: never create blind
            if found:
                return found[0]
            if time.monotonic() + delay > deadline:
                return None
            sleep(delay)
            delay = min(delay * 2, 5.0)

    def shut_down(self, pod_id: str, how: str) -> str:
        """Stop or terminate a pod; harmless when it is already down or gone. Returns what happened."""
        try:
            self.pod_action(pod_id, how)
            return {"stop": "stopped", "terminate": "terminated"}[how]
        except PodGoneError:
            return "gone"
        except PodConflictError:
            pod = self.get_pod(pod_id)
            if pod is None or pod["status"] in DOWN:
                return "already down"
            if how == "stop":  # e.g. ERROR: stop is not valid there, terminate is
                self.pod_action(pod_id, "terminate")
                return "terminated"
            raise

    def is_down(self, pod_id: str) -> bool:
        pod = self.get_pod(pod_id)
        return pod is None or pod["status"] in DOWN


def client(settings: Settings, key: str | None = None) -> RunPodClient:
    """A client for the configured API (checks the URL before the key, so a v1 URL is the first thing said)."""
    config = settings.runpod
    where = f"{settings.config_file}: runpod.api_url" if settings.config_file else "runpod.api_url"
    check_api_url(config.api_url, where)
    return RunPodClient(config.api_url, key or api_key(), attempts=config.api_attempts,
                        timeout_s=config.request_timeout_s, backoff_s=config.api_backoff_s,
                        lookup_s=config.create_lookup_s, where=where)


def shut_down_pods(runpod: RunPodClient, targets: dict[str, str | None], how: str, budget_s: float, *,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, str]:
    """Shut pods down ({name: id or None}) and retry with backoff until RunPod confirms each is down, for up to
    budget_s. Returns {name: last problem} for the pods never confirmed down."""
    pending = dict(targets)
    problems: dict[str, str] = {}
    deadline = time.monotonic() + budget_s
    delay = 1.0
    while True:
        for name, pod_id in list(pending.items()):
            try:
                ids = [pod_id] if pod_id else [p["id"] for p in runpod.pods_named(name) if p["status"] not in DOWN]
                for each in ids:
                    runpod.shut_down(each, how)
                if all(runpod.is_down(each) for each in ids):
                    del pending[name]
                    problems.pop(name, None)
            except (RunPodError, CredentialsError) as exc:
                problems[name] = exc.message
        if not pending or time.monotonic() + delay > deadline:
            return {name: problems.get(name, "RunPod did not confirm the shutdown") for name in pending}
        sleep(delay)
        delay = min(delay * 2, 30.0)


# --- what a job asks RunPod for -----------------------------------------------------------------------------

def pod_name(job_id: str, run: str, shard: int, attempt: int) -> str:
    """Unique per job submission, shard and attempt: what a lookup after an ambiguous create searches for."""
    return f"{POD_NAME_PREFIX}{job_id}-{run}-s{shard}-a{attempt}"


def pod_env(settings: Settings, credentials: R2Credentials) -> tuple[dict[str, str], list[str]]:
    """The pod's environment, and the names of secrets in it as plain values (no RunPod secret set up for them).

    With `runpod.secrets` naming a RunPod secret for a variable, the pod gets `{{ RUNPOD_SECRET_<name> }}` and
    RunPod fills the value in when the container starts: `GET /pods` and the console show only the reference.
    """
    mapped = settings.runpod.secrets or {}
    env = {ENV_WORKER_SETTINGS: json.dumps(settings_for_pod(settings), sort_keys=True, separators=(",", ":"))}
    values = {ENV_ACCESS_KEY: credentials.access_key_id, ENV_SECRET_KEY: credentials.secret_access_key}
    standard_r2 = credentials.account_id and \
        credentials.endpoint_url == f"https://{credentials.account_id}.r2.cloudflarestorage.com"
    if ENV_ACCOUNT_ID in mapped and standard_r2:
        values[ENV_ACCOUNT_ID] = credentials.account_id or ""
    else:
        env[ENV_ENDPOINT] = credentials.endpoint_url
    plain = []
    for name, value in values.items():
        if name in mapped:
            env[name] = f"{{{{ RUNPOD_SECRET_{mapped[name]} }}}}"
        else:
            env[name] = value
            plain.append(name)
    return env, plain


def pod_request(settings: Settings, record: dict[str, Any], shard: int, attempt: int, env: dict[str, str]
                ) -> dict[str, Any]:
    """The CreatePodRequest body for one attempt at one shard."""
    config = settings.runpod
    # Every token is a slug, a batch id or digits: however RunPod splits `args`, the worker gets the same argv.
    args = f"worker run {record['job_id']} --batch-id {record['batch_id']} --shard {shard}/{record['pods']}"
    body = {"name": pod_name(record["job_id"], record["run"], shard, attempt), "image": config.image,
            "gpu": {"id": config.gpu_type, "count": config.gpu_count}, "cloud": config.cloud_type,
            "disk": config.container_disk_gb, "env": env, "args": args}
    if config.volume_gb:
        if config.volume_gb < 10:
            raise ConfigError(f"runpod.volume_gb is {config.volume_gb}: RunPod's smallest volume is 10 GB",
                              where=str(settings.config_file or "runpod.volume_gb"), hint="set 0 (none) or >= 10")
        body["mounts"] = {"persistent": {"size": config.volume_gb, "path": "/workspace"}}
    return body


# --- local job records -------------------------------------------------------------------------------------------

def _records_dir(settings: Settings) -> Path:
    return settings.layout.jobs_dir


def _upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A record written before jobs had shards (one pod, v1 API) as a one-shard record."""
    if record.get("version", 1) >= 2:
        return record
    ended = record.get("finished_at")
    attempt = {"attempt": 1, "pod_name": POD_NAME_PREFIX + record["job_id"], "pod_id": record.get("pod_id"),
               "created_at": record.get("submitted_at"), "cost_per_hr": record.get("cost_per_hr"), "ended_at": ended,
               "down": bool(record.get("pod_shutdown")), "pod_state": None, "outcome": record.get("reason")}
    return {**record, "version": RECORD_VERSION, "run": None, "pods": 1, "samples": None,
            "shards": [{"index": 0, "first": 0, "count": None, "state": record.get("state", "failed"),
                        "attempts": [attempt]}], "pods_may_be_running": []}


def _load_record(path: Path) -> dict[str, Any]:
    """A local job record, checked against schemas/job-record.schema.json (a version-1 record upgraded first): a
    damaged or hand-edited one is a SchemaError naming the file and the field, never a traceback."""
    hint = (f"only pose-sync writes {path.name}: put the version from a backup back, or move the file out of "
            f"{path.parent.name}/ to forget the job (`pose-sync job list` still shows any pod of it RunPod runs)")
    try:
        record = schemas.load_json(path)
    except SchemaError as exc:
        exc.hint = hint
        raise
    if isinstance(record, dict) and record.get("version", 1) == 1 and isinstance(record.get("job_id"), str):
        record = _upgrade(record)
    schemas.check(record, "job-record", str(path), hint=hint)
    if record["job_id"] != path.stem:
        raise SchemaError(f"$.job_id: expected {path.stem!r} (the file's name), found {record['job_id']!r}",
                          where=str(path), hint=hint)
    return record


def _record(settings: Settings, job_id: str) -> dict[str, Any]:
    path = _records_dir(settings) / f"{job_id}.json"
    if not path.is_file():
        raise UsageError(f"no job {job_id!r} was submitted from here", where=str(path.parent),
                         hint="`pose-sync job status` lists the jobs")
    return _load_record(path)


def _save_record(settings: Settings, record: dict[str, Any]) -> None:
    folder = _records_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(folder / f"{record['job_id']}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def job_records(settings: Settings, unreadable: list[SchemaError] | None = None) -> list[dict[str, Any]]:
    """Every local job record that reads; one that does not is left out (added to `unreadable` when given), so a
    damaged record never hides the others."""
    folder = _records_dir(settings)
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            records.append(_load_record(path))
        except SchemaError as exc:
            if unreadable is not None:
                unreadable.append(exc)
    return records


def shutdown_of(record: dict[str, Any], settings: Settings) -> str:
    """How the job's pods are shut down: as recorded at submit (a version-1 record has none: the settings')."""
    return record.get("shutdown") or settings.runpod.shutdown


def _attempts(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for shard in record["shards"] for a in shard["attempts"]]


def _hours(start: str | None, end: str | None) -> float:
    if not start:
        return 0.0
    begin = datetime.fromisoformat(start.replace("Z", "+00:00"))
    finish = datetime.fromisoformat(end.replace("Z", "+00:00")) if end else datetime.now(UTC)
    return max(0.0, (finish - begin).total_seconds() / 3600)


def job_cost(record: dict[str, Any]) -> float:
    """Estimated cost of every pod of the job so far: its $/h times the time from creation to shutdown (or now)."""
    return round(sum(float(a.get("cost_per_hr") or 0) * _hours(a.get("created_at"), a.get("ended_at"))
                     for a in _attempts(record) if a.get("pod_id") or not a.get("down")), 4)


# --- submit --------------------------------------------------------------------------------------------------------

def _start_attempt(runpod: RunPodClient, settings: Settings, record: dict[str, Any], shard: dict[str, Any],
                   env: dict[str, str]) -> dict[str, Any]:
    """Create a new pod for a shard. The attempt is saved before the create, so a crash in between leaves its
    name in the record, and `watch` / `cancel` find the pod by name."""
    number = len(shard["attempts"]) + 1
    body = pod_request(settings, record, shard["index"], number, env)
    attempt = {"attempt": number, "pod_name": body["name"], "pod_id": None, "created_at": contract.utc_now_precise(),
               "cost_per_hr": None, "ended_at": None, "down": False, "pod_state": None, "outcome": None}
    shard["attempts"].append(attempt)
    shard["state"] = "running"
    _save_record(settings, record)
    try:
        pod = runpod.create_pod(body)
    except RunPodApiError:
        raise  # unknown whether a pod exists: the record keeps its name for the shutdown sweep
    except (RunPodError, CredentialsError) as exc:  # a definite refusal: RunPod made no pod
        attempt.update(down=True, ended_at=attempt["created_at"], outcome=f"not created: {exc.message}")
        _save_record(settings, record)
        raise
    price = float(pod.get("cost") or 0) or float(settings.runpod.hourly_price_usd) * settings.runpod.gpu_count
    attempt.update(pod_id=pod["id"], cost_per_hr=price, pod_state=pod.get("status"))
    _save_record(settings, record)
    return attempt


def load_job(job_file: Path) -> Job:
    """The job file, checked against its schema: read before any credentials are asked for."""
    job: Job = schemas.load_json(job_file)
    schemas.check(job, "job", str(job_file))
    return job


def submit(storage: Storage, settings: Settings, job: Job, *, pods: int = 1) -> dict[str, Any]:
    """Upload a job `load_job` read, start `pods` pods that render a shard each; return the local job record."""
    from pose_factory.producer.generate import batch_id_for

    limit = min(job["samples"], settings.runpod.max_pods)
    if not 1 <= pods <= limit:
        raise UsageError(f"--pods {pods}: a job of {job['samples']} samples runs on 1 to {limit} pods",
                         where="--pods", hint="runpod.max_pods caps it (default 16)")
    runpod = client(settings)
    credentials = r2_credentials(required=True)
    assert credentials is not None
    path = _records_dir(settings) / f"{job['job_id']}.json"
    if path.is_file() and _record(settings, job["job_id"])["state"] not in FINAL:
        raise UsageError(f"job {job['job_id']} is already running", where=str(path),
                          hint=f"`pose-sync job watch {job['job_id']}`, or `pose-sync job cancel {job['job_id']}` "
                               "first to start it again")
    storage.ensure_bucket()
    storage.put_bytes(job_key(settings, job["job_id"]), contract.dumps(job))
    env, plain = pod_env(settings, credentials)
    record: dict[str, Any]  # the job record written to data/jobs/
    record = {"version": RECORD_VERSION, "job_id": job["job_id"], "run": secrets.token_hex(3),
              "batch_id": batch_id_for(job, settings), "samples": job["samples"], "pods": pods, "state": "submitting",
              "reason": None, "submitted_at": contract.utc_now_precise(), "finished_at": None,
              "gpu_type": settings.runpod.gpu_type, "shutdown": settings.runpod.shutdown,
              "plain_secrets": plain, "assembled": False, "pods_may_be_running": [], "cost_usd": 0.0,
              "shards": [{"index": k, "first": r.start, "count": len(r), "state": "running", "attempts": []}
                         for k, r in ((k, Shard(k, pods).samples(job["samples"])) for k in range(pods))]}
    _save_record(settings, record)
    try:
        for shard in record["shards"]:
            _start_attempt(runpod, settings, record, shard, env)
    except BaseException as exc:
        # Every way out shuts down what was started: a job that did not fully start runs nowhere.
        reason = exc.message if isinstance(exc, PoseFactoryError) else f"interrupted ({type(exc).__name__})"
        unconfirmed = _finish(runpod, storage, settings, record, "failed", f"submit failed: {reason}")
        if unconfirmed:
            raise _loud(record, unconfirmed, f"could not be submitted ({reason})") from exc
        raise
    record["state"] = "running"
    _save_record(settings, record)
    return record


# --- watch ---------------------------------------------------------------------------------------------------------

@dataclass
class WatchOutcome:
    record: dict[str, Any]
    ok: bool
    reason: str
    assembled: Any = None
    unconfirmed: dict[str, str] = field(default_factory=dict)


def _age_s(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def _shard_done(storage: Storage, settings: Settings, record: dict[str, Any], job: Job,
                shard: dict[str, Any]) -> bool:
    """Shard k's output is in the bucket: the complete batch (one pod), or its shard record (several pods)."""
    from pose_factory.bucket.batches import complete_manifest

    if record["pods"] == 1:
        manifest = complete_manifest(storage, settings, record["batch_id"])
        return manifest is not None and manifest["job"] == job
    found = read_json(storage, shard_record_key(settings, record["job_id"], shard["index"]))
    return shard_record_matches(found, job, record["batch_id"], Shard(shard["index"], record["pods"]))


def _judge(storage: Storage, settings: Settings, record: dict[str, Any], job: Job, shard: dict[str, Any],
           pod: dict[str, Any] | None, pod_known: bool, status: dict[str, Any] | None) -> tuple[str, str]:
    """('done' | 'failed' | 'running', why) for the shard's current attempt. The pod was looked at before the
    bucket, so a worker that finished and shut its pod down in between is seen as done, not as a lost pod."""
    config = settings.runpod
    attempt = shard["attempts"][-1]
    mine = status if status and attempt["pod_id"] and status.get("pod_id") == attempt["pod_id"] else None
    pod_down = pod_known and (pod is None or pod["status"] in DOWN)
    if ((status and status.get("state") == "done") or pod_down) and \
            _shard_done(storage, settings, record, job, shard):
        return "done", "done"
    if mine and mine.get("state") == "failed":
        return "failed", f"the worker failed: {mine.get('error')}"
    if mine and mine.get("state") == "done":
        return "failed", "the worker reported done, but its output is not complete in the bucket"
    if pod_known and pod is None:
        return "failed", "the pod is gone (terminated) before its work was done"
    if pod_known and pod is not None and pod["status"] == "ERROR":
        return "failed", "the pod is in ERROR: its container cannot run (image, start command or secrets)"
    if pod_known and pod is not None and pod["status"] == "EXITED":
        return "failed", "the pod stopped before its work was done"
    if mine is None and _age_s(attempt["created_at"]) > config.startup_timeout_s:
        state = pod["status"] if pod_known and pod else "unknown"
        return "failed", f"the pod did not start its worker within {config.startup_timeout_s:g} s (status {state})"
    if mine and _age_s(mine.get("updated_at")) > config.heartbeat_timeout_s:
        return "failed", f"the worker stopped heartbeating (nothing for {config.heartbeat_timeout_s:g} s)"
    return "running", ""


def _sweep_targets(runpod: RunPodClient | None, record: dict[str, Any]) -> dict[str, str | None]:
    """Every pod of this job submission not known to be down: recorded ones, plus any listed under its names."""
    targets = {a["pod_name"]: a["pod_id"] for a in _attempts(record) if not a["down"]}
    if runpod is not None and record.get("run"):
        try:
            prefix = f"{POD_NAME_PREFIX}{record['job_id']}-{record['run']}-"
            for pod in runpod.list_pods():
                if pod["name"].startswith(prefix) and pod["status"] not in DOWN and pod["name"] not in targets:
                    targets[pod["name"]] = pod["id"]
        except (RunPodError, CredentialsError):
            pass  # the recorded pods are still shut down
    return targets


def _mark_down(record: dict[str, Any], names: set[str]) -> None:
    now = contract.utc_now_precise()
    state = "EXITED" if record.get("shutdown") == "stop" else "TERMINATED"
    for attempt in _attempts(record):
        if attempt["pod_name"] in names and not attempt["down"]:
            attempt.update(down=True, ended_at=attempt["ended_at"] or now, pod_state=state)


def _shut_down(runpod: RunPodClient | None, settings: Settings, record: dict[str, Any], budget_s: float
               ) -> dict[str, str]:
    """Shut every pod of the job down, retrying for budget_s; record who is down; return the unconfirmed."""
    targets = _sweep_targets(runpod, record)
    if runpod is None:
        return {name: "no RunPod client" for name in targets}
    unconfirmed = shut_down_pods(runpod, targets, shutdown_of(record, settings), budget_s)
    _mark_down(record, set(targets) - set(unconfirmed))
    return unconfirmed


def _finish(runpod: RunPodClient | None, storage: Storage, settings: Settings, record: dict[str, Any], state: str,
            reason: str) -> dict[str, str]:
    """The one way out: shut every pod down (retried until it holds), then save the record here and in the bucket."""
    unconfirmed: dict[str, str] = {}
    try:
        unconfirmed = _shut_down(runpod, settings, record, float(settings.runpod.shutdown_retry_s))
    finally:
        record.update(state=state, reason=reason, finished_at=contract.utc_now_precise(), cost_usd=job_cost(record),
                      pods_may_be_running=sorted(unconfirmed) if unconfirmed else
                      sorted(a["pod_name"] for a in _attempts(record) if not a["down"]))
        _save_record(settings, record)
        try:
            storage.put_bytes(join_key(settings.prefixes.jobs, record["job_id"], "result.json"), contract.dumps(record))
        except PoseFactoryError:
            pass  # the local record has it; the bucket copy is a convenience
    return unconfirmed


def _loud(record: dict[str, Any], unconfirmed: dict[str, str], reason: str) -> PodsMayBeRunningError:
    first = sorted(unconfirmed.items())[0]
    return PodsMayBeRunningError(
        f"job {record['job_id']} {reason}, but RunPod never confirmed that {len(unconfirmed)} pod(s) shut down: "
        f"{', '.join(sorted(unconfirmed))} may still be running and billing (last answer: {first[1]})",
        where="RunPod", hint=f"`pose-sync job cancel {record['job_id']}` tries again; check "
                             "https://console.runpod.io/pods and terminate them there if it keeps failing")


def _progress(record: dict[str, Any], started: float, api_error: str | None, statuses: dict[int, dict | None]
              ) -> dict[str, Any]:
    shards = []
    for shard in record["shards"]:
        attempt = shard["attempts"][-1] if shard["attempts"] else {}
        status = statuses.get(shard["index"]) or {}
        current = status if status.get("pod_id") == attempt.get("pod_id") else {}
        shards.append({"index": shard["index"], "attempt": attempt.get("attempt"), "pod_id": attempt.get("pod_id"),
                       "pod_state": attempt.get("pod_state"), "state": shard["state"] if shard["state"] != "running"
                       else current.get("state", "starting"), "samples_done": shard["count"] if shard["state"] ==
                       "done" else current.get("samples_done", 0), "samples_total": shard["count"]})
    return {"job_id": record["job_id"], "elapsed_s": round(time.monotonic() - started, 1),
            "cost_usd": job_cost(record), "api_error": api_error, "shards": shards}


def _current_pod(runpod: RunPodClient, attempt: dict[str, Any], listed: list[dict[str, Any]] | None,
                 by_id: dict[str, dict], by_name: dict[str, dict]) -> tuple[dict[str, Any] | None, bool]:
    """(the attempt's pod or None when it is gone, whether that is known). A pod missing from the listing is
    asked for by id before it counts as gone (a listing may lag behind a create); a pod whose create was never
    confirmed counts as unknown, and the startup deadline decides."""
    if listed is None:
        return None, False
    if not attempt["pod_id"]:
        pod = by_name.get(attempt["pod_name"])
        if pod is not None:
            attempt["pod_id"] = pod["id"]
        return pod, pod is not None
    pod = by_id.get(attempt["pod_id"])
    if pod is not None:
        return pod, True
    try:
        return runpod.get_pod(attempt["pod_id"]), True
    except (RunPodError, CredentialsError):
        return None, False


def _watch_round(runpod: RunPodClient, storage: Storage, settings: Settings, record: dict[str, Any],
                 job: Job, env: dict[str, str] | None, started: float,
                 on_update: Callable[[dict[str, Any]], None]) -> WatchOutcome | None:
    """One look at the pods (first) and the bucket; act on what changed. A WatchOutcome when the job is over."""
    from pose_factory.bucket.batches import assemble_batch, shard_problems

    config = settings.runpod
    api_error = None
    try:
        listed: list[dict[str, Any]] | None = runpod.list_pods()
    except (RunPodError, CredentialsError) as exc:
        listed, api_error = None, exc.message  # the pods' progress is in the bucket: keep watching
    by_id = {p["id"]: p for p in listed or []}
    by_name = {p["name"]: p for p in listed or []}
    statuses: dict[int, dict | None] = {}
    for shard in record["shards"]:
        if shard["state"] != "running":
            continue
        attempt = shard["attempts"][-1]
        pod, known = _current_pod(runpod, attempt, listed, by_id, by_name)
        if known:
            attempt["pod_state"] = pod["status"] if pod else "TERMINATED"
            if (pod is None or pod["status"] in DOWN) and not attempt["down"]:
                attempt.update(down=True, ended_at=contract.utc_now_precise())
        status = statuses[shard["index"]] = read_json(storage, status_key(settings, record["job_id"], shard["index"]))
        verdict, reason = _judge(storage, settings, record, job, shard, pod, known, status)
        if verdict == "running":
            continue
        attempt["outcome"] = reason
        if not attempt["down"]:  # done or failed, its pod has nothing left to do: shut it down now (one try;
            # the sweep at the end retries whatever RunPod did not confirm)
            this_pod = {attempt["pod_name"]: attempt["pod_id"]}
            if not shut_down_pods(runpod, this_pod, shutdown_of(record, settings), 0):
                _mark_down(record, {attempt["pod_name"]})
        if verdict == "done":
            shard["state"] = "done"
        elif len(shard["attempts"]) < config.shard_attempts and env is not None:
            _start_attempt(runpod, settings, record, shard, env)
        else:
            shard["state"] = "failed"
            _save_record(settings, record)
            return WatchOutcome(record, False, f"shard {shard['index']}: {reason}" if record["pods"] > 1 else reason)
    _save_record(settings, record)
    on_update(_progress(record, started, api_error, statuses))
    if any(shard["state"] != "done" for shard in record["shards"]):
        return None
    if record["pods"] == 1:
        return WatchOutcome(record, True, "done")
    found = {s["index"]: read_json(storage, shard_record_key(settings, record["job_id"], s["index"]))
             for s in record["shards"]}
    records = [r for r in found.values() if r is not None]
    # A record lost since its shard was judged done (deleted, unreadable) is rendered again, like lost files.
    problems = {index: "its shard record is missing or unreadable in the bucket"
                for index, r in found.items() if r is None}
    problems.update(shard_problems(storage, settings, record["batch_id"], records))
    for index, problem in problems.items():  # files lost or overwritten since: that shard is rendered again
        shard = record["shards"][index]
        shard["state"] = "running"
        shard["attempts"][-1]["outcome"] = problem
        if len(shard["attempts"]) >= config.shard_attempts or env is None:
            shard["state"] = "failed"
            return WatchOutcome(record, False, f"shard {index}: {problem}")
        _start_attempt(runpod, settings, record, shard, env)
    if problems:
        return None
    result = assemble_batch(storage, settings, job, record["batch_id"], records)
    record["assembled"] = True
    return WatchOutcome(record, True, f"done: assembled from {record['pods']} shards", result)


def watch(storage: Storage, settings: Settings, job_id: str, *, on_update: Callable[[dict[str, Any]], None]
          = lambda _: None, timeout_s: float | None = None, poll_s: float | None = None) -> WatchOutcome:
    """Follow a job until its batch is complete in the bucket (assembling it from its shards) or it fails;
    shut every pod down on every way out, and raise PodsMayBeRunningError when that is not confirmed."""
    record = _record(settings, job_id)
    config = settings.runpod
    runpod = client(settings)
    if record["state"] in FINAL:  # watched before: only make sure nothing is left running
        unconfirmed = _finish(runpod, storage, settings, record, record["state"], record.get("reason") or "")
        if unconfirmed:
            raise _loud(record, unconfirmed, f"is {record['state']}")
        return WatchOutcome(record, record["state"] == "done", record.get("reason") or record["state"])
    timeout_s = timeout_s or config.job_timeout_s
    poll_s = poll_s or config.poll_s
    started = time.monotonic()
    outcome: WatchOutcome | None = None
    try:
        job = read_job(storage, settings, job_id)
        credentials = r2_credentials(required=False)
        env = pod_env(settings, credentials)[0] if credentials else None  # for retries on new pods
        while outcome is None:
            outcome = _watch_round(runpod, storage, settings, record, job, env, started, on_update)
            if outcome is None and time.monotonic() - started > timeout_s:
                outcome = WatchOutcome(record, False, f"the job ran past its timeout ({timeout_s:g} s)")
            if outcome is None:
                time.sleep(poll_s)
    except BaseException as exc:
        reason = ("interrupted" if isinstance(exc, KeyboardInterrupt) else
                  f"error: {exc.message if isinstance(exc, PoseFactoryError) else repr(exc)}")
        outcome = WatchOutcome(record, False, reason)
        raise
    finally:
        assert outcome is not None
        outcome.unconfirmed = _finish(runpod, storage, settings, record, "done" if outcome.ok else "failed",
                                      outcome.reason)
        if outcome.unconfirmed:
            # Louder than anything else that may be on its way out (even Ctrl-C): pods may be billing.
            raise _loud(record, outcome.unconfirmed, "ended" if not outcome.ok else "is done")
    return outcome


# --- cancel, list ----------------------------------------------------------------------------------------------

def cancel(storage: Storage, settings: Settings, job_id: str) -> dict[str, Any]:
    """Shut every pod of the job down (retried until confirmed) and mark the job cancelled (a finished job keeps
    its state)."""
    record = _record(settings, job_id)
    state = record["state"] if record["state"] in ("done", "failed") else "cancelled"
    reason = record.get("reason") if state != "cancelled" else "cancelled"
    unconfirmed = _finish(client(settings), storage, settings, record, state, reason or state)
    if unconfirmed:
        raise _loud(record, unconfirmed, "was cancelled")
    return record


@dataclass
class PodsReport:
    pods: list[dict[str, Any]]
    api_error: str | None
    unconfirmed: dict[str, list[str]]  # job id -> pod names whose shutdown was never confirmed

    def as_json(self) -> dict[str, Any]:
        return {"version": JSON_VERSION, "pods": self.pods, "api_error": self.api_error,
                "pods_may_be_running": self.unconfirmed}


def job_of_pod(name: str) -> str | None:
    """The job id a pose-sync pod name belongs to."""
    match = POD_NAME.match(name)
    return match.group("job") if match else None


def pods_report(settings: Settings) -> PodsReport:
    """Pods this tool started that RunPod still lists, and pods of local job records whose shutdown never held."""
    unconfirmed = {r["job_id"]: r["pods_may_be_running"] for r in job_records(settings) if r.get("pods_may_be_running")}
    runpod = client(settings)
    try:
        pods = [p for p in runpod.list_pods() if str(p.get("name", "")).startswith(POD_NAME_PREFIX)
                and p.get("status") != "TERMINATED"]
    except RunPodApiError as exc:
        return PodsReport([], exc.message, unconfirmed)
    return PodsReport(pods, None, unconfirmed)
