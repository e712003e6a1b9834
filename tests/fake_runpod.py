"""A stand-in for RunPod's REST API v2 (the Pod part) for tests: stdlib + jsonschema, bound to 127.0.0.1.

Built from RunPod's own OpenAPI document, `tests/data/runpod-rest-v2-openapi.json` (OpenAPI 3.1.0,
"Runpod REST API" 2.0.0, server https://api.runpod.io, paths under /v2), loaded at run time:

  * every request body is validated against its schema in that document (`CreatePodRequest`,
    `PodActionRequest`) with a JSON Schema 2020-12 validator; a violation is a 422 problem whose `errors`
    name each field, as the document's example does ("$: additional properties 'bogus' not allowed");
  * every answer the stand-in sends is validated against its response schema (`Pod`, `ListPodsResponse`,
    `ErrorResponse`) before it leaves, with no field the schema does not declare: a stand-in bug is recorded
    in `spec_violations` and `stop()` raises it, so no test passes on a shape RunPod does not send;
  * statuses, actions and their allowed transitions come from `PodStatus`, `PodAction` and the
    `podAction` description (RUNNING: stop/restart/terminate; EXITED, ERROR: start/terminate;
    PROVISIONING, STARTING: stop/terminate; anything else 409); `terminate` and DELETE answer 204;
  * errors are RFC 9457 problems (`application/problem+json`, `title`/`status`/`detail`[/`errors`]);
    429 carries `Retry-After` in integer seconds (`TooManyRequestsError`).

A pod behaves like a pod:
  * it is created PROVISIONING, becomes STARTING after `provision_s`, and RUNNING once its container runs;
  * the container command is the image's entrypoint followed by the pod's `args` split like a shell does
    (or the image's CMD when `args` is empty), as Docker composes ENTRYPOINT and CMD; images are declared
    in `images` (e.g. parsed from the repository's Dockerfile with `image_from_dockerfile`); an unknown
    image never gets past PROVISIONING, like an image that cannot be pulled;
  * the container runs as a local process in its own empty folder (its cwd, HOME and TMPDIR), with ONLY
    the image's environment, the pod's `env` and what RunPod adds (RUNPOD_POD_ID, a pod-scoped
    RUNPOD_API_KEY, RUNPOD_GPU_COUNT, RUNPOD_DC_ID): nothing of the test process leaks in, and the
    image's files are this machine's (the image's PATH is replaced by `host_path`);
  * `{{ RUNPOD_SECRET_<name> }}` in an env value is replaced by the secret's value from `secrets` when
    the container starts; GET shows the reference, never the value;
  * when the container's command exits, the container is started again (RunPod restarts it) until the pod
    is stopped or terminated; stop and terminate send SIGTERM, then SIGKILL after `kill_timeout`;
  * the pod-scoped key works only on its own pod (GET, DELETE, action); anything else is 403.

Faults for tests: `inject(...)` answers a status instead of (or after) doing the work, or drops the
connection; `rate_limit_next(n)` answers 429; `no_capacity` holds GPU ids that cannot be placed (400);
`pod_fate(body)` may send a new pod to "stuck" (PROVISIONING forever) or "error" (ERROR).

What the document does NOT say, and the stand-in therefore chose (marked NOT IN SPEC at the code): the
wording of `detail`s, the 400 for an unknown GPU id or no capacity (the create description says 400
covers "could not be placed"), the GPU prices, that a container restart keeps the status RUNNING, that an
unknown secret sends the pod to ERROR, the pod id length. The 201 example in the document lists actions
["start", "terminate"] for a PROVISIONING pod while the podAction description says stop/terminate; the
stand-in follows the description.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shlex
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

SPEC_PATH = Path(__file__).resolve().parent / "data" / "runpod-rest-v2-openapi.json"
SPEC_URI = "urn:runpod-rest-v2"
API_PREFIX = "/v2"  # servers: [{url: https://api.runpod.io}], every path starts with /v2

# NOT IN SPEC: made-up $/hr per GPU, only their order is plausible. An id missing here is "unknown" (400).
GPU_PRICES: dict[str, float] = {
    "NVIDIA GeForce RTX 3090": 0.40, "NVIDIA GeForce RTX 4090": 0.70, "NVIDIA RTX A5000": 0.30,
    "NVIDIA RTX A6000": 0.80, "NVIDIA L4": 0.45, "NVIDIA L40S": 0.90, "NVIDIA A40": 0.45,
    "NVIDIA A100 80GB PCIe": 1.70, "NVIDIA H100 80GB HBM3": 2.80,
}
CPU_PRICE_PER_VCPU = 0.03  # NOT IN SPEC, made up as well
SECRET_REFERENCE = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_.-]+)\s*\}\}")


# --- the OpenAPI document ---------------------------------------------------------------------------------

class OpenApi:
    """RunPod's v2 OpenAPI document: schemas by name, validators, and 'declared fields only' checks."""

    def __init__(self, path: Path = SPEC_PATH):
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        self.document = json.loads(path.read_text())
        self.registry = Registry().with_resource(SPEC_URI, Resource.from_contents(
            self.document, default_specification=DRAFT202012))
        self._validators: dict[str, Any] = {}

    def schema(self, name: str) -> dict:
        return self.document["components"]["schemas"][name]

    def enum(self, name: str) -> list[str]:
        return list(self.schema(name)["enum"])

    def validator(self, name: str):
        from jsonschema import Draft202012Validator

        if name not in self._validators:
            self._validators[name] = Draft202012Validator(
                {"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=self.registry)
        return self._validators[name]

    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.registry.resolver().lookup(SPEC_URI + schema["$ref"]).contents
        return schema

    def declared(self, schema: dict) -> dict[str, dict]:
        """Every property a schema declares, through $ref and allOf/anyOf/oneOf/if/then (name -> subschema)."""
        schema = self._resolve(schema)
        found = dict(schema.get("properties", {}))
        for keyword in ("allOf", "anyOf", "oneOf"):
            for part in schema.get(keyword, []):
                found.update(self.declared(part))
        for keyword in ("if", "then", "else"):
            if isinstance(schema.get(keyword), dict):
                found.update(self.declared(schema[keyword]))
        return found

    def violations(self, name: str, instance: Any) -> list[str]:
        """Request-validation failures formatted like RunPod's `errors` ("$.gpu: ..."), unknown fields by name.

        JSON Schema drops the annotations of a failing subschema, so one bad field also makes its
        siblings "unevaluated"; only names the schema does not declare at all are reported as unknown.
        """
        out = []
        for error in sorted(self.validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path)):
            where = _json_path(error.absolute_path)
            if error.validator in ("unevaluatedProperties", "additionalProperties"):
                declared = self.declared(error.schema)
                unknown = [n for n in re.findall(r"'([^']*)'", error.message) if n not in declared]
                if unknown:
                    out.append(f"{where}: additional properties {', '.join(repr(n) for n in unknown)} not allowed")
                continue
            out.append(f"{where}: {error.message}")
        return out

    def strict_problems(self, name: str, instance: Any) -> list[str]:
        """Schema violations plus any field the schema does not declare (for what the stand-in sends)."""
        problems = [f"{_json_path(e.absolute_path)}: {e.message}" for e in self.validator(name).iter_errors(instance)]
        problems += self._undeclared(self.schema(name), instance, "$")
        return problems

    def _undeclared(self, schema: dict, instance: Any, where: str) -> list[str]:
        schema = self._resolve(schema)
        if isinstance(instance, dict):
            declared = self.declared(schema)
            extra = schema.get("additionalProperties")
            out = []
            for key, value in instance.items():
                if key in declared:
                    out += self._undeclared(declared[key], value, f"{where}.{key}")
                elif not isinstance(extra, dict):
                    out.append(f"{where}: field {key!r} is not declared by the schema")
            return out
        if isinstance(instance, list) and isinstance(schema.get("items"), dict):
            return [problem for i, item in enumerate(instance)
                    for problem in self._undeclared(schema["items"], item, f"{where}[{i}]")]
        return []


def _json_path(parts) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


@cache
def openapi() -> OpenApi:
    """The document, parsed once per process."""
    return OpenApi()


# --- images ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageConfig:
    """What `docker inspect` says about an image that matters for starting it."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def command(self, args: str) -> list[str]:
        """ENTRYPOINT + the pod's args (split like a shell), or + CMD when the pod gives no args."""
        return [*self.entrypoint, *(shlex.split(args) if args.strip() else self.cmd)]


def image_from_dockerfile(path: Path) -> ImageConfig:
    """ENTRYPOINT, CMD (exec form) and ENV of a Dockerfile's final stage."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    env: dict[str, str] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#") or len(words) < 2:
            continue
        keyword, rest = words[0].upper(), words[1]
        if keyword == "FROM":
            entrypoint, cmd, env = [], [], {}
        elif keyword in ("ENTRYPOINT", "CMD"):
            value = json.loads(rest)  # exec form only: the shell form would wrap the command in /bin/sh -c
            if keyword == "ENTRYPOINT":
                entrypoint = value
            else:
                cmd = value
        elif keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return ImageConfig(entrypoint, cmd, env)


# --- the stand-in ------------------------------------------------------------------------------------------

def _now_iso() -> str:
    """RFC 3339 date-time as the document's examples write them: 2026-06-01T12:00:00Z."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _random_id(length: int) -> str:
    # Pod id example "7h9k2m4n6p" (10 lowercase letters and digits). NOT IN SPEC: that every id looks so.
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


class _Problem(Exception):
    def __init__(self, status: int, detail: str, errors: list[str] | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers or {}


@dataclass
class _Fault:
    method: str
    path: re.Pattern
    status: int | None
    after: bool
    drop: bool
    retry_after: int | None
    count: int
    skip: int


ALLOWED_ACTIONS = {  # from the podAction description
    "RUNNING": ["stop", "restart", "terminate"], "EXITED": ["start", "terminate"], "ERROR": ["start", "terminate"],
    "PROVISIONING": ["stop", "terminate"], "STARTING": ["stop", "terminate"], "TERMINATED": [],
}


class FakeRunPod:
    """RunPod's v2 Pod API on 127.0.0.1. Use as a context manager or call start()/stop()."""

    def __init__(self, api_key: str = "test-runpod-key", *, images: dict[str, ImageConfig] | None = None,
                 run_dir: Path | None = None, host_path: str | None = None, secrets: dict[str, str] | None = None,
                 provision_s: float = 0.05, restart_delay_s: float = 0.05, kill_timeout: float = 5.0):
        self.spec = openapi()
        self.api_key = api_key
        self.images = dict(images or {})
        self.run_dir = run_dir
        self.host_path = host_path or os.environ.get("PATH", "/usr/bin:/bin")
        self.secrets = dict(secrets or {})
        self.provision_s = provision_s
        self.restart_delay_s = restart_delay_s
        self.kill_timeout = kill_timeout
        self.no_capacity: set[str] = set()
        self.pod_fate: Callable[[dict], str | None] = lambda body: None
        self.pod_keys_forbidden = False
        self.pods: dict[str, dict] = {}           # by id, TERMINATED ones included (GET answers 404 for those)
        self.processes: dict[str, subprocess.Popen] = {}
        self.calls: list[tuple[str, str, Any]] = []  # (method, path, json body); never the Authorization header
        self.pod_calls: list[tuple[str, str, str]] = []  # (pod id, method, path) made with a pod-scoped key
        self.spec_violations: list[str] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL a client appends /pods to, like https://api.runpod.io/v2."""
        if self.port is None:
            raise RuntimeError("FakeRunPod is not started")
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    def start(self) -> FakeRunPod:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._stopping.clear()
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                          name="fake-runpod", daemon=True),
                         threading.Thread(target=self._supervise, name="fake-runpod-pods", daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and end every container still running; raise if the stand-in broke the spec."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []
        with self._lock:
            procs = list(self.processes.values())
        for proc in procs:
            self._terminate(proc)
        if self.spec_violations:
            raise AssertionError("FakeRunPod answered outside RunPod's OpenAPI document: "
                                 + "; ".join(self.spec_violations[:5]))

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- test controls ----------------------------------------------------------------------------------
    def inject(self, method: str = ".*", path: str = ".*", *, status: int | None = 500, after: bool = False,
               drop: bool = False, retry_after: int | None = None, count: int = 1, skip: int = 0) -> None:
        """After letting `skip` of them through, the next `count` requests made with the account's key matching
        method and path (regexes, path without /v2) get `status` (or a dropped connection) instead of an answer;
        with after=True the work is done first, and the client hears the fault."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(path), status, after, drop, retry_after, count, skip))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def rate_limit_next(self, count: int, retry_after: int = 1) -> None:
        """The next `count` requests are answered 429 with Retry-After (integer seconds)."""
        self.inject(status=429, retry_after=retry_after, count=count)

    def pods_named(self, prefix: str = "") -> list[dict]:
        with self._lock:
            return [copy.deepcopy(p) for p in self.pods.values() if p["name"].startswith(prefix)]

    def up(self) -> list[str]:
        """Names of pods that are not EXITED or TERMINATED (what would bill for compute)."""
        with self._lock:
            return sorted(p["name"] for p in self.pods.values() if p["status"] not in ("EXITED", "TERMINATED"))

    def running_processes(self) -> list[str]:
        with self._lock:
            return sorted(pid for pid, proc in self.processes.items() if proc.poll() is None)

    def restarts(self, pod_id: str) -> int:
        with self._lock:
            return self.pods[pod_id]["_restarts"]

    def log(self, pod_id: str) -> str:
        """Everything the pod's containers printed (what the console's log tab shows)."""
        path = self._container_dir(pod_id) / "container.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pod_key(self, pod_id: str) -> str:
        with self._lock:
            return self.pods[pod_id]["_key"]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll a condition (for tests), without racing a fixed sleep against work."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    # --- pods ---------------------------------------------------------------------------------------------
    def _container_dir(self, pod_id: str) -> Path:
        if self.run_dir is None:
            raise RuntimeError("FakeRunPod needs run_dir to start containers")
        return self.run_dir / f"pod-{pod_id}"

    def _new_pod(self, body: dict) -> dict:
        """A Pod (components.schemas.Pod) from a CreatePodRequest, with the document's defaults."""
        pod_id = _random_id(10)
        while pod_id in self.pods:
            pod_id = _random_id(10)
        if "gpu" in body:
            price = GPU_PRICES[body["gpu"]["id"]]
            compute = {"gpu": {"id": body["gpu"]["id"], "count": body["gpu"].get("count", 1)}}
            cost = round(price * compute["gpu"]["count"], 4)
            cuda = "12.8"
        else:
            compute = {"cpu": {"id": body["cpu"]["id"], "vcpuCount": body["cpu"]["vcpuCount"],
                               "memory": body["cpu"]["vcpuCount"] * 2}}
            cost = round(CPU_PRICE_PER_VCPU * body["cpu"]["vcpuCount"], 4)
            cuda = None
        mounts = copy.deepcopy(body.get("mounts", {}))
        return {
            "id": pod_id, "name": body["name"], "image": body.get("image", ""), "args": body.get("args", ""),
            "disk": body.get("disk", 50), "ports": list(body.get("ports", [])), "env": dict(body.get("env", {})),
            "registry": body.get("registry"), "status": "PROVISIONING", "actions": [], "mounts": mounts,
            **compute, "cloud": body.get("cloud", "SECURE"),
            "dataCenterId": (body.get("dataCenterIds") or ["US-KS-2"])[0],
            "cudaVersion": cuda, "ssh": {"proxy": None, "direct": None}, "template": None, "cost": cost,
            "locked": False, "globalNetworking": {"enabled": False}, "runtime": None, "createdAt": _now_iso(),
            "startedAt": None,
            # private state (never served)
            "_price": cost, "_key": "rpa_pod_" + _random_id(24), "_fate": self.pod_fate(body),
            "_phase_since": time.monotonic(), "_restarts": -1, "_next_start": None, "_busy": False,
        }

    def _public(self, pod: dict) -> dict:
        out = {k: copy.deepcopy(v) for k, v in pod.items() if not k.startswith("_")}
        out["actions"] = list(ALLOWED_ACTIONS[pod["status"]])
        out["cost"] = 0.0 if pod["status"] in ("EXITED", "TERMINATED") else pod["_price"]
        if pod["status"] == "RUNNING":
            out["runtime"] = {"uptime": int(time.monotonic() - pod["_phase_since"]), "ports": []}
            out["ssh"]["proxy"] = {"host": "ssh.runpod.io", "port": 22, "username": f"{pod['id']}-64411eb2",
                                   "command": f"ssh {pod['id']}-64411eb2@ssh.runpod.io"}
        return out

    def _set_status(self, pod: dict, status: str) -> None:
        pod["status"] = status
        pod["_phase_since"] = time.monotonic()
        if status != "RUNNING":
            pod["runtime"] = None

    def _supervise(self) -> None:
        """Move pods through their life: PROVISIONING -> STARTING -> RUNNING; restart exited containers."""
        while not self._stopping.wait(0.02):
            with self._lock:
                pods = [p for p in self.pods.values()
                    if p["status"] in ("PROVISIONING", "STARTING", "RUNNING") and not p["_busy"]]
            for pod in pods:
                try:
                    self._advance(pod)
                except Exception as exc:  # a stand-in bug must show up in the test, not hang it
                    self.spec_violations.append(f"supervisor: {exc!r}")

    def _advance(self, pod: dict) -> None:
        now = time.monotonic()
        with self._lock:
            status = pod["status"]
            if pod["_busy"]:
                return
            if status == "PROVISIONING":
                if pod["_fate"] == "stuck" or pod["image"] not in self.images:
                    return  # no machine, or an image that cannot be pulled: it never gets further
                if now - pod["_phase_since"] >= self.provision_s:
                    self._set_status(pod, "STARTING")
                    pod["startedAt"] = None
                return
            if status == "STARTING":
                if pod["_fate"] == "error":
                    self._set_status(pod, "ERROR")
                    return
                pod["_next_start"] = now
            proc = self.processes.get(pod["id"])
            if status == "RUNNING" and proc is not None and proc.poll() is None:
                return
            if status == "RUNNING" and pod["_next_start"] is None:  # the command exited: RunPod restarts it
                pod["_next_start"] = now + self.restart_delay_s
                return
            if pod["_next_start"] is None or now < pod["_next_start"]:
                return
            pod["_next_start"] = None
        self._launch(pod)

    def _launch(self, pod: dict) -> None:
        """Start the pod's container: image entrypoint + args, the pod's env with secrets filled in."""
        image = self.images[pod["image"]]
        folder = self._container_dir(pod["id"])
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in image.env.items() if k != "PATH"}
        env.update(PATH=self.host_path, HOME=str(folder), TMPDIR=str(folder / "tmp"))
        missing: list[str] = []

        def secret(match: re.Match) -> str:
            if match.group(1) not in self.secrets:
                missing.append(match.group(1))
            return self.secrets.get(match.group(1), "")

        for key, value in pod["env"].items():
            env[key] = SECRET_REFERENCE.sub(secret, value)
        env.update(RUNPOD_POD_ID=pod["id"], RUNPOD_API_KEY=pod["_key"], RUNPOD_DC_ID=pod["dataCenterId"] or "",
                   RUNPOD_GPU_COUNT=str(pod.get("gpu", {}).get("count", 0)))
        command = image.command(pod["args"])
        with (folder / "container.log").open("a") as log:
            if missing:  # NOT IN SPEC: RunPod says a pod that uses a deleted secret fails; here it goes to ERROR
                log.write(f"secret(s) not found: {', '.join(missing)}\n")
                with self._lock:
                    self._set_status(pod, "ERROR")
                return
            log.write(f"--- start: {shlex.join(command)}\n")
            log.flush()
            try:
                proc = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                log.write(f"cannot start the container command: {exc}\n")
                with self._lock:
                    self._set_status(pod, "ERROR")
                return
        with self._lock:
            if pod["status"] not in ("STARTING", "RUNNING") or pod["_busy"]:  # stopped while starting
                self._terminate(proc)
                return
            self.processes[pod["id"]] = proc
            pod["_restarts"] += 1
            if pod["status"] == "STARTING":
                self._set_status(pod, "RUNNING")
                pod["startedAt"] = _now_iso()

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the container's process group, then SIGKILL after kill_timeout."""
        if proc.poll() is not None:
            return

        def send(sig: int) -> None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        send(signal.SIGTERM)
        try:
            proc.wait(timeout=self.kill_timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=10)

    def _stop_container(self, pod_id: str) -> None:
        with self._lock:
            proc = self.processes.pop(pod_id, None)
        if proc is not None:
            self._terminate(proc)

    def _apply(self, pod: dict, action: str) -> None:
        """Change the pod's status first, then end its container: the supervisor never restarts a stopping pod."""
        with self._lock:
            if action not in ALLOWED_ACTIONS[pod["status"]]:
                raise _Problem(409, f"action {action} is not valid for a pod in status {pod['status']}")
            if action == "stop":
                self._set_status(pod, "EXITED")
            elif action == "terminate":
                self._set_status(pod, "TERMINATED")
            elif action == "start":
                self._set_status(pod, "PROVISIONING")
                pod["_fate"] = None if pod["_fate"] == "error" else pod["_fate"]
            pod["_busy"] = True
        try:
            if action in ("stop", "terminate", "restart"):
                self._stop_container(pod["id"])
        finally:
            with self._lock:
                pod["_busy"] = False
                if action == "restart":
                    pod["_next_start"] = time.monotonic()

    def _create(self, body: Any) -> dict:
        errors = self.spec.violations("CreatePodRequest", body)
        if errors:
            raise _Problem(422, "Request validation failed.", errors)
        # Cross-field rules the document says are "enforced at the handler layer" (400).
        if ("gpu" in body) == ("cpu" in body):
            raise _Problem(400, "exactly one of gpu or cpu must be set")
        mounts = body.get("mounts", {})
        if "persistent" in mounts and "network" in mounts:
            raise _Problem(400, "mounts.persistent and mounts.network are mutually exclusive")
        if "cpu" in body and "persistent" in mounts:
            raise _Problem(400, "mounts.persistent is invalid for a CPU pod")
        gpu = body.get("gpu")
        if gpu and gpu.get("allowedCudaVersions") and gpu.get("minCudaVersion"):
            raise _Problem(400, "allowedCudaVersions and minCudaVersion are mutually exclusive")
        if gpu and gpu["id"] not in GPU_PRICES:
            raise _Problem(400, f"unknown GPU type {gpu['id']!r}")  # NOT IN SPEC: wording
        if gpu and gpu["id"] in self.no_capacity:
            # NOT IN SPEC: wording; the document says capacity exhaustion is a 400 with a human-readable detail.
            raise _Problem(400, f"There are no instances available with the requested specifications ({gpu['id']}).")
        with self._lock:
            pod = self._new_pod(body)
            self.pods[pod["id"]] = pod
            return self._public(pod)

    # --- HTTP ---------------------------------------------------------------------------------------------
    def _check_answer(self, schema: str, payload: Any) -> None:
        for problem in self.spec.strict_problems(schema, payload):
            self.spec_violations.append(f"{schema}: {problem}")

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.count > 0 and re.fullmatch(fault.method, method) and fault.path.fullmatch(path):
                    if fault.skip > 0:
                        fault.skip -= 1
                        continue
                    fault.count -= 1
                    return fault
        return None

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "FakeRunPod/2.0"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, payload: Any = None, *, schema: str | None = None,
                      content_type: str = "application/json", headers: dict | None = None) -> None:
                if schema and payload is not None:
                    fake._check_answer(schema, payload)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if payload is not None:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def _problem(self, problem: _Problem) -> None:
                payload = {"title": HTTPStatus(problem.status).phrase, "status": problem.status,
                           "detail": problem.detail}
                if problem.errors:
                    payload["errors"] = problem.errors
                self._send(problem.status, payload, schema="ErrorResponse",
                           content_type="application/problem+json", headers=problem.headers)

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = _Problem(400, "request body is not valid JSON")
                split = urlsplit(self.path)
                with fake._lock:
                    fake.calls.append((method, self.path, None if isinstance(body, _Problem) else body))
                path = split.path[len(API_PREFIX):] if split.path.startswith(API_PREFIX + "/") else split.path
                fault = None
                try:
                    key = self._authenticate()
                    if key is not None:
                        with fake._lock:
                            fake.pod_calls.append((key, method, path))
                    else:  # faults hit the account's requests (the laptop's), not the pods' own
                        fault = fake._take_fault(method, path)
                    if fault is not None and not fault.after:
                        if fault.drop:
                            return self._drop()
                        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                        return self._problem(_Problem(fault.status, "injected by the test", headers=headers))
                    if not split.path.startswith(API_PREFIX + "/"):
                        raise _Problem(404, "resource not found")
                    if isinstance(body, _Problem):
                        raise body
                    answer = self._route(method, [unquote(p) for p in path.strip("/").split("/")], body, key)
                except _Problem as problem:
                    answer = None
                    if fault is None:
                        return self._problem(problem)
                if fault is not None:  # the work is done, but the client hears otherwise
                    if fault.drop:
                        return self._drop()
                    return self._problem(_Problem(fault.status, "injected by the test after the work was done"))
                self._send(*answer[:2], schema=answer[2])

            def _authenticate(self) -> str | None:
                """None for the account's key, the pod id for a pod-scoped key."""
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                token = token.strip()
                if scheme.lower() != "bearer" or not token:
                    raise _Problem(401, "missing bearer token")
                if token == fake.api_key:
                    return None
                with fake._lock:
                    for pod in fake.pods.values():
                        if pod["_key"] == token and pod["status"] != "TERMINATED":
                            return pod["id"]
                raise _Problem(401, "invalid api key")

            def _route(self, method: str, parts: list[str], body: Any, scope: str | None):
                if parts[0] != "pods" or len(parts) > 3 or (len(parts) == 3 and parts[2] != "action"):
                    raise _Problem(404, "resource not found")
                if len(parts) == 1:
                    if scope is not None:
                        raise _Problem(403, "access denied")
                    if method == "GET":
                        with fake._lock:
                            pods = [fake._public(p) for p in fake.pods.values() if p["status"] != "TERMINATED"]
                        return 200, {"pods": pods}, "ListPodsResponse"
                    if method == "POST":
                        return 201, fake._create(body), "Pod"
                    raise _Problem(405, "The requested method is not allowed for this path.")
                pod_id = parts[1]
                if scope is not None and (scope != pod_id or fake.pod_keys_forbidden):
                    raise _Problem(403, "access denied")
                with fake._lock:
                    pod = fake.pods.get(pod_id)
                if pod is None or pod["status"] == "TERMINATED":
                    raise _Problem(404, "pod not found")
                if len(parts) == 3:
                    if method != "POST":
                        raise _Problem(405, "The requested method is not allowed for this path.")
                    errors = fake.spec.violations("PodActionRequest", body)
                    if errors:
                        raise _Problem(422, "Request validation failed.", errors)
                    fake._apply(pod, body["action"])
                    if body["action"] == "terminate":
                        return 204, None, None
                    with fake._lock:
                        return 200, fake._public(pod), "Pod"
                if method == "GET":
                    with fake._lock:
                        return 200, fake._public(pod), "Pod"
                if method == "DELETE":
                    fake._apply(pod, "terminate")
                    return 204, None, None
                if method == "PATCH":
                    raise _Problem(501, "updatePod is documented by RunPod but not implemented by the stand-in")
                raise _Problem(405, "The requested method is not allowed for this path.")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

            def do_PUT(self) -> None:
                self._handle("PUT")

        return Handler
