"""Run the working set through ComfyUI: the workflow mapping, `comfyui check`, `comfyui queue` and `comfyui link`.

A mapping (in config/local.yaml, `workflows:`) names an API-format workflow and says which node input takes
which modality of a sample (`"12.image": pose`) and which inputs take per-sample values from a template
(`"6.text": "a runner seen from {azimuth_deg} degrees"`). `queue` uploads each sample's images into ComfyUI's
`input/<upload_folder>/` (never into the folder `comfyui link` made, which is the dataset itself), or uses that
linked folder, submits the graph with a prompt_id of its own, follows it on the /ws websocket (or by polling
/history and /queue), and downloads every output file into `data/working/outputs/<batch>/<workflow>/`, with a
record linking each to its sample, the batch version (git commit and DVC hash) and the workflow's hash.

A sample is done only when ComfyUI ran every output of its graph: a prompt answered with node errors, an
execution error, an interrupt, a timeout (counted from when the prompt starts executing) or a failed upload
or download is a failure of that sample, with the server's words, and the run goes on. A prompt the client
gives up on is deleted from ComfyUI's queue or interrupted. The prompt_id is written next to the record
before the prompt is sent, so a rerun after a crash follows a prompt that is still queued or running
instead of sending it again. Samples done with the same workflow are skipped.
"""

from __future__ import annotations

import contextlib
import json
import re
import string
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pose_factory.core import killpoint
from pose_factory.core.errors import ComfyUIError, ConfigError, PoseFactoryError, ServiceUnreachableError, UsageError
from pose_factory.core.fsutil import atomic_write_path, sha256_bytes
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvcrepo
from pose_factory.dataset.materialize import read_index

if TYPE_CHECKING:
    from websocket import WebSocket

RECORD_VERSION = 1
CHECK_JSON_VERSION = 1
UI_FORMAT_HINT = ("this is a UI-format workflow; in ComfyUI enable the dev mode options (Settings), then use "
                  "'Save (API Format)' / 'Export (API)' and map that file")
UNREACHABLE_HINT = "start ComfyUI (python main.py --listen 127.0.0.1) or pass --server URL"
# Where a dropdown's model file lives under ComfyUI/models/ (folder_paths.folder_names_and_paths).
MODEL_FOLDERS = {"ckpt_name": "checkpoints", "control_net_name": "controlnet", "vae_name": "vae",
                 "lora_name": "loras", "unet_name": "diffusion_models", "clip_name": "text_encoders",
                 "model_name": "upscale_models", "style_model_name": "style_models"}
ENDED = ("execution_success", "execution_error", "execution_interrupted")


@dataclass
class Mapping:
    name: str
    workflow_file: Path
    graph: dict[str, Any]
    inputs: dict[str, str]          # "node.input" -> modality
    values: dict[str, str]          # "node.input" -> template
    projects: list[str]
    workflow_hash: str


def load_mapping(settings: Settings, name: str | None) -> Mapping:
    """The named workflow mapping (or the only one), its API-format graph checked against the mapping."""
    mappings = settings.workflows or {}
    where = str(settings.config_file or "config/local.yaml")
    if not mappings:
        raise ConfigError("no ComfyUI workflow is mapped", where=where,
                          hint="add one under workflows: (see config/local.example.yaml and README, 'ComfyUI')")
    if name is None:
        if len(mappings) > 1:
            raise ConfigError("several workflows are mapped: choose one", where=where,
                              hint="--workflow " + " or --workflow ".join(sorted(mappings)))
        name = next(iter(mappings))
    if name not in mappings:
        raise ConfigError(f"no workflow named {name!r}", where=where, hint="mapped: " + ", ".join(sorted(mappings)))
    entry = mappings[name]
    workflow_file = (settings.root / entry["workflow"]).resolve()
    try:
        raw = workflow_file.read_bytes()
        graph = json.loads(raw)
    except FileNotFoundError:
        raise ConfigError("the workflow file does not exist", where=str(workflow_file),
                          hint=f"fix workflows.{name}.workflow in {where}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"malformed JSON at line {exc.lineno}: {exc.msg}", where=str(workflow_file)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the file is not UTF-8 text (byte {exc.start})", where=str(workflow_file),
                          hint="map the JSON file ComfyUI writes with 'Save (API Format)' / 'Export (API)'") from None
    # ComfyUI's own check of a prompt (execution.validate_prompt) wants a class_type and an inputs object.
    if not isinstance(graph, dict) or "nodes" in graph or "links" in graph or not graph or not all(
            isinstance(node, dict) and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs", {}), dict) for node in graph.values()):
        raise ConfigError("not an API-format workflow ({node id: {class_type, inputs}})", where=str(workflow_file),
                          hint=UI_FORMAT_HINT)
    mapping = Mapping(name, workflow_file, graph, dict(entry.get("inputs") or {}), dict(entry.get("values") or {}),
                      list(entry.get("projects") or []), sha256_bytes(raw))
    for key in [*mapping.inputs, *mapping.values]:
        node_id, _, input_name = key.partition(".")
        if node_id not in graph or not input_name:
            raise ConfigError(f"workflows.{name}: {key!r} names no node of the workflow",
                              where=where, hint="keys are '<node id>.<input name>', node ids from the API-format file")
        if input_name not in graph[node_id].get("inputs", {}):
            raise ConfigError(f"workflows.{name}: node {node_id} ({graph[node_id]['class_type']}) has no input "
                              f"{input_name!r}", where=where,
                              hint="inputs of that node: " + ", ".join(sorted(graph[node_id].get("inputs", {}))))
    return mapping


class Client:
    """The ComfyUI HTTP endpoints used (server.py). Transport retries come from urllib3's Retry: a GET is
    retried after a dropped connection or a 502/503/504, a POST only when the connection was never made, so
    a prompt is never sent twice blindly (see `submit`)."""

    def __init__(self, server: str, timeout_s: float = 60):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.server = server.rstrip("/")
        self.timeout = timeout_s
        self.session = requests.Session()
        retry = Retry(total=4, connect=2, read=2, status=2, backoff_factor=0.2, status_forcelist=(502, 503, 504),
                      allowed_methods=frozenset({"GET"}), raise_on_status=False)
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, HTTPAdapter(max_retries=retry))

    def _call(self, method: str, path: str, **kwargs) -> Any:
        import requests

        try:
            response = self.session.request(method, self.server + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ServiceUnreachableError(f"cannot reach ComfyUI ({type(exc).__name__})", where=self.server,
                                          hint=UNREACHABLE_HINT) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and "error" in body:
                message = describe_refusal(body, response.status_code)
            else:  # aiohttp's text answer, e.g. "500 Internal Server Error\n\nServer got itself in trouble"
                message = f"ComfyUI answered HTTP {response.status_code}: " + (
                    " ".join(response.text.split())[:300] or response.reason or "no text")
            raise ComfyUIError(message, where=self.server + path,
                               hint="`pose-sync comfyui check` compares the mapped workflows with the server")
        return response

    def system_stats(self) -> dict[str, Any]:
        return self._call("GET", "/system_stats").json()

    def object_info(self) -> dict[str, Any]:
        return self._call("GET", "/object_info").json()

    def upload_image(self, path: Path, subfolder: str, name: str) -> str:
        """Upload without overwrite: the same bytes reuse the file, other bytes get a new name (server.py)."""
        with path.open("rb") as handle:
            answer = self._call("POST", "/upload/image", files={"image": (name, handle, "image/png")},
                                data={"subfolder": subfolder, "type": "input"}).json()
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str) -> dict[str, Any]:
        """POST /prompt with our own prompt_id; if the answer is lost, ask the server whether it has the prompt."""
        try:
            return self._call("POST", "/prompt", json={"prompt": graph, "client_id": client_id,
                                                       "prompt_id": prompt_id}).json()
        except ServiceUnreachableError:
            running, waiting = self.queue_ids()
            if self.history(prompt_id) is None and prompt_id not in running + waiting:
                raise
            return {"prompt_id": prompt_id, "node_errors": None}  # accepted; its node errors are unknown

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self._call("GET", f"/history/{prompt_id}").json().get(prompt_id)

    def queue_ids(self) -> tuple[list[str], list[str]]:
        """The prompt ids running and waiting, in the order ComfyUI will run them."""
        queue = self._call("GET", "/queue").json()
        return ([item[1] for item in queue.get("queue_running", [])],
                [item[1] for item in sorted(queue.get("queue_pending", []), key=lambda item: item[0])])

    def abandon(self, prompt_id: str) -> None:
        """Take a prompt back: delete it from the queue, or interrupt it if it is running (and only then)."""
        running, waiting = self.queue_ids()
        if prompt_id in waiting:
            self._call("POST", "/queue", json={"delete": [prompt_id]})
            running, waiting = self.queue_ids()  # it may have started in the meantime
        if prompt_id in running:
            # ComfyUI >= 0.3.44 interrupts only this prompt; an older one interrupts whatever runs, which is it.
            self._call("POST", "/interrupt", json={"prompt_id": prompt_id})

    def view(self, item: dict[str, Any]) -> bytes:
        return self._call("GET", "/view", params={"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                                  "type": item.get("type", "output")}).content


class Events:
    """ComfyUI's /ws events for one client id, read in a background thread: when each prompt started and
    ended, which node runs and its step. Without a websocket (`alive` False) callers poll instead."""

    def __init__(self, server: str, client_id: str, enabled: bool = True):
        self.started: dict[str, float] = {}
        self.ended: dict[str, str] = {}
        self.doing: dict[str, tuple[str, str]] = {}  # prompt_id -> (node id, " step 3/20")
        self.alive = False
        self._changed = threading.Condition()
        self._ws: WebSocket | None = None
        self._thread: threading.Thread | None = None
        if not enabled:
            return
        import websocket

        url = re.sub(r"^http", "ws", server.rstrip("/")) + f"/ws?clientId={client_id}"
        try:
            self._ws = websocket.create_connection(url, timeout=10)
        except (websocket.WebSocketException, OSError):
            return  # no websocket (an old proxy, a firewall): poll
        self._ws.settimeout(None)
        self.alive = True
        self._thread = threading.Thread(target=self._read, args=(self._ws,), name="comfyui-events", daemon=True)
        self._thread.start()

    def _read(self, ws: WebSocket) -> None:
        import websocket

        while True:
            try:
                message = ws.recv()
            except (websocket.WebSocketException, OSError):
                break
            if isinstance(message, str):  # binary frames are previews
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    event = json.loads(message)
                    self._record(event["type"], event.get("data") or {})
        with self._changed:
            self.alive = False
            self._changed.notify_all()

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        # Events of no prompt (queue status) are kept under "": they only wake a waiter.
        prompt_id: str = data.get("prompt_id") or ""
        with self._changed:
            if kind == "execution_start":
                self.started.setdefault(prompt_id, time.monotonic())
            elif kind == "executing" and data.get("node") is not None:
                self.doing[prompt_id] = (str(data["node"]), "")
            elif kind == "progress":
                self.doing[prompt_id] = (str(data.get("node")), f" step {data.get('value')}/{data.get('max')}")
            elif kind in ENDED:
                self.ended[prompt_id] = kind
            self._changed.notify_all()

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when an event arrives."""
        with self._changed:
            self._changed.wait(seconds)

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.abort()
            if self._thread is not None:
                self._thread.join(timeout=5)
            with contextlib.suppress(Exception):
                self._ws.shutdown()


def describe_refusal(body: dict[str, Any], status: int) -> str:
    """ComfyUI's error JSON (execution.validate_prompt) in words: the error, then each node's errors."""
    error = body.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    lines = [f"ComfyUI refused the prompt (HTTP {status}): {message or 'no message'}"
             + (f" ({error.get('type')})" if isinstance(error, dict) and error.get("type") else "")]
    return "\n".join(lines + describe_node_errors(body.get("node_errors") or {}))


def describe_node_errors(node_errors: dict[str, Any]) -> list[str]:
    """One line per node error: `node 10 (LoadImage): Custom validation failed for node: image - ...`."""
    lines = []
    for node_id, node in sorted(node_errors.items(), key=lambda item: _natural(item[0])):
        for item in node.get("errors", []):
            lines.append(f"  - node {node_id} ({node.get('class_type', '?')}): {item.get('message')}"
                         + (f": {item.get('details')}" if item.get("details") else ""))
    return lines


def _natural(node_id: str) -> tuple:
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def combo_options(spec: Any) -> list[Any] | None:
    """A dropdown's options from an /object_info input spec: `[[...], {...}]` (nodes.py classes) or
    `["COMBO", {"options": [...]}]` (newer nodes); None for any other input."""
    if not isinstance(spec, list) or not spec:
        return None
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return list(spec[1].get("options") or [])
    return None


def check(settings: Settings, server: str) -> dict[str, Any]:
    """What would fail: node classes, mapped inputs, required inputs and every dropdown value (models,
    samplers) of each mapped workflow against the server's /object_info."""
    client = Client(server)
    stats = client.system_stats()
    info = client.object_info()
    report: dict[str, Any] = {"version": CHECK_JSON_VERSION, "server": server,
                              "comfyui_version": (stats.get("system") or {}).get("comfyui_version"), "workflows": []}
    for name in sorted(settings.workflows or {}):
        try:
            mapping = load_mapping(settings, name)
        except ConfigError as exc:
            report["workflows"].append({"name": name, "ok": False, "problems": [exc.message], "missing_models": []})
            continue
        problems, missing = _check_graph(mapping, info)
        report["workflows"].append({"name": name, "ok": not problems, "problems": problems, "missing_models": missing,
                                    "workflow_hash": mapping.workflow_hash})
    return report


def _check_graph(mapping: Mapping, info: dict[str, Any]) -> tuple[list[str], list[dict[str, str]]]:
    problems: list[str] = []
    missing: list[dict[str, str]] = []
    per_sample = set(mapping.inputs)
    for node_id, node in sorted(mapping.graph.items(), key=lambda item: _natural(item[0])):
        class_type = node["class_type"]
        if class_type not in info:
            problems.append(f"node {node_id}: class {class_type!r} is not installed on the server")
            continue
        spec = info[class_type].get("input") or {}
        known = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        where = f"node {node_id} ({class_type})"
        for input_name in spec.get("required") or {}:
            if input_name not in node.get("inputs", {}):
                problems.append(f"{where}: the required input {input_name!r} is missing from the workflow")
        for input_name, value in sorted(node.get("inputs", {}).items()):
            key = f"{node_id}.{input_name}"
            if key in mapping.values:
                template = mapping.values[key]
                if any(field_name for _, field_name, _, _ in string.Formatter().parse(template)):
                    continue  # differs per sample; ComfyUI checks each
                value = template
            options = combo_options(known.get(input_name))
            if key in per_sample or isinstance(value, list) or options is None or value in options:
                continue
            if len(known[input_name]) > 1 and isinstance(known[input_name][1], dict) and \
                    known[input_name][1].get("image_upload") and "/" in str(value):
                continue  # LoadImage lists only input/'s top-level files; a sub/folder name is checked when run
            folder = MODEL_FOLDERS.get(input_name)
            shown = ", ".join(map(str, options[:5])) + (f" and {len(options) - 5} more" if len(options) > 5 else "")
            if folder:
                missing.append({"node": node_id, "input": input_name, "value": str(value), "folder": folder})
                problems.append(f"{where}: {input_name} {value!r} is not on the server: put the model in "
                                f"ComfyUI/models/{folder}/ (it has: {shown or 'none'})")
            else:
                problems.append(f"{where}: {input_name} {value!r} is not one of the server's options ({shown})")
    for key in sorted([*mapping.inputs, *mapping.values]):
        node_id, _, input_name = key.partition(".")
        class_type = mapping.graph[node_id]["class_type"]
        spec = info.get(class_type, {}).get("input", {})
        known = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
        if known and input_name not in known:
            problems.append(f"{key}: the server's {class_type} has no input {input_name!r}")
    return problems, missing


@dataclass
class QueueResult:
    workflow: str
    done: int = 0
    skipped: int = 0
    followed: int = 0  # prompts of an earlier run found still queued or running, followed instead of resent
    failed: list[dict[str, Any]] = field(default_factory=list)
    outputs: int = 0
    out_dir: str = ""
    stopped: bool = False  # --fail-fast stopped the run


def _template_fields(row: dict[str, Any]) -> dict[str, Any]:
    fields = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    fields.setdefault("seed", row["index"])
    return fields


def _substitute(value: str, fields: dict[str, Any], current: Any) -> Any:
    names = [n for _, n, _, _ in string.Formatter().parse(value) if n]
    try:
        text = value.format(**fields)
    except KeyError as exc:
        raise ConfigError(f"the template {value!r} names {exc.args[0]!r}, which samples do not have",
                          where="workflows.*.values", hint="fields: " + ", ".join(sorted(fields))) from None
    # A template that is one field ("{seed}") keeps the node's type: ComfyUI wants numbers as numbers.
    if len(names) == 1 and value == "{" + names[0] + "}" and isinstance(current, (int, float)):
        return type(current)(float(text)) if isinstance(current, int) else float(text)
    return text


def _batch_version(settings: Settings, batch_id: str) -> dict[str, str | None]:
    md5 = (dvcrepo.recorded_out(settings.mirror_dir / f"{batch_id}.dvc") or {}).get("md5")
    try:
        commit = dvcrepo.git(settings.root, "rev-parse", "HEAD").strip()
    except PoseFactoryError:
        commit = None
    return {"git_commit": commit, "dvc_md5": md5}


@dataclass
class _Prompt:
    """A prompt in flight: its sample, where its record goes, and when it started executing."""

    prompt_id: str
    row: dict[str, Any]
    out_dir: Path
    started: float | None = None


def queue(settings: Settings, *, workflow: str | None, server: str, limit: int | None = None, depth: int = 2,
          timeout_s: float = 600, linked: str | None = None, fail_fast: bool = False, progress=None) -> QueueResult:
    """Run every sample of the working set through the mapped workflow; resumable, and cleans up after itself."""
    mapping = load_mapping(settings, workflow)
    working = settings.layout.working_set
    index_file = working / "index.json"
    index = cast(dict[str, Any], read_index(working))  # the rows as _Run reads them: plain dicts
    missing = sorted(set(mapping.inputs.values()) - set(index["modalities"]))
    if missing:
        raise ConfigError(f"workflows.{mapping.name} maps {', '.join(missing)}, which the working set lacks",
                          where=str(index_file), hint="add it to working.modalities in params.yaml and `dvc repro`")
    rows = index["samples"][:limit] if limit else index["samples"]
    client = Client(server)
    client.system_stats()
    run = _Run(settings, mapping, client, working, depth=depth, timeout_s=timeout_s, linked=linked,
               fail_fast=fail_fast)
    counter = progress.task(f"comfyui {mapping.name}", len(rows), "samples") if progress else contextlib.nullcontext()
    with counter as bar:
        run.bar = bar
        try:
            run.all(rows)
        except BaseException:
            run.give_up()  # Ctrl-C or a lost server: take back what is still queued or running
            raise
        finally:
            run.events.close()
    return run.result


class _Run:
    """One `comfyui queue` run: submits, follows and collects prompts, at most `depth` in flight."""

    def __init__(self, settings: Settings, mapping: Mapping, client: Client, working: Path, *, depth: int,
                 timeout_s: float, linked: str | None, fail_fast: bool):
        self.settings, self.mapping, self.client, self.working = settings, mapping, client, working
        self.depth, self.timeout_s, self.linked, self.fail_fast = depth, timeout_s, linked, fail_fast
        self.upload_folder = settings.comfyui.upload_folder
        self.client_id = f"pose-factory-{uuid.uuid4().hex[:12]}"
        self.events = Events(client.server, self.client_id, enabled=settings.comfyui.websocket)
        self.result = QueueResult(mapping.name)
        self.pending: dict[str, _Prompt] = {}
        self.versions: dict[str, dict[str, str | None]] = {}
        self.bar = None

    # ---------------------------------------------------------------- the loop

    def all(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if self.result.stopped:
                break
            out_dir = self.settings.layout.comfyui_outputs / row["batch_id"] / self.mapping.name
            self.result.out_dir = str(out_dir.parent.parent)
            if self._done_before(out_dir / f"{row['name']}.json"):
                self._marker(row, out_dir).unlink(missing_ok=True)  # left if killed between record and clean-up
                self.result.skipped += 1
                self._advance()
                continue
            if not self._follow_earlier(row, out_dir):
                self._submit(row, out_dir)
            while len(self.pending) >= self.depth and not self.result.stopped:
                self._finish(next(iter(self.pending.values())))
        while self.pending and not self.result.stopped:
            self._finish(next(iter(self.pending.values())))
        self.give_up()

    def give_up(self) -> None:
        """Delete or interrupt every prompt still in flight (a stopped run leaves nothing running behind)."""
        for prompt in list(self.pending.values()):
            with contextlib.suppress(PoseFactoryError):
                self.client.abandon(prompt.prompt_id)
                self._marker(prompt.row, prompt.out_dir).unlink(missing_ok=True)
            self.pending.pop(prompt.prompt_id, None)

    def _done_before(self, record_file: Path) -> bool:
        try:
            return json.loads(record_file.read_text()).get("workflow_hash") == self.mapping.workflow_hash
        except (OSError, ValueError):
            return False

    def _marker(self, row: dict[str, Any], out_dir: Path) -> Path:
        """`<sample>.prompt.json`: the prompt sent for a sample and not yet collected."""
        return out_dir / f"{row['name']}.prompt.json"

    def _advance(self) -> None:
        if self.bar:
            self.bar.note("")
            self.bar.advance()

    def _fail(self, row: dict[str, Any], out_dir: Path, reason: str, error: str, prompt_id: str | None = None) -> None:
        self._marker(row, out_dir).unlink(missing_ok=True)
        self.result.failed.append({"sample": row["name"], "reason": reason, "error": error,
                                   **({"prompt_id": prompt_id} if prompt_id else {})})
        self._advance()
        if self.fail_fast:
            self.result.stopped = True

    # ---------------------------------------------------------------- submit

    def _follow_earlier(self, row: dict[str, Any], out_dir: Path) -> bool:
        """A prompt an earlier run sent for this sample: follow it if it is still queued or running, or collect it
        if it finished well; otherwise take it back and forget it. True when it is being followed or collected."""
        marker = self._marker(row, out_dir)
        try:
            earlier = json.loads(marker.read_text())
            prompt_id = earlier["prompt_id"]
        except FileNotFoundError:
            return False
        except (OSError, ValueError, KeyError, TypeError):
            marker.unlink(missing_ok=True)
            return False
        if earlier.get("workflow_hash") != self.mapping.workflow_hash:
            with contextlib.suppress(PoseFactoryError):
                self.client.abandon(prompt_id)  # sent for another workflow version: not wanted any more
            marker.unlink()
            return False
        prompt = _Prompt(prompt_id, row, out_dir)
        # The queue first, then the history: ComfyUI moves a finished prompt from one to the other under one lock
        # (PromptQueue.task_done), so a prompt that is in neither was lost. Asked the other way round, a prompt
        # finishing between the two questions looked lost and was sent a second time.
        running, waiting = self.client.queue_ids()
        if prompt_id in running or prompt_id in waiting:
            self.result.followed += 1
            self.pending[prompt_id] = prompt
            return True
        entry = self.client.history(prompt_id)
        if entry is not None and (entry.get("status") or {}).get("status_str") == "success":
            self.result.followed += 1
            self._collect(prompt, entry)
            return True
        marker.unlink()
        return False  # it failed, was interrupted or was lost (a restarted server): send it again

    def _graph(self, row: dict[str, Any]) -> dict[str, Any]:
        """The workflow for one sample: its images (uploaded, or in the linked folder) and its values."""
        graph = json.loads(json.dumps(self.mapping.graph))
        for key, modality in self.mapping.inputs.items():
            node_id, _, input_name = key.partition(".")
            relative = row["files"][modality]
            if self.linked:
                value = f"{self.linked}/{relative}"  # the name given to `comfyui link --name`
            else:
                # Never into input/pose-factory: after `comfyui link` that is a symlink to the working set, whose
                # files are hardlinks of the raw mirror and the DVC cache. One folder per batch and modality, named
                # by sample id: a rerun uploads the same bytes under the same name, which ComfyUI reuses.
                subfolder = f"{self.upload_folder}/{row['batch_id']}/{modality}"
                value = self.client.upload_image(self.working / relative, subfolder,
                                                 f"{row['sample_id']}{Path(relative).suffix}")
            graph[node_id]["inputs"][input_name] = value
        fields = _template_fields(row)
        for key, template in self.mapping.values.items():
            node_id, _, input_name = key.partition(".")
            inputs = graph[node_id]["inputs"]
            inputs[input_name] = _substitute(template, fields, inputs[input_name])
        return graph

    def _submit(self, row: dict[str, Any], out_dir: Path) -> None:
        try:
            graph = self._graph(row)
        except ComfyUIError as exc:
            return self._fail(row, out_dir, "upload", exc.message)
        prompt_id = str(uuid.uuid4())
        out_dir.mkdir(parents=True, exist_ok=True)
        marker = self._marker(row, out_dir)
        with atomic_write_path(marker) as tmp:  # before sending: a crash after it leaves a prompt we can find
            tmp.write_text(json.dumps({"prompt_id": prompt_id, "workflow_hash": self.mapping.workflow_hash,
                                       "server": self.client.server, "sent": time.time()}) + "\n")
        try:
            answer = self.client.submit(graph, prompt_id, self.client_id)
        except ComfyUIError as exc:
            return self._fail(row, out_dir, "refused", exc.message)
        killpoint.reached("comfyui-queue:after-submit")
        if answer.get("node_errors"):
            # ComfyUI runs the outputs that validated and drops the others: not what this sample needs.
            with contextlib.suppress(PoseFactoryError):
                self.client.abandon(prompt_id)
            return self._fail(row, out_dir, "node_errors", "ComfyUI would run only part of the workflow:\n"
                              + "\n".join(describe_node_errors(answer["node_errors"])), prompt_id)
        self.pending[prompt_id] = _Prompt(prompt_id, row, out_dir)

    # ---------------------------------------------------------------- follow and collect

    def _finish(self, prompt: _Prompt) -> None:
        """Wait for one prompt to end (or time out), then collect it or record its failure."""
        outcome, entry = self._wait(prompt)
        self.pending.pop(prompt.prompt_id, None)
        row, out_dir, prompt_id = prompt.row, prompt.out_dir, prompt.prompt_id
        if outcome == "timeout":
            try:
                self.client.abandon(prompt_id)
                taken_back = "it was interrupted"
            except PoseFactoryError as exc:
                taken_back = f"interrupting it failed: {exc.message}"
            return self._fail(row, out_dir, "timeout", f"no result {self.timeout_s:g} s after it started executing "
                              f"(comfyui.timeout_s); {taken_back}", prompt_id)
        if outcome == "vanished":
            return self._fail(row, out_dir, "vanished", "the prompt left ComfyUI's queue without a result "
                              "(deleted in ComfyUI?)", prompt_id)
        status = entry.get("status") or {}
        messages = {m[0]: m[1] for m in status.get("messages", []) if isinstance(m, list) and len(m) == 2}
        if "execution_interrupted" in messages:
            where = messages["execution_interrupted"]
            return self._fail(row, out_dir, "interrupted", f"interrupted in ComfyUI at node {where.get('node_id')} "
                              f"({where.get('node_type')})", prompt_id)
        if status.get("status_str") != "success" or not status.get("completed"):
            error = messages.get("execution_error") or {}
            return self._fail(row, out_dir, "execution_error",
                              f"node {error.get('node_id')} ({error.get('node_type')}) failed: "
                              f"{error.get('exception_type', 'error')}: {error.get('exception_message', 'no message')}"
                              if error else f"ComfyUI ended the prompt with status {status.get('status_str')!r}",
                              prompt_id)
        self._collect(prompt, entry)

    def _wait(self, prompt: _Prompt) -> tuple[str, dict[str, Any]]:
        """Follow a prompt until ComfyUI has its history entry; the timeout runs only while it executes.
        ('done', entry), or ('vanished' | 'timeout', {})."""
        delay, missing, ended = 0.05, 0, None
        while True:
            entry = self.client.history(prompt.prompt_id)
            if entry and (entry.get("status") or {}).get("status_str") in ("success", "error"):
                return "done", entry
            if prompt.prompt_id in self.events.ended:  # the history entry follows the event closely
                ended = ended or time.monotonic()
                if time.monotonic() - ended > 30:
                    return "vanished", {}
                self.events.wait(0.05)
                continue
            if prompt.started is None:
                prompt.started = self.events.started.get(prompt.prompt_id)
            if prompt.started is None:
                running, waiting = self.client.queue_ids()
                if prompt.prompt_id in running:
                    prompt.started = time.monotonic()
                elif prompt.prompt_id in waiting:
                    self._note(prompt, f"queued, {waiting.index(prompt.prompt_id) + len(running)} ahead")
                    missing = 0
                else:
                    missing += 1  # twice neither in the queue nor in the history: gone
                    if missing >= 2 and self.client.history(prompt.prompt_id) is None:
                        return "vanished", {}
            if prompt.started is not None:
                if time.monotonic() - prompt.started > self.timeout_s:
                    return "timeout", {}
                node_id, step = self.events.doing.get(prompt.prompt_id, ("", ""))
                class_type = (self.mapping.graph.get(node_id) or {}).get("class_type", "")
                self._note(prompt, f"node {node_id} {class_type}{step}" if node_id else "running")
            self.events.wait(delay)
            delay = min(delay * 1.5, 2.0 if self.events.alive else 1.0)

    def _note(self, prompt: _Prompt, text: str) -> None:
        if self.bar:
            self.bar.note(f"{prompt.row['name']}: {text}")

    def _collect(self, prompt: _Prompt, entry: dict[str, Any]) -> None:
        """Download every output file (any kind, its own extension, no temp previews) and write the record."""
        row, out_dir = prompt.row, prompt.out_dir
        outputs: list[dict[str, Any]] = []
        try:
            for node_id, node_output in sorted((entry.get("outputs") or {}).items(), key=lambda i: _natural(i[0])):
                for kind, items in sorted(node_output.items()):
                    outputs += self._save_outputs(row, out_dir, node_id, kind, items)
        except ComfyUIError as exc:
            return self._fail(row, out_dir, "download", exc.message, prompt.prompt_id)
        if not outputs:
            return self._fail(row, out_dir, "no_output", "ComfyUI finished the prompt with no output file (only "
                              "previews?): the workflow needs a Save node", prompt.prompt_id)
        if row["batch_id"] not in self.versions:
            self.versions[row["batch_id"]] = _batch_version(self.settings, row["batch_id"])
        record = {"version": RECORD_VERSION, "sample": row["name"], "batch_id": row["batch_id"],
                  "sample_id": row["sample_id"], "batch_version": self.versions[row["batch_id"]],
                  "workflow": self.mapping.name, "workflow_hash": self.mapping.workflow_hash,
                  "prompt_id": prompt.prompt_id, "outputs": outputs}
        with atomic_write_path(out_dir / f"{row['name']}.json") as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        self._marker(row, out_dir).unlink(missing_ok=True)
        self.result.done += 1
        self.result.outputs += len(outputs)
        self._advance()

    def _save_outputs(self, row: dict[str, Any], out_dir: Path, node_id: str, kind: str, items: Any) -> list[dict]:
        """One node's outputs of one kind: files (images, gifs, audio, 3d, ...) or a list of texts."""
        saved = []
        for k, item in enumerate(items if isinstance(items, list) else []):
            stem = f"{row['name']}_{node_id}_{k}" if kind == "images" else f"{row['name']}_{node_id}_{kind}_{k}"
            if kind == "text" and isinstance(item, str):
                data, name, source = item.encode(), f"{stem}.txt", {}
            elif isinstance(item, dict) and item.get("filename") and item.get("type") != "temp":
                data = self.client.view(item)
                suffix = Path(str(item["filename"])).suffix
                name = stem + (suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ".bin")
                source = {"comfyui_filename": item["filename"], "comfyui_subfolder": item.get("subfolder", "")}
            else:
                continue  # temp previews, flags such as "animated"
            with atomic_write_path(out_dir / name) as tmp:
                tmp.write_bytes(data)
            saved.append({"file": name, "node": node_id, "kind": kind, **source,
                          "sha256": sha256_bytes(data)})
        return saved


def link_into_comfyui(settings: Settings, comfyui_dir: Path, name: str) -> tuple[Path, Path]:
    """Symlink the working set to `<COMFYUI_DIR>/input/<name>`; a swapped-in set shows up there at once."""
    comfyui_dir = comfyui_dir.expanduser().resolve()
    if not (comfyui_dir / "input").is_dir() and not (comfyui_dir / "main.py").is_file():
        raise UsageError("this does not look like a ComfyUI folder (no input/ and no main.py)", where=str(comfyui_dir),
                         hint="give the folder that holds ComfyUI's main.py")
    if "/" in name or name in ("", ".", ".."):
        raise UsageError(f"{name!r} is not a folder name", where="--name")
    if name == settings.comfyui.upload_folder:
        raise UsageError(f"input/{name} is where `comfyui queue` uploads; linking the working set there would let "
                         "uploads write into the dataset", where="--name", hint="choose another --name")
    target = settings.layout.working_set
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
