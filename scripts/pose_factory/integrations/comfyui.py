"""Run the working set through ComfyUI: the workflow mapping, `comfyui check` and `comfyui queue`.

A mapping (in config/local.yaml, `workflows:`) names an API-format workflow and says which node input takes
which modality of a sample (`"12.image": pose`) and which inputs take per-sample values from a template
(`"6.text": "a runner seen from {azimuth_deg} degrees"`). `queue` uploads each sample's images (or uses the
linked input/ folder), submits the graph, follows it in /history and downloads the outputs into
`data/working/outputs/<batch>/<workflow>/`, with a record linking every output to its sample, the batch
version (git commit and DVC hash) and the workflow's hash. Samples already done with the same workflow are
skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pose_factory.core.errors import ConfigError, PoseFactoryError, StorageError, UsageError
from pose_factory.core.fsutil import atomic_write_path
from pose_factory.core.settings import Settings
from pose_factory.dataset import dvcrepo
from pose_factory.dataset.pipeline import WORKING_SET

RECORD_VERSION = 1
CHECK_JSON_VERSION = 1
UI_FORMAT_HINT = ("this is a UI-format workflow; in ComfyUI enable the dev mode options (Settings), then use "
                  "'Save (API Format)' / 'Export (API)' and map that file")


class ComfyUIError(PoseFactoryError):
    """ComfyUI refused or failed a request."""

    exit_code = 12


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
    if not isinstance(graph, dict) or "nodes" in graph or "links" in graph or not graph or not all(
            isinstance(node, dict) and "class_type" in node for node in graph.values()):
        raise ConfigError("not an API-format workflow ({node id: {class_type, inputs}})", where=str(workflow_file),
                          hint=UI_FORMAT_HINT)
    mapping = Mapping(name, workflow_file, graph, dict(entry.get("inputs") or {}), dict(entry.get("values") or {}),
                      list(entry.get("projects") or []), hashlib.sha256(raw).hexdigest())
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
    """The few ComfyUI HTTP endpoints used (server.py): /system_stats, /object_info, /upload/image, /prompt,
    /history/{id}, /view."""

    def __init__(self, server: str, timeout_s: float = 30):
        import requests

        self.server = server.rstrip("/")
        self.timeout = timeout_s
        self.session = requests.Session()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        import requests

        try:
            response = self.session.request(method, self.server + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise StorageError(f"cannot reach ComfyUI ({type(exc).__name__})", where=self.server,
                               hint="start ComfyUI (python main.py --listen 127.0.0.1) or pass --server URL") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"error": {"message": response.text[:200]}}
            raise ComfyUIError(_describe_error(body, response.status_code), where=self.server + path,
                               hint="see the node errors above; `pose-sync comfyui check` compares the mapping with "
                                    "the server")
        return response

    def system_stats(self) -> dict[str, Any]:
        return self._call("GET", "/system_stats").json()

    def object_info(self) -> dict[str, Any]:
        return self._call("GET", "/object_info").json()

    def upload_image(self, path: Path, subfolder: str) -> str:
        with path.open("rb") as handle:
            answer = self._call("POST", "/upload/image", files={"image": (path.name, handle, "image/png")},
                                data={"subfolder": subfolder, "type": "input", "overwrite": "true"}).json()
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def queue_prompt(self, graph: dict[str, Any], client_id: str) -> str:
        return self._call("POST", "/prompt", json={"prompt": graph, "client_id": client_id}).json()["prompt_id"]

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        return self._call("GET", f"/history/{prompt_id}").json().get(prompt_id)

    def view(self, filename: str, subfolder: str, kind: str) -> bytes:
        return self._call("GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": kind}).content


def _describe_error(body: dict[str, Any], status: int) -> str:
    """ComfyUI's error JSON (execution.validate_prompt) in words: the error, then each node's errors."""
    error = body.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    lines = [f"ComfyUI refused the prompt (HTTP {status}): {message or 'no message'}"
             + (f" ({error.get('type')})" if isinstance(error, dict) and error.get("type") else "")]
    for node_id, node in sorted((body.get("node_errors") or {}).items()):
        for item in node.get("errors", []):
            lines.append(f"  - node {node_id} ({node.get('class_type', '?')}): {item.get('message')}"
                         + (f": {item.get('details')}" if item.get("details") else ""))
    return "\n".join(lines)


def check(settings: Settings, server: str) -> dict[str, Any]:
    """Reachability, node classes and mapped inputs of every mapped workflow against the server."""
    client = Client(server)
    stats = client.system_stats()
    info = client.object_info()
    report: dict[str, Any] = {"version": CHECK_JSON_VERSION, "server": server,
                              "comfyui_version": (stats.get("system") or {}).get("comfyui_version"), "workflows": []}
    for name in sorted(settings.workflows or {}):
        problems: list[str] = []
        try:
            mapping = load_mapping(settings, name)
        except ConfigError as exc:
            report["workflows"].append({"name": name, "ok": False, "problems": [exc.message]})
            continue
        for node_id, node in sorted(mapping.graph.items()):
            if node["class_type"] not in info:
                problems.append(f"node {node_id}: class {node['class_type']!r} is not installed on the server")
        for key in sorted([*mapping.inputs, *mapping.values]):
            node_id, _, input_name = key.partition(".")
            spec = info.get(mapping.graph[node_id]["class_type"], {}).get("input", {})
            known = {**(spec.get("required") or {}), **(spec.get("optional") or {})}
            if known and input_name not in known:
                class_type = mapping.graph[node_id]["class_type"]
                problems.append(f"{key}: the server's {class_type} has no input {input_name!r}")
        report["workflows"].append({"name": name, "ok": not problems, "problems": problems,
                                    "workflow_hash": mapping.workflow_hash})
    return report


@dataclass
class QueueResult:
    workflow: str
    done: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    outputs: int = 0
    out_dir: str = ""


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
    dvc_file = settings.mirror_dir / f"{batch_id}.dvc"
    md5 = None
    if dvc_file.is_file():
        import yaml

        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
        md5 = outs[0].get("md5")
    try:
        commit = dvcrepo.git(settings.root, "rev-parse", "HEAD").strip()
    except PoseFactoryError:
        commit = None
    return {"git_commit": commit, "dvc_md5": md5}


def queue(settings: Settings, *, workflow: str | None, server: str, limit: int | None, depth: int,
          timeout_s: float, linked: bool, progress=None) -> QueueResult:
    """Run every sample of the working set through the mapped workflow; resumable."""
    mapping = load_mapping(settings, workflow)
    working = settings.root / "data" / "working" / "current_batch"
    index_file = working / "index.json"
    if not index_file.is_file():
        raise PoseFactoryError("there is no working set", where=str(working),
                               hint="run `dvc repro` or `pose-sync prepare-batch BATCH_ID` first")
    index = json.loads(index_file.read_text())
    missing = sorted(set(mapping.inputs.values()) - set(index["modalities"]))
    if missing:
        raise ConfigError(f"workflows.{mapping.name} maps {', '.join(missing)}, which the working set lacks",
                          where=str(index_file), hint="add it to working.modalities in params.yaml and `dvc repro`")
    rows = index["samples"][:limit] if limit else index["samples"]
    client = Client(server)
    client.system_stats()
    result = QueueResult(mapping.name)
    versions: dict[str, dict[str, str | None]] = {}
    pending: dict[str, tuple[dict[str, Any], Path]] = {}
    counter = progress.task(f"comfyui {mapping.name}", len(rows), "samples") if progress else contextlib.nullcontext()
    with counter as bar:
        for row in rows:
            out_dir = settings.root / "data" / "working" / "outputs" / row["batch_id"] / mapping.name
            result.out_dir = str(out_dir.parent.parent)
            record_file = out_dir / f"{row['name']}.json"
            done_before = record_file.is_file() and json.loads(record_file.read_text()).get("workflow_hash")
            if done_before == mapping.workflow_hash:
                result.skipped += 1
                if bar:
                    bar.advance()
                continue
            graph = json.loads(json.dumps(mapping.graph))
            for key, modality in mapping.inputs.items():
                node_id, _, input_name = key.partition(".")
                local = working / row["files"][modality]
                graph[node_id]["inputs"][input_name] = (f"pose-factory/{row['files'][modality]}" if linked
                                                        else client.upload_image(local, f"pose-factory/{modality}"))
            fields = _template_fields(row)
            for key, template in mapping.values.items():
                node_id, _, input_name = key.partition(".")
                inputs = graph[node_id]["inputs"]
                inputs[input_name] = _substitute(template, fields, inputs[input_name])
            try:
                prompt_id = client.queue_prompt(graph, client_id="pose-factory")
            except ComfyUIError as exc:
                result.failed.append({"sample": row["name"], "error": exc.message})
                if bar:
                    bar.advance()
                continue
            pending[prompt_id] = (row, record_file)
            if row["batch_id"] not in versions:
                versions[row["batch_id"]] = _batch_version(settings, row["batch_id"])
            while len(pending) >= depth:
                _collect(client, pending, versions, mapping, result, timeout_s, bar)
        while pending:
            _collect(client, pending, versions, mapping, result, timeout_s, bar)
    return result


def _collect(client: Client, pending: dict, versions: dict, mapping: Mapping, result: QueueResult,
             timeout_s: float, bar) -> None:
    """Wait for the oldest pending prompt, download its outputs and write its record."""
    prompt_id = next(iter(pending))
    row, record_file = pending.pop(prompt_id)
    deadline = time.monotonic() + timeout_s
    entry = None
    while time.monotonic() < deadline:
        entry = client.history(prompt_id)
        if entry and (entry.get("status") or {}).get("completed") is not None and (
                entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
            break
        time.sleep(0.1)
    if bar:
        bar.advance()
    status = (entry or {}).get("status") or {}
    if not entry or status.get("status_str") == "error" or not status.get("completed"):
        messages = [m for m in status.get("messages", []) if m and m[0] == "execution_error"]
        detail = messages[0][1].get("exception_message") if messages else "no result before the timeout"
        result.failed.append({"sample": row["name"], "prompt_id": prompt_id, "error": detail})
        return
    outputs = []
    record_file.parent.mkdir(parents=True, exist_ok=True)
    for node_id, node_output in sorted((entry.get("outputs") or {}).items()):
        for k, image in enumerate(node_output.get("images", [])):
            data = client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
            name = f"{row['name']}_{node_id}_{k}.png"
            with atomic_write_path(record_file.parent / name) as tmp:
                tmp.write_bytes(data)
            outputs.append({"file": name, "node": node_id, "comfyui_filename": image["filename"],
                            "sha256": hashlib.sha256(data).hexdigest()})
    record = {"version": RECORD_VERSION, "sample": row["name"], "batch_id": row["batch_id"],
              "sample_id": row["sample_id"], "batch_version": versions.get(row["batch_id"]),
              "workflow": mapping.name, "workflow_hash": mapping.workflow_hash, "prompt_id": prompt_id,
              "outputs": outputs}
    with atomic_write_path(record_file) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    result.done += 1
    result.outputs += len(outputs)


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
