"""A stand-in for RunPod's REST API (v1, the Pod part) for tests: stdlib only, bound to 127.0.0.1.

RunPod cannot be reached from the test machine, so the code that will drive render pods talks to this
server instead. Request and response shapes are taken from RunPod's published OpenAPI document of the
v1 REST API, not invented:

  OpenAPI 3.0.3 "RunPod API" 0.1.0, server https://rest.runpod.io/v1, as stored in github.com/runpod/docs
  api-reference/openapi.json (commit f17efc52f0739e5c3ee1939bbbc37f0683bf85fd). The same document renders
  the API reference pages:
    https://docs.runpod.io/api-reference/pods/POST/pods.md                  CreatePod   (PodCreateInput -> 201 Pod)
    https://docs.runpod.io/api-reference/pods/GET/pods.md                   ListPods    (-> 200 Pods)
    https://docs.runpod.io/api-reference/pods/GET/pods/podId.md             GetPod      (-> 200 Pod, 404)
    https://docs.runpod.io/api-reference/pods/POST/pods/podId/stop.md       StopPod     (-> 200, no body documented)
    https://docs.runpod.io/api-reference/pods/POST/pods/podId/start.md      StartPod    (-> 200, no body documented)
    https://docs.runpod.io/api-reference/pods/DELETE/pods/podId.md          DeletePod   (-> 200, no body documented)
  Authentication: components.securitySchemes.ApiKey = {type: http, scheme: bearer}, i.e. the header
  `Authorization: Bearer <api key>` (the curl samples on those pages send exactly that).

What the spec does NOT say, and what this fake therefore had to choose (each choice is marked
"NOT IN SPEC" next to the code):
  * the error body: the spec gives 400/401/404 only a description ("Invalid input.", "Unauthorized.",
    "Pod not found.", "Invalid Pod ID.") and no schema. The fake answers {"error": <text>, "status": <code>}.
  * which fields are required: PodCreateInput has no `required` list at all. The fake rejects a body
    without imageName and without templateId (a pod must run *something*) and, by default, a body with
    field names the schema does not list (so a typo such as the GraphQL-style `gpuTypeId` fails loudly).
  * 404 for stop/start/delete of an unknown id: the spec lists only 400 "Invalid Pod ID." and 401 there;
    the fake answers 404 "Pod not found." as GetPod documents. A client should treat 400 and 404 alike.
  * rate limiting: the v1 spec documents no 429. RunPod documents 429 "Too Many Requests" for the v2 API
    (https://docs.runpod.io/api-reference-v2/rate-limits); `rate_limit_next()` imitates that.
  * deleted pods: the fake removes them (GET then answers 404); desiredStatus TERMINATED (which the
    spec's enum has) is kept in `terminated`, not served.
  * prices: GPU_PRICES below are made-up round numbers, NOT RunPod prices.

The Pod response uses the spec's field names: note it is `image` in a Pod, while the create input
says `imageName` (Pod schema has no `imageName` property).

Pods can be backed by local processes: `on_create(pod)` may return a subprocess.Popen (for example the
project's worker started with the pod's env, see `container_env`); stop/delete send it SIGTERM, then
SIGKILL after `kill_timeout` seconds, as RunPod does when it shuts a container down.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import string
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API_PREFIX = "/v1"  # servers: [{url: https://rest.runpod.io/v1}]

# desiredStatus enum of the Pod schema: ["RUNNING", "EXITED", "TERMINATED"]
RUNNING, EXITED, TERMINATED = "RUNNING", "EXITED", "TERMINATED"

# Made-up $/hr per GPU for the fake's costPerHr. NOT RunPod prices; only their order is plausible.
GPU_PRICES: dict[str, float] = {
    "NVIDIA GeForce RTX 3090": 0.40,
    "NVIDIA GeForce RTX 4090": 0.70,
    "NVIDIA RTX A5000": 0.30,
    "NVIDIA RTX A6000": 0.80,
    "NVIDIA L4": 0.45,
    "NVIDIA L40S": 0.90,
    "NVIDIA A40": 0.45,
    "NVIDIA A100 80GB PCIe": 1.70,
    "NVIDIA H100 80GB HBM3": 2.80,
}
DEFAULT_GPU_PRICE = 1.00  # any other GPU type the spec allows
CPU_PRICE_PER_VCPU = 0.03  # made up as well
# NOT IN SPEC: the GPU type given to a GPU pod created without gpuTypeIds (RunPod picks one itself).
DEFAULT_GPU_TYPE = "NVIDIA GeForce RTX 4090"

# --- PodCreateInput (components.schemas.PodCreateInput), enums copied from the spec -------------------
GPU_TYPE_IDS = (
    "NVIDIA GeForce RTX 4090", "NVIDIA A40", "NVIDIA RTX A5000", "NVIDIA GeForce RTX 3090", "NVIDIA RTX A4500",
    "NVIDIA RTX A6000", "NVIDIA L40S", "NVIDIA L4", "NVIDIA H100 80GB HBM3", "NVIDIA RTX 4000 Ada Generation",
    "NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA RTX A4000", "NVIDIA RTX 6000 Ada Generation",
    "NVIDIA RTX 2000 Ada Generation", "NVIDIA H200", "NVIDIA L40", "NVIDIA H100 NVL", "NVIDIA H100 PCIe",
    "NVIDIA GeForce RTX 3080 Ti", "NVIDIA GeForce RTX 3080", "NVIDIA GeForce RTX 3070", "Tesla V100-PCIE-16GB",
    "AMD Instinct MI300X OAM", "NVIDIA RTX A2000", "Tesla V100-FHHL-16GB", "NVIDIA GeForce RTX 4080 SUPER",
    "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4070 Ti", "Tesla V100-SXM2-32GB",
    "NVIDIA RTX 4000 SFF Ada Generation", "NVIDIA RTX 5000 Ada Generation", "NVIDIA GeForce RTX 5090",
    "NVIDIA A30", "NVIDIA GeForce RTX 4080", "NVIDIA GeForce RTX 5080", "NVIDIA GeForce RTX 3090 Ti",
    "NVIDIA B200",
)
DATA_CENTER_IDS = (
    "EU-RO-1", "CA-MTL-1", "EU-SE-1", "US-IL-1", "EUR-IS-1", "EU-CZ-1", "US-TX-3", "EUR-IS-2", "US-KS-2",
    "US-GA-2", "US-WA-1", "US-TX-1", "CA-MTL-3", "EU-NL-1", "US-TX-4", "US-CA-2", "US-NC-1", "OC-AU-1",
    "US-DE-1", "EUR-IS-3", "CA-MTL-2", "AP-JP-1", "EUR-NO-1", "EU-FR-1", "US-KS-3", "US-GA-1",
)
CUDA_VERSIONS = ("12.8", "12.7", "12.6", "12.5", "12.4", "12.3", "12.2", "12.1", "12.0", "11.8")
CPU_FLAVOR_IDS = ("cpu3c", "cpu3g", "cpu3m", "cpu5c", "cpu5g", "cpu5m")
PRIORITY = ("availability", "custom")

# field -> (kind, constraint). kinds: str, int, num, bool, strlist, env. Defaults are the spec's.
POD_CREATE_FIELDS: dict[str, tuple[str, object]] = {
    "allowedCudaVersions": ("strlist", CUDA_VERSIONS),
    "cloudType": ("str", ("SECURE", "COMMUNITY")),           # default SECURE
    "computeType": ("str", ("GPU", "CPU")),                  # default GPU
    "containerDiskInGb": ("int?", None),                     # default 50, nullable
    "containerRegistryAuthId": ("str", None),
    "countryCodes": ("strlist", None),
    "cpuFlavorIds": ("strlist", CPU_FLAVOR_IDS),
    "cpuFlavorPriority": ("str", PRIORITY),
    "dataCenterIds": ("strlist", DATA_CENTER_IDS),
    "dataCenterPriority": ("str", PRIORITY),
    "dockerEntrypoint": ("strlist", None),                   # default []
    "dockerStartCmd": ("strlist", None),                     # default []
    "env": ("env", None),                                    # default {} (object of strings)
    "globalNetworking": ("bool", None),
    "gpuCount": ("int", 1),                                  # default 1, minimum 1
    "gpuTypeIds": ("strlist", GPU_TYPE_IDS),
    "gpuTypePriority": ("str", PRIORITY),
    "imageName": ("str", None),
    "interruptible": ("bool", None),                         # default false
    "locked": ("bool", None),                                # default false
    "minDiskBandwidthMBps": ("num", None),
    "minDownloadMbps": ("num", None),
    "minRAMPerGPU": ("int", None),                           # default 8
    "minUploadMbps": ("num", None),
    "minVCPUPerGPU": ("int", None),                          # default 2
    "name": ("str", 191),                                    # default "my pod", maxLength 191
    "networkVolumeId": ("str", None),
    "ports": ("strlist", None),                              # default "8888/http,22/tcp"
    "supportPublicIp": ("bool", None),
    "templateId": ("str", None),
    "vcpuCount": ("int", None),                              # default 2 (CPU pods)
    "volumeInGb": ("int?", None),                            # default 20, nullable
    "volumeMountPath": ("str", None),                        # default /workspace
}


class _BadRequest(Exception):
    pass


def _now_iso() -> str:
    """Timestamps as the spec's examples write them: 2024-07-12T19:14:40.144Z."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _status_change(verb: str) -> str:
    # Pod.lastStatusChange example: "Rented by User: Fri Jul 12 2024 15:14:40 GMT-0400 (Eastern Daylight Time)".
    # NOT IN SPEC: the wording for stop ("Stopped by User") and start ("Resumed by User") is a guess.
    return f"{verb} by User: " + datetime.now(UTC).strftime("%a %b %d %Y %H:%M:%S GMT+0000 (UTC)")


def _random_id(length: int) -> str:
    # Pod.id example "xedezhzb9la3ye" (14), Pod.machineId example "s194cr8pls2z" (12).
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


def _gpu_display_name(gpu_type_id: str) -> str:
    # NOT IN SPEC: the spec lists Pod.gpu.displayName without examples; "RTX 4090" for
    # "NVIDIA GeForce RTX 4090" is what RunPod's console shows, used here as a plausible value.
    for prefix in ("NVIDIA GeForce ", "NVIDIA "):
        if gpu_type_id.startswith(prefix):
            return gpu_type_id[len(prefix):]
    return gpu_type_id


def validate_pod_create_input(body: object, *, reject_unknown_fields: bool = True) -> dict:
    """Check a CreatePod body against PodCreateInput; raise _BadRequest with a readable reason."""
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object (PodCreateInput)")
    if reject_unknown_fields:  # NOT IN SPEC: the schema does not forbid additional properties
        unknown = sorted(set(body) - set(POD_CREATE_FIELDS))
        if unknown:
            raise _BadRequest(f"unknown field(s) for PodCreateInput: {', '.join(unknown)}")
    for field, value in body.items():
        if field not in POD_CREATE_FIELDS:
            continue
        kind, constraint = POD_CREATE_FIELDS[field]
        if kind == "int?" and value is None:
            continue
        if kind in ("int", "int?"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise _BadRequest(f"{field} must be an integer")
            if field == "gpuCount" and value < 1:  # gpuCount: minimum 1
                raise _BadRequest("gpuCount must be at least 1")
            if value < 0:
                raise _BadRequest(f"{field} must not be negative")
        elif kind == "num":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise _BadRequest(f"{field} must be a number")
        elif kind == "bool":
            if not isinstance(value, bool):
                raise _BadRequest(f"{field} must be a boolean")
        elif kind == "str":
            if not isinstance(value, str):
                raise _BadRequest(f"{field} must be a string")
            if isinstance(constraint, tuple) and value not in constraint:
                raise _BadRequest(f"{field} must be one of {', '.join(constraint)}")
            if isinstance(constraint, int) and len(value) > constraint:
                raise _BadRequest(f"{field} must be at most {constraint} characters")
        elif kind == "strlist":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _BadRequest(f"{field} must be an array of strings")
            if isinstance(constraint, tuple):
                bad = [v for v in value if v not in constraint]
                if bad:
                    raise _BadRequest(f"{field}: unsupported value(s) {bad}")
        elif kind == "env":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise _BadRequest("env must be an object of string values")
    # NOT IN SPEC: PodCreateInput has no `required` list; a pod without an image or template cannot run.
    if not body.get("imageName") and not body.get("templateId"):
        raise _BadRequest("imageName is required (or templateId)")
    return body


def container_env(pod: dict) -> dict[str, str]:
    """The environment a pod's container sees: the pod's `env` plus RUNPOD_POD_ID, which RunPod sets in
    every pod (https://docs.runpod.io/docs/create-pod: "runpodctl stop pod $RUNPOD_POD_ID")."""
    env = {str(k): str(v) for k, v in (pod.get("env") or {}).items()}
    env["RUNPOD_POD_ID"] = pod["id"]
    return env


class FakeRunPod:
    """RunPod's v1 Pod API on 127.0.0.1. Use as a context manager or call start()/stop()."""

    def __init__(self, api_key: str = "test-runpod-key", *,
                 on_create: Callable[[dict], subprocess.Popen | None] | None = None,
                 kill_timeout: float = 5.0, reject_unknown_fields: bool = True):
        self.api_key = api_key
        self.on_create = on_create
        self.kill_timeout = kill_timeout
        self.reject_unknown_fields = reject_unknown_fields
        self.pods: dict[str, dict] = {}          # current state by id (what GET /pods/{id} returns)
        self.terminated: dict[str, dict] = {}    # deleted pods, last state, desiredStatus TERMINATED
        self.processes: dict[str, subprocess.Popen] = {}
        self.calls: list[tuple[str, str, dict | None]] = []  # (method, path, json body); no headers kept
        self._rate_limited = 0
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL a client appends /pods to, like https://rest.runpod.io/v1."""
        if self.port is None:
            raise RuntimeError("FakeRunPod is not started")
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    def start(self) -> FakeRunPod:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-runpod", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down and end every pod process still running (no process is left behind)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            procs = list(self.processes.values())
        for proc in procs:
            self._terminate(proc)

    def __enter__(self) -> FakeRunPod:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- test controls -----------------------------------------------------------------------------
    def rate_limit_next(self, count: int) -> None:
        """Answer the next `count` requests (any route, before authentication) with 429."""
        with self._lock:
            self._rate_limited = max(0, int(count))

    def running_processes(self) -> list[str]:
        """Ids of pods whose process (from on_create) is still alive."""
        with self._lock:
            return [pod_id for pod_id, proc in self.processes.items() if proc.poll() is None]

    # --- pod behaviour -----------------------------------------------------------------------------
    def _new_pod(self, body: dict) -> dict:
        """Build a Pod (components.schemas.Pod) from a PodCreateInput, filling the spec's defaults."""
        compute_type = body.get("computeType", "GPU")
        gpu_count = body.get("gpuCount", 1)
        pod_id = _random_id(14)
        while pod_id in self.pods or pod_id in self.terminated:
            pod_id = _random_id(14)
        if compute_type == "GPU":
            gpu_type = (body.get("gpuTypeIds") or [DEFAULT_GPU_TYPE])[0]
            price = GPU_PRICES.get(gpu_type, DEFAULT_GPU_PRICE)
            cost = round(price * gpu_count, 4)
            gpu = {"id": gpu_type, "count": gpu_count, "displayName": _gpu_display_name(gpu_type),
                   "securePrice": price, "communityPrice": round(price * 0.8, 4)}
            vcpu = body.get("minVCPUPerGPU", 2) * gpu_count
            memory = body.get("minRAMPerGPU", 8) * gpu_count
            cpu_flavor = None
        else:
            gpu_type, gpu = None, None
            vcpu = body.get("vcpuCount", 2)
            memory = vcpu * 4
            cost = round(CPU_PRICE_PER_VCPU * vcpu, 4)
            cpu_flavor = (body.get("cpuFlavorIds") or ["cpu3c"])[0]
        ports = body.get("ports", ["8888/http", "22/tcp"])
        data_center = (body.get("dataCenterIds") or ["EU-RO-1"])[0]
        pod = {
            "id": pod_id,
            "name": body.get("name", "my pod"),
            "image": body.get("imageName", ""),           # Pod.image (the input field is imageName)
            "desiredStatus": RUNNING,
            "costPerHr": cost,
            "adjustedCostPerHr": cost,
            "consumerUserId": "user_fakerunpod0000000000000000",
            "containerDiskInGb": body.get("containerDiskInGb", 50),
            "containerRegistryAuthId": body.get("containerRegistryAuthId"),
            "cpuFlavorId": cpu_flavor,
            "dockerEntrypoint": list(body.get("dockerEntrypoint", [])),
            "dockerStartCmd": list(body.get("dockerStartCmd", [])),
            "endpointId": None,
            "aiApiId": None,
            "env": dict(body.get("env", {})),
            "gpu": gpu,
            "interruptible": body.get("interruptible", False),
            "lastStartedAt": _now_iso(),
            "lastStatusChange": _status_change("Rented"),
            "locked": body.get("locked", False),
            "machineId": _random_id(12),
            "memoryInGb": memory,
            "networkVolume": None,
            "portMappings": {},      # "If the Pod is still initializing, this mapping ... will be empty."
            "ports": list(ports),
            "publicIp": None,        # nullable; empty while initializing
            "savingsPlans": [],      # "If none are applied, the list is empty."
            "slsVersion": 0,
            "templateId": body.get("templateId"),
            "vcpuCount": vcpu,
            "volumeEncrypted": False,
            "volumeInGb": body.get("volumeInGb", 20),
            "volumeMountPath": body.get("volumeMountPath", "/workspace"),
        }
        # Kept privately for includeMachine=true (Pod.machine; only a few of its documented keys).
        pod["_machine"] = {"gpuTypeId": gpu_type, "dataCenterId": data_center, "location": data_center,
                           "secureCloud": body.get("cloudType", "SECURE") == "SECURE",
                           "supportPublicIp": True, "costPerHr": cost}
        return pod

    @staticmethod
    def _public(pod: dict, include_machine: bool = False) -> dict:
        out = {k: copy.deepcopy(v) for k, v in pod.items() if not k.startswith("_")}
        if include_machine:
            out["machine"] = copy.deepcopy(pod["_machine"])
        return out

    def _launch(self, pod_id: str) -> None:
        """Run on_create for a pod that just started (created, or resumed after a stop)."""
        if self.on_create is None:
            return
        with self._lock:
            pod = self._public(self.pods[pod_id])
        proc = self.on_create(pod)
        if proc is not None:
            with self._lock:
                self.processes[pod_id] = proc

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM, then SIGKILL after kill_timeout, like a container being shut down. When the process
        leads its own process group (Popen(start_new_session=True)) the whole group is signalled."""
        if proc.poll() is not None:
            return

        def send(sig: int) -> None:
            try:
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
            except (ProcessLookupError, PermissionError):
                pass

        send(signal.SIGTERM)
        try:
            proc.wait(timeout=self.kill_timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(timeout=10)

    def _stop_process(self, pod_id: str) -> None:
        with self._lock:
            proc = self.processes.get(pod_id)
        if proc is not None:
            self._terminate(proc)

    # --- HTTP --------------------------------------------------------------------------------------
    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "FakeRunPod/1.0"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _send(self, status: int, payload: object = None, headers: dict | None = None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if data:
                    self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                # NOT IN SPEC: the v1 spec documents no error body; this shape is the fake's choice.
                self._send(status, {"error": message, "status": status}, headers)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body, body_ok = None, True
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body_ok = False
                with fake._lock:
                    fake.calls.append((method, self.path, body))
                    limited = fake._rate_limited > 0
                    if limited:
                        fake._rate_limited -= 1
                if limited:
                    self._error(429, "Too Many Requests", {"Retry-After": "1"})
                    return
                auth = self.headers.get("Authorization", "")
                scheme, _, token = auth.partition(" ")
                if scheme.lower() != "bearer" or token.strip() != fake.api_key:
                    self._error(401, "Unauthorized.")  # spec: 401 "Unauthorized."
                    return
                split = urlsplit(self.path)
                if not split.path.startswith(API_PREFIX + "/"):
                    self._error(404, "Not found.")
                    return
                parts = [unquote(p) for p in split.path[len(API_PREFIX):].strip("/").split("/")]
                query = parse_qs(split.query)
                try:
                    self._route(method, parts, query, body, body_ok)
                except _BadRequest as exc:
                    self._error(400, f"Invalid input. {exc}")

            def _route(self, method: str, parts: list[str], query: dict, body, body_ok: bool) -> None:
                if parts[0] != "pods":
                    self._error(404, "Not found.")
                    return
                if len(parts) == 1 and method == "POST":
                    return self._create(body, body_ok)
                if len(parts) == 1 and method == "GET":
                    return self._list(query)
                pod_id = parts[1] if len(parts) > 1 else ""
                if not pod_id or not all(c.isalnum() for c in pod_id):
                    self._error(400, "Invalid ID supplied.")  # GetPod 400 "Invalid ID supplied."
                    return
                if len(parts) == 2 and method == "GET":
                    return self._get(pod_id, query)
                if len(parts) == 2 and method == "DELETE":
                    return self._delete(pod_id)
                if len(parts) == 3 and method == "POST" and parts[2] == "stop":
                    return self._stop(pod_id)
                if len(parts) == 3 and method == "POST" and parts[2] == "start":
                    return self._start(pod_id)
                if (len(parts) == 2 and method == "PATCH") or (
                        len(parts) == 3 and method == "POST" and parts[2] in ("update", "reset", "restart")):
                    self._error(501, "Documented by RunPod but not implemented by FakeRunPod.")
                    return
                self._error(404, "Not found.")

            # POST /pods -> 201 Pod ("Pod successfully created."), 400 "Invalid input."
            def _create(self, body, body_ok: bool) -> None:
                if not body_ok:
                    raise _BadRequest("request body is not valid JSON")
                validate_pod_create_input(body, reject_unknown_fields=fake.reject_unknown_fields)
                with fake._lock:
                    pod = fake._new_pod(body)
                    fake.pods[pod["id"]] = pod
                try:
                    fake._launch(pod["id"])
                except Exception as exc:  # a broken on_create hook must show up in the test, not hang it
                    self._error(500, f"FakeRunPod on_create failed: {exc!r}")
                    return
                with fake._lock:
                    self._send(201, fake._public(fake.pods[pod["id"]]))

            # GET /pods -> 200 Pods (array of Pod); filters from ListPods' query parameters
            def _list(self, query: dict) -> None:
                def first(name):
                    return query.get(name, [None])[0]

                with fake._lock:
                    pods = list(fake.pods.values())
                    if first("desiredStatus"):
                        pods = [p for p in pods if p["desiredStatus"] == first("desiredStatus")]
                    if first("name"):
                        pods = [p for p in pods if p["name"] == first("name")]
                    if first("id"):
                        pods = [p for p in pods if p["id"] == first("id")]
                    if first("imageName"):
                        pods = [p for p in pods if p["image"] == first("imageName")]
                    if query.get("gpuTypeId"):
                        pods = [p for p in pods if p["gpu"] and p["gpu"]["id"] in query["gpuTypeId"]]
                    if first("computeType"):
                        want_gpu = first("computeType") == "GPU"
                        pods = [p for p in pods if (p["gpu"] is not None) == want_gpu]
                    include_machine = first("includeMachine") == "true"
                    self._send(200, [fake._public(p, include_machine) for p in pods])

            # GET /pods/{podId} -> 200 Pod, 404 "Pod not found."
            def _get(self, pod_id: str, query: dict) -> None:
                with fake._lock:
                    pod = fake.pods.get(pod_id)
                    if pod is None:
                        self._error(404, "Pod not found.")
                        return
                    self._send(200, fake._public(pod, query.get("includeMachine", [""])[0] == "true"))

            def _lookup(self, pod_id: str) -> dict | None:
                with fake._lock:
                    pod = fake.pods.get(pod_id)
                if pod is None:
                    # NOT IN SPEC for stop/start/delete (spec: 400 "Invalid Pod ID." / 401 only).
                    self._error(404, "Pod not found.")
                return pod

            # POST /pods/{podId}/stop -> 200 "Pod successfully stopped." (no body documented: none sent)
            def _stop(self, pod_id: str) -> None:
                pod = self._lookup(pod_id)
                if pod is None:
                    return
                fake._stop_process(pod_id)
                with fake._lock:
                    if pod["desiredStatus"] == RUNNING:
                        pod["desiredStatus"] = EXITED
                        pod["lastStatusChange"] = _status_change("Stopped")
                        pod["portMappings"] = {}
                self._send(200)

            # POST /pods/{podId}/start -> 200 "Pod successfully started." (no body documented: none sent)
            def _start(self, pod_id: str) -> None:
                pod = self._lookup(pod_id)
                if pod is None:
                    return
                with fake._lock:
                    resumed = pod["desiredStatus"] == EXITED
                    if resumed:
                        pod["desiredStatus"] = RUNNING
                        pod["lastStartedAt"] = _now_iso()
                        pod["lastStatusChange"] = _status_change("Resumed")
                if resumed:  # a resumed pod starts its container again
                    try:
                        fake._launch(pod_id)
                    except Exception as exc:
                        self._error(500, f"FakeRunPod on_create failed: {exc!r}")
                        return
                self._send(200)

            # DELETE /pods/{podId} -> 200 "Pod successfully deleted." (no body documented: none sent)
            def _delete(self, pod_id: str) -> None:
                pod = self._lookup(pod_id)
                if pod is None:
                    return
                fake._stop_process(pod_id)
                with fake._lock:
                    pod = fake.pods.pop(pod_id)
                    pod["desiredStatus"] = TERMINATED
                    pod["lastStatusChange"] = _status_change("Terminated")
                    fake.terminated[pod_id] = pod
                self._send(200)

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
