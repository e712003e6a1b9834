"""A stand-in ComfyUI HTTP server for tests: stdlib only (plus Pillow), bound to 127.0.0.1.

It implements the part of ComfyUI's HTTP API that `pose-sync comfyui queue` / `comfyui check` use, with
request and response shapes taken from ComfyUI's own code (comfyanonymous/ComfyUI), not invented:

  server.py      PromptServer routes: image_upload / upload_image, view_image, system_stats, node_info /
                 get_object_info(_node), get_history, get_queue, get_prompt, post_prompt, post_queue,
                 post_history, post_interrupt; every route is also served under /api (add_routes).
  execution.py   validate_prompt / validate_inputs (error and node_errors dicts), PromptQueue (queue
                 items, task_done -> history entries, get_history), PromptExecutor.add_message
                 (status messages), execute_node (the "meta" of history entries).
  main.py        prompt_worker (status = ExecutionStatus(status_str, completed, messages)).
  nodes.py       LoadImage (INPUT_TYPES, VALIDATE_INPUTS "Invalid image file: ..."), SaveImage
                 (counter naming "<prefix>_00001_.png", ui {"images": [...]}), PreviewImage, ImageScale.
  folder_paths.py  get_save_image_path (counter, subfolder from the prefix), annotated_filepath
                 ("name [output]"), exists_annotated_filepath.

Nothing is rendered: a graph made of LoadImage -> (ImageScale) -> SaveImage/PreviewImage is executed
with Pillow after a short delay, in a worker thread that plays ComfyUI's prompt_worker.

Where ComfyUI versions differ, the default follows current ComfyUI (execution.py with async
validate_prompt, history entries with "meta", timestamped status messages, queue items without the
sensitive-data element) and the older form is noted next to the code.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import hashlib
import heapq
import json
import mimetypes
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

MAX_RESOLUTION = 16384  # nodes.py MAX_RESOLUTION

# ---------------------------------------------------------------------------------------------
# Node definitions, in the shape GET /object_info returns them (server.py node_info()).
# ---------------------------------------------------------------------------------------------


def _node_info(name: str, *, required: dict, output: list, category: str, display_name: str,
               output_node: bool, hidden: dict | None = None, optional: dict | None = None,
               output_name: list | None = None, description: str = "") -> dict:
    """Mirror server.py node_info(obj_class): the keys and their order are ComfyUI's."""
    inputs: dict = {"required": required}
    if optional:
        inputs["optional"] = optional
    if hidden:
        inputs["hidden"] = hidden
    return {
        "input": inputs,
        "input_order": {key: list(value.keys()) for key, value in inputs.items()},
        "output": list(output),
        "output_is_list": [False] * len(output),
        "output_name": list(output_name if output_name is not None else output),
        "name": name,
        "display_name": display_name,
        "description": description,
        "python_module": "nodes",
        "category": category,
        "output_node": output_node,
    }


def default_node_classes() -> dict[str, dict]:
    """LoadImage, SaveImage, PreviewImage, ImageScale as nodes.py defines them.

    LoadImage's `image` list is filled from input_dir on every /object_info request (nodes.py
    LoadImage.INPUT_TYPES lists the top-level image files of the input folder, sorted).
    """
    return {
        "LoadImage": _node_info(
            "LoadImage", required={"image": [[], {"image_upload": True}]}, output=["IMAGE", "MASK"],
            category="image", display_name="Load Image", output_node=False),
        "SaveImage": _node_info(
            "SaveImage",
            required={"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output=[], category="image", display_name="Save Image", output_node=True,
            description="Saves the input images to your ComfyUI output directory."),
        "PreviewImage": _node_info(
            "PreviewImage", required={"images": ["IMAGE"]},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output=[], category="image", display_name="Preview Image", output_node=True,
            description="Saves the input images to your ComfyUI output directory."),
        "ImageScale": _node_info(
            "ImageScale",
            required={
                "image": ["IMAGE"],
                "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                "width": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
                "height": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
                "crop": [["disabled", "center"]],
            },
            output=["IMAGE"], category="image/upscaling", display_name="Upscale Image", output_node=False),
    }


# Classes whose VALIDATE_INPUTS takes over the check of these inputs (execution.py validate_inputs skips
# the value_not_in_list check for inputs named in VALIDATE_INPUTS' signature).
_VALIDATE_INPUTS = {"LoadImage": ("image",)}

_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class _ValidationCrash(Exception):
    """An exception inside validate_inputs (ComfyUI turns it into exception_during_validation)."""


class _ExecutionError(Exception):
    pass


def _full_type_name(klass) -> str:  # execution.py full_type_name
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__


def _now_ms() -> int:
    return int(time.time() * 1000)


class FakeComfyUI:
    """A local ComfyUI look-alike. Use as a context manager, or start()/stop()."""

    def __init__(self, node_classes: dict[str, dict] | None = None, *, exec_delay: float = 0.05,
                 cache: bool = True, missing_class_error: str = "invalid_prompt") -> None:
        self.node_classes: dict[str, dict] = copy.deepcopy(node_classes) if node_classes is not None \
            else default_node_classes()
        self.exec_delay = exec_delay
        # ComfyUI caches node outputs between prompts: re-queueing an identical graph does not run
        # SaveImage again, and the history repeats the earlier file names (execution_cached lists the
        # nodes). cache=False runs every prompt afresh.
        self.cache = cache
        # "invalid_prompt" is execution.py validate_prompt as stored for comfyanonymous/ComfyUI;
        # "missing_node_type" is the newer wording (type missing_node_type, extra_info with node_id,
        # class_type, node_title). Both come back as HTTP 400 {"error": ..., "node_errors": {}}.
        self.missing_class_error = missing_class_error
        self.fail_node_errors_for: set[str] = set()
        self.fail_execution_for: set[str] = set()

        self._tmp: Path | None = None
        self.input_dir = Path()
        self.output_dir = Path()
        self.temp_dir = Path()
        self.url = ""
        self.port = 0

        self.uploads: list[dict] = []
        self.prompts: list[dict] = []
        self.requests: list[tuple[str, str]] = []

        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)
        self._number = 0
        self._queue: list[tuple] = []  # heap of (number, prompt_id, prompt, extra_data, outputs_to_execute)
        self._running: dict[int, tuple] = {}
        self._task_counter = 0
        self.history: dict[str, dict] = {}
        self._ui_cache: dict[str, dict] = {}  # signature -> {"output": ..., "meta": ...}
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeComfyUI:
        self._tmp = Path(tempfile.mkdtemp(prefix="fake-comfyui-"))
        self.input_dir = self._tmp / "input"
        self.output_dir = self._tmp / "output"
        self.temp_dir = self._tmp / "temp"
        for d in (self.input_dir, self.output_dir, self.temp_dir):
            d.mkdir()
        self._stopping = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                 name="fake-comfyui-http", daemon=True)
        worker = threading.Thread(target=self._prompt_worker, name="fake-comfyui-worker", daemon=True)
        self._threads = [serve, worker]
        serve.start()
        worker.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._not_empty.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> FakeComfyUI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once nothing is queued or running."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if not self._queue and not self._running:
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ folders (folder_paths.py)

    def _dir_by_type(self, type_name: str | None) -> Path | None:
        # folder_paths.get_directory_by_type
        return {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}.get(type_name)

    def _annotated_filepath(self, name: str) -> tuple[str, Path | None]:
        # folder_paths.annotated_filepath: "name.png [output]" picks the folder
        for suffix, folder in (("[output]", self.output_dir), ("[input]", self.input_dir),
                               ("[temp]", self.temp_dir)):
            if name.endswith(suffix):
                return name[:-(len(suffix) + 1)], folder
        return name, None

    def _annotated_path(self, name: str) -> Path:
        # folder_paths.get_annotated_filepath / exists_annotated_filepath (default: input folder)
        name, base = self._annotated_filepath(name)
        return (base or self.input_dir) / name

    def _input_image_list(self) -> list[str]:
        # nodes.py LoadImage.INPUT_TYPES: top-level files of the input folder, image types, sorted
        return sorted(p.name for p in self.input_dir.iterdir()
                      if p.is_file() and p.suffix.lower() in _IMAGE_EXTENSIONS)

    # ------------------------------------------------------------------ /object_info

    def object_info(self, node_class: str | None = None) -> dict:
        with self._lock:
            names = [node_class] if node_class is not None else list(self.node_classes)
            out = {}
            for name in names:
                if name not in self.node_classes:
                    continue  # server.py get_object_info_node answers {} for an unknown class
                info = copy.deepcopy(self.node_classes[name])
                if name == "LoadImage":
                    req = info.get("input", {}).get("required", {})
                    if "image" in req:
                        spec = list(req["image"])
                        spec[0] = self._input_image_list()
                        req["image"] = spec
                out[name] = info
            return out

    # ------------------------------------------------------------------ POST /upload/image

    def _image_upload(self, fields: dict) -> tuple[int, dict | None]:
        """server.py image_upload(post): same folder choice, renaming and answer."""
        image = fields.get("image")
        overwrite = fields.get("overwrite")
        upload_type = fields.get("type")
        if upload_type is None:
            upload_type = "input"  # get_dir_by_type: None -> "input"
        upload_dir = {"input": self.input_dir, "temp": self.temp_dir, "output": self.output_dir}.get(upload_type)
        if upload_dir is None:
            # ComfyUI's get_dir_by_type leaves type_dir unbound for other values -> 500
            return 500, None
        if not image or image.get("filename") is None:
            return 400, None
        filename = image["filename"]
        if not filename:
            return 400, None
        data: bytes = image["data"]
        subfolder = fields.get("subfolder", "")
        upload_root = os.path.abspath(upload_dir)
        full_output_folder = os.path.join(upload_root, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(full_output_folder, filename))
        if os.path.commonpath((upload_root, filepath)) != upload_root:
            return 400, None
        os.makedirs(full_output_folder, exist_ok=True)

        duplicate = False
        split = os.path.splitext(filename)
        if overwrite is not None and (overwrite == "true" or overwrite == "1"):
            pass
        else:
            i = 1
            while os.path.exists(filepath):
                # compare_image_hash: an identical file already there is reused, not renamed
                with open(filepath, "rb") as f:
                    if hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest():
                        duplicate = True
                        break
                filename = f"{split[0]} ({i}){split[1]}"
                filepath = os.path.join(full_output_folder, filename)
                i += 1
        if not duplicate:
            with open(filepath, "wb") as f:
                f.write(data)
        self.uploads.append({"filename": image["filename"], "name": filename, "subfolder": subfolder,
                             "type": upload_type, "overwrite": overwrite, "duplicate": duplicate,
                             "path": Path(filepath), "size": len(data)})
        return 200, {"name": filename, "subfolder": subfolder, "type": upload_type}

    # ------------------------------------------------------------------ POST /prompt

    def _post_prompt(self, json_data: dict) -> tuple[int, dict | None]:
        """server.py post_prompt."""
        with self._lock:
            if "number" in json_data:
                number = float(json_data["number"])
            else:
                number = self._number
                if json_data.get("front"):
                    number = -number
                self._number += 1

        if "prompt" not in json_data:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return 400, {"error": error, "node_errors": {}}

        prompt = json_data["prompt"]
        if not isinstance(prompt, dict):
            return 500, None  # ComfyUI's validate_prompt raises on a non-dict prompt -> aiohttp answers 500
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        valid = self._validate_prompt(prompt_id, prompt, json_data)
        extra_data = dict(json_data.get("extra_data", {}) or {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid[0]:
            return 400, {"error": valid[1], "node_errors": valid[3]}
        extra_data["create_time"] = _now_ms()
        item = (number, prompt_id, prompt, extra_data, valid[2])
        with self._lock:
            heapq.heappush(self._queue, item)
            self._not_empty.notify()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": valid[3]}

    def _markers(self, prompt_id: str, json_data: dict) -> set[str]:
        return {prompt_id, str(json_data.get("client_id", ""))} - {""}

    def _validate_prompt(self, prompt_id: str, prompt, json_data: dict) -> tuple:
        """execution.py validate_prompt -> (valid, error, outputs_to_execute, node_errors)."""
        outputs = []
        for x in prompt:
            node = prompt[x]
            # A UI-format workflow ({"last_node_id", "nodes": [...], "links": [...], ...}) fails here:
            # its top-level values are not nodes with a class_type. (ComfyUI itself raises TypeError ->
            # HTTP 500 when the first such value is a number; the fake always answers the 400 below.)
            if not isinstance(node, dict) or "class_type" not in node:
                if self.missing_class_error == "missing_node_type":
                    title = node.get("_meta", {}).get("title") if isinstance(node, dict) else None
                    error = {"type": "missing_node_type",
                             "message": f"Node '{title or f'ID #{x}'}' has no class_type. The workflow may be "
                                        "corrupted or a custom node is missing.",
                             "details": f"Node ID '#{x}'",
                             "extra_info": {"node_id": x, "class_type": None, "node_title": title}}
                else:
                    error = {"type": "invalid_prompt",
                             "message": "Cannot execute because a node is missing the class_type property.",
                             "details": f"Node ID '#{x}'", "extra_info": {}}
                return (False, error, [], {})
            class_type = node["class_type"]
            info = self.node_classes.get(class_type)
            if info is None:
                if self.missing_class_error == "missing_node_type":
                    title = (node.get("_meta") or {}).get("title", class_type)
                    error = {"type": "missing_node_type",
                             "message": f"Node '{title}' not found. The custom node may not be installed.",
                             "details": f"Node ID '#{x}'",
                             "extra_info": {"node_id": x, "class_type": class_type, "node_title": title}}
                else:
                    error = {"type": "invalid_prompt",
                             "message": f"Cannot execute because node {class_type} does not exist.",
                             "details": f"Node ID '#{x}'", "extra_info": {}}
                return (False, error, [], {})
            if info.get("output_node") is True:
                partial = json_data.get("partial_execution_targets")
                if partial is None or x in partial:
                    outputs.append(x)

        if not outputs:
            error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                     "extra_info": {}}
            return (False, error, [], {})

        forced = self._markers(prompt_id, json_data) & self.fail_node_errors_for
        good_outputs: list[str] = []
        errors: list[tuple[str, list]] = []
        node_errors: dict[str, dict] = {}
        validated: dict[str, tuple] = {}
        for o in outputs:
            try:
                valid, reasons, _ = self._validate_inputs(prompt, o, validated, forced)
            except Exception as ex:  # execution.py: exception_during_validation
                valid = False
                reasons = [{"type": "exception_during_validation", "message": "Exception when validating node",
                            "details": str(ex),
                            "extra_info": {"exception_type": _full_type_name(type(ex)),
                                           "traceback": traceback.format_tb(ex.__traceback__)}}]
                validated[o] = (False, reasons, o)
            if valid is True:
                good_outputs.append(o)
            else:
                errors.append((o, reasons))
                for node_id, result in validated.items():
                    if result[0] is not True and len(result[1]) > 0:
                        if node_id not in node_errors:
                            node_errors[node_id] = {"errors": result[1], "dependent_outputs": [],
                                                    "class_type": prompt[node_id]["class_type"]}
                        node_errors[node_id]["dependent_outputs"].append(o)

        if not good_outputs:
            lines = [f"{e['message']}: {e['details']}" for _, errs in errors for e in errs]
            error = {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                     "details": "\n".join(lines), "extra_info": {}}
            return (False, error, [], node_errors)
        return (True, None, good_outputs, node_errors)

    def _validate_inputs(self, prompt: dict, unique_id: str, validated: dict, forced: set[str]) -> tuple:
        """execution.py validate_inputs, for the checks that apply to object_info-described nodes."""
        if unique_id in validated:
            return validated[unique_id]
        node = prompt[unique_id]
        inputs = node.get("inputs", {})
        class_type = node["class_type"]
        info = self.node_classes[class_type]
        required = info.get("input", {}).get("required", {})
        optional = info.get("input", {}).get("optional", {})
        validate_fn_inputs = _VALIDATE_INPUTS.get(class_type, ())
        errors: list[dict] = []
        valid = True

        title = (node.get("_meta") or {}).get("title")
        marked = {unique_id, title} & self.fail_node_errors_for
        if marked or (forced and info.get("output_node")):
            # fail_node_errors_for holds node ids, node titles (_meta.title), prompt ids or client ids;
            # a prompt/client id marks every output node of that prompt.
            errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                           "details": "forced by FakeComfyUI.fail_node_errors_for",
                           "extra_info": {"input_name": next(iter(required), "")}})

        for x, spec in list(required.items()) + list(optional.items()):
            if x not in inputs:
                if x in required:
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": f"{x}", "extra_info": {"input_name": x}})
                continue
            val = inputs[x]
            type_input = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append({"type": "bad_linked_input",
                                   "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                   "details": f"{x}",
                                   "extra_info": {"input_name": x, "input_config": spec, "received_value": val}})
                    continue
                o_id = val[0]
                o_class_type = prompt[o_id]["class_type"]  # KeyError -> exception_during_validation
                r = self.node_classes[o_class_type]["output"]
                received_type = r[val[1]]
                if received_type != type_input and "*" not in (received_type, type_input):
                    errors.append({"type": "return_type_mismatch",
                                   "message": "Return type mismatch between linked nodes",
                                   "details": f"{x}, {received_type} != {type_input}",
                                   "extra_info": {"input_name": x, "input_config": spec,
                                                  "received_type": received_type, "linked_node": val}})
                    continue
                r = self._validate_inputs(prompt, o_id, validated, forced)
                if r[0] is False:
                    valid = False
                continue

            try:
                if type_input == "INT":
                    val = int(val)
                if type_input == "FLOAT":
                    val = float(val)
                if type_input == "STRING":
                    val = str(val)
            except Exception as ex:
                errors.append({"type": "invalid_input_type",
                               "message": f"Failed to convert an input value to a {type_input} value",
                               "details": f"{x}, {val}, {ex}",
                               "extra_info": {"input_name": x, "input_config": spec, "received_value": val,
                                              "exception_message": str(ex)}})
                continue
            if "min" in opts and val < opts["min"]:
                errors.append({"type": "value_smaller_than_min",
                               "message": f"Value {val} smaller than min of {opts['min']}", "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": spec, "received_value": val}})
                continue
            if "max" in opts and val > opts["max"]:
                errors.append({"type": "value_bigger_than_max",
                               "message": f"Value {val} bigger than max of {opts['max']}", "details": f"{x}",
                               "extra_info": {"input_name": x, "input_config": spec, "received_value": val}})
                continue
            if x not in validate_fn_inputs and isinstance(type_input, list) and val not in type_input:
                list_info, input_config = str(type_input), spec
                if len(type_input) > 20:
                    list_info, input_config = f"(list of length {len(type_input)})", None
                errors.append({"type": "value_not_in_list", "message": "Value not in list",
                               "details": f"{x}: '{val}' not in {list_info}",
                               "extra_info": {"input_name": x, "input_config": input_config, "received_value": val}})
                continue

        # VALIDATE_INPUTS (nodes.py LoadImage): the file must exist (folder_paths.exists_annotated_filepath)
        if class_type == "LoadImage" and isinstance(inputs.get("image"), str):
            image = inputs["image"]
            if not self._annotated_path(image).exists():
                # Current execution.py: extra_info {"input_name": x}; older versions also carried
                # "input_config" and "received_value".
                errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                               "details": f"image - Invalid image file: {image}",
                               "extra_info": {"input_name": "image"}})

        ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
        validated[unique_id] = ret
        return ret

    # ------------------------------------------------------------------ worker (main.py prompt_worker)

    def _prompt_worker(self) -> None:
        while True:
            with self._not_empty:
                while not self._queue and not self._stopping:
                    self._not_empty.wait(timeout=0.1)
                if self._stopping:
                    return
                item = heapq.heappop(self._queue)
                item_id = self._task_counter
                self._task_counter += 1
                self._running[item_id] = copy.deepcopy(item)
            time.sleep(self.exec_delay)
            try:
                history_result, success, messages = self._execute(item)
            except Exception as ex:  # never let the worker die
                history_result, success = {"outputs": {}, "meta": {}}, False
                messages = [["execution_error", {"prompt_id": item[1], "exception_message": str(ex),
                                                 "timestamp": _now_ms()}]]
            with self._lock:
                prompt = self._running.pop(item_id)
                # PromptQueue.task_done: {"prompt", "outputs", "status"} updated with history_result
                entry = {"prompt": list(prompt), "outputs": {},
                         "status": {"status_str": "success" if success else "error", "completed": success,
                                    "messages": messages}}
                entry.update(history_result)
                self.history[prompt[1]] = entry

    def _signature(self, prompt: dict, node_id: str, memo: dict) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt[node_id]
        parts: list = [node_id, node["class_type"]]
        for k in sorted(node.get("inputs", {})):
            v = node["inputs"][k]
            if isinstance(v, list) and len(v) == 2:
                parts.append([k, self._signature(prompt, str(v[0]), memo), v[1]])
            else:
                parts.append([k, v])
        if node["class_type"] == "LoadImage":  # LoadImage.IS_CHANGED: sha256 of the file
            path = self._annotated_path(str(node["inputs"].get("image", "")))
            parts.append(hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None)
        memo[node_id] = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
        return memo[node_id]

    def _execute(self, item: tuple) -> tuple[dict, bool, list]:
        """PromptExecutor.execute for the supported nodes; returns (history_result, success, messages)."""
        number, prompt_id, prompt, extra_data, outputs_to_execute = item
        messages: list = []

        def add_message(event: str, data: dict) -> None:  # PromptExecutor.add_message
            messages.append([event, {**data, "timestamp": _now_ms()}])

        add_message("execution_start", {"prompt_id": prompt_id})
        memo: dict = {}
        cached_nodes: list[str] = []
        ui_outputs: dict = {}
        meta_outputs: dict = {}
        to_run: list[str] = []
        for o in outputs_to_execute:
            sig = self._signature(prompt, o, memo)
            if self.cache and sig in self._ui_cache:
                cached_nodes.append(o)
                ui_outputs[o] = copy.deepcopy(self._ui_cache[sig]["output"])
                meta_outputs[o] = copy.deepcopy(self._ui_cache[sig]["meta"])
            else:
                to_run.append(o)
        add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id})

        markers = {prompt_id, str(extra_data.get("client_id", ""))} - {""}
        fail_exec = markers & self.fail_execution_for
        results: dict[str, tuple] = {}
        executed: list[str] = []
        current: str | None = None
        try:
            for o in to_run:
                order: list[str] = []
                self._order(prompt, o, order, set())
                for node_id in order:
                    if node_id in results:
                        continue
                    current = node_id
                    if fail_exec or node_id in self.fail_execution_for:
                        raise _ExecutionError(f"forced by FakeComfyUI.fail_execution_for ({node_id})")
                    out, ui = self._run_node(prompt, node_id, results, prompt_id)
                    results[node_id] = out
                    executed.append(node_id)
                    if ui:
                        ui_outputs[node_id] = ui
                        meta = {"node_id": node_id, "display_node": node_id, "parent_node": None,
                                "real_node_id": node_id}
                        meta_outputs[node_id] = meta
                        if self.cache:
                            self._ui_cache[self._signature(prompt, node_id, memo)] = \
                                {"output": copy.deepcopy(ui), "meta": copy.deepcopy(meta)}
        except Exception as ex:
            # PromptExecutor.handle_execution_error -> "execution_error" message
            node_id = current or ""
            add_message("execution_error", {
                "prompt_id": prompt_id, "node_id": node_id,
                "node_type": prompt.get(node_id, {}).get("class_type", ""), "executed": executed,
                "exception_message": str(ex), "exception_type": _full_type_name(type(ex)),
                "traceback": traceback.format_tb(ex.__traceback__), "current_inputs": {},
                "current_outputs": {}})
            return {"outputs": ui_outputs, "meta": meta_outputs}, False, messages
        add_message("execution_success", {"prompt_id": prompt_id})
        return {"outputs": ui_outputs, "meta": meta_outputs}, True, messages

    def _order(self, prompt: dict, node_id: str, order: list, seen: set) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for v in prompt[node_id].get("inputs", {}).values():
            if isinstance(v, list) and len(v) == 2:
                self._order(prompt, str(v[0]), order, seen)
        order.append(node_id)

    def _run_node(self, prompt: dict, node_id: str, results: dict, prompt_id: str) -> tuple[tuple, dict]:
        node = prompt[node_id]
        class_type = node["class_type"]
        inputs = {}
        for k, v in node.get("inputs", {}).items():
            inputs[k] = results[str(v[0])][v[1]] if isinstance(v, list) and len(v) == 2 else v

        if class_type == "LoadImage":
            # nodes.py LoadImage.load_image: exif_transpose, 16-bit "I" mode scaled by 1/255, RGB
            with Image.open(self._annotated_path(inputs["image"])) as i:
                i = ImageOps.exif_transpose(i)
                if i.mode == "I":
                    i = i.point(lambda v: v * (1 / 255))
                image = i.convert("RGB")
                mask = i.getchannel("A") if "A" in i.getbands() else None
            return (image, mask), {}
        if class_type == "ImageScale":
            return (self._scale(inputs["image"], inputs["upscale_method"], int(inputs["width"]),
                                int(inputs["height"]), inputs["crop"]),), {}
        if class_type in ("SaveImage", "PreviewImage"):
            return (), {"images": [self._save(inputs["images"], inputs.get("filename_prefix", "ComfyUI"),
                                              class_type, prompt)]}
        raise _ExecutionError(f"FakeComfyUI cannot execute node class {class_type}")

    @staticmethod
    def _scale(image: Image.Image, method: str, width: int, height: int, crop: str) -> Image.Image:
        # nodes.py ImageScale.upscale / comfy.utils.common_upscale (0 keeps the aspect ratio)
        w, h = image.size
        if width == 0 and height == 0:
            return image
        if width == 0:
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        if crop == "center":
            old_aspect, new_aspect = w / h, width / height
            x = y = 0
            if old_aspect > new_aspect:
                x = round((w - w * (new_aspect / old_aspect)) / 2)
            elif old_aspect < new_aspect:
                y = round((h - h * (old_aspect / new_aspect)) / 2)
            image = image.crop((x, y, w - x, h - y))
        resample = {"nearest-exact": Image.NEAREST, "bilinear": Image.BILINEAR, "area": Image.BOX,
                    "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}.get(method, Image.BILINEAR)
        return image.resize((width, height), resample)

    def _save(self, image: Image.Image, filename_prefix: str, class_type: str, prompt: dict) -> dict:
        # nodes.py SaveImage.save_images + folder_paths.get_save_image_path
        if class_type == "PreviewImage":
            out_root, kind = self.temp_dir, "temp"
            filename_prefix = "ComfyUI_temp_" + uuid.uuid4().hex[:5]
        else:
            out_root, kind = self.output_dir, "output"
        out_root_s = os.path.abspath(out_root)
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        filename = os.path.basename(os.path.normpath(filename_prefix))
        full_output_folder = os.path.join(out_root_s, subfolder)
        if os.path.commonpath((out_root_s, os.path.abspath(full_output_folder))) != out_root_s:
            raise Exception("**** ERROR: Saving image outside the output folder is not allowed.")
        os.makedirs(full_output_folder, exist_ok=True)

        def map_filename(name: str) -> tuple[int, str]:
            prefix_len = len(filename)
            prefix = name[:prefix_len + 1]
            try:
                digits = int(name[prefix_len + 1:].split("_")[0])
            except ValueError:
                digits = 0
            return digits, prefix

        candidates = [map_filename(n) for n in os.listdir(full_output_folder)]
        candidates = [c for c in candidates
                      if os.path.normcase(c[1][:-1]) == os.path.normcase(filename) and c[1][-1:] == "_"]
        counter = max(candidates)[0] + 1 if candidates else 1
        file = f"{filename}_{counter:05}_.png"
        metadata = PngInfo()
        metadata.add_text("prompt", json.dumps(prompt))
        image.save(os.path.join(full_output_folder, file), pnginfo=metadata, compress_level=4)
        return {"filename": file, "subfolder": subfolder, "type": kind}

    # ------------------------------------------------------------------ queue / history views

    def queue_info(self) -> dict:
        # server.py get_queue: running and pending items, 5-element lists
        with self._lock:
            return {"queue_running": [list(x)[:5] for x in self._running.values()],
                    "queue_pending": [list(x)[:5] for x in sorted(self._queue)]}

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict:
        # PromptQueue.get_history
        with self._lock:
            if prompt_id is None:
                keys = list(self.history)
                if max_items is not None:
                    keys = keys[max(0, len(keys) - max_items):]
                return {k: copy.deepcopy(self.history[k]) for k in keys}
            if prompt_id in self.history:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])}
            return {}

    def system_stats(self) -> dict:
        # server.py system_stats, as ComfyUI answers when started with --cpu
        return {
            "system": {"os": os.name, "ram_total": 16 * 1024 ** 3, "ram_free": 8 * 1024 ** 3,
                       "comfyui_version": "0.0.0-fake", "python_version": sys.version,
                       "pytorch_version": "0.0.0+cpu", "embedded_python": False,
                       "argv": ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port)]},
            "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 16 * 1024 ** 3,
                         "vram_free": 8 * 1024 ** 3, "torch_vram_total": 16 * 1024 ** 3,
                         "torch_vram_free": 8 * 1024 ** 3}],
        }

    # ------------------------------------------------------------------ HTTP

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "Python/aiohttp (FakeComfyUI)"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes = b"", content_type: str | None = None,
                      headers: dict | None = None) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

            def _text(self, status: int, text: str) -> None:
                self._send(status, text.encode(), "text/plain; charset=utf-8")

            def _route(self) -> tuple[str, dict]:
                parts = urlsplit(self.path)
                path = parts.path
                if path == "/api" or path.startswith("/api/"):  # server.py add_routes: /api prefix too
                    path = path[4:] or "/"
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                return path, query

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self) -> None:
                path, query = self._route()
                fake.requests.append(("GET", path))
                try:
                    if path == "/object_info":
                        return self._json(fake.object_info())
                    if path.startswith("/object_info/"):
                        return self._json(fake.object_info(unquote(path[len("/object_info/"):])))
                    if path == "/system_stats":
                        return self._json(fake.system_stats())
                    if path == "/queue":
                        return self._json(fake.queue_info())
                    if path == "/prompt":  # server.py get_prompt -> get_queue_info
                        with fake._lock:
                            remaining = len(fake._queue) + len(fake._running)
                        return self._json({"exec_info": {"queue_remaining": remaining}})
                    if path == "/history":
                        mi = query.get("max_items")
                        return self._json(fake.get_history(max_items=int(mi) if mi else None))
                    if path.startswith("/history/"):
                        return self._json(fake.get_history(prompt_id=unquote(path[len("/history/"):])))
                    if path == "/view":
                        return self._view(query)
                    return self._text(404, "404: Not Found")
                except Exception:
                    return self._text(500, "500 Internal Server Error\n\n" + traceback.format_exc())

            def _view(self, query: dict) -> None:
                # server.py view_image
                if "filename" not in query:
                    return self._send(404)
                filename, output_dir = fake._annotated_filepath(query["filename"])
                if not filename or filename[0] == "/" or ".." in filename:
                    return self._send(400)
                if output_dir is None:
                    output_dir = fake._dir_by_type(query.get("type", "output"))
                if output_dir is None:
                    return self._send(400)
                output_dir_s = os.path.abspath(output_dir)
                if "subfolder" in query:
                    full_output_dir = os.path.join(output_dir_s, query["subfolder"])
                    if os.path.commonpath((os.path.abspath(full_output_dir), output_dir_s)) != output_dir_s:
                        return self._send(403)
                    output_dir_s = full_output_dir
                filename = os.path.basename(filename)
                file = os.path.join(output_dir_s, filename)
                if not os.path.isfile(file):
                    return self._send(404)
                content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
                with open(file, "rb") as f:
                    data = f.read()
                return self._send(200, data, content_type, {"Content-Disposition": f'filename="{filename}"'})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_POST(self) -> None:
                path, _ = self._route()
                fake.requests.append(("POST", path))
                body = self._body()
                try:
                    if path == "/prompt":
                        try:
                            json_data = json.loads(body)
                        except ValueError:
                            return self._text(500, "500 Internal Server Error")  # aiohttp request.json() raised
                        fake.prompts.append(json_data)
                        status, out = fake._post_prompt(json_data)
                        if out is None:
                            return self._text(status, "500 Internal Server Error")
                        return self._json(out, status)
                    if path == "/upload/image":
                        fields = self._multipart(body)
                        if fields is None:
                            return self._text(500, "500 Internal Server Error")
                        status, out = fake._image_upload(fields)
                        return self._json(out, status) if out is not None else self._send(status)
                    if path == "/queue":  # server.py post_queue
                        data = json.loads(body or b"{}")
                        with fake._lock:
                            if data.get("clear"):
                                fake._queue = []
                            for pid in data.get("delete", []):
                                fake._queue = [x for x in fake._queue if x[1] != pid]
                                heapq.heapify(fake._queue)
                        return self._send(200)
                    if path == "/history":  # server.py post_history
                        data = json.loads(body or b"{}")
                        with fake._lock:
                            if data.get("clear"):
                                fake.history.clear()
                            for pid in data.get("delete", []):
                                fake.history.pop(pid, None)
                        return self._send(200)
                    if path == "/interrupt":
                        return self._send(200)
                    return self._text(404, "404: Not Found")
                except Exception:
                    return self._text(500, "500 Internal Server Error\n\n" + traceback.format_exc())

            def _multipart(self, body: bytes) -> dict | None:
                """multipart/form-data with the stdlib email parser (cgi is deprecated)."""
                ctype = self.headers.get("Content-Type", "")
                if not ctype.lower().startswith("multipart/form-data"):
                    return None
                raw = b"Content-Type: " + ctype.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
                if not msg.is_multipart():
                    return None
                fields: dict = {}
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name is None:
                        continue
                    data = part.get_payload(decode=True) or b""
                    filename = part.get_filename()
                    if filename is not None:
                        fields[name] = {"filename": filename, "data": data,
                                        "content_type": part.get_content_type()}
                    else:
                        charset = part.get_content_charset() or "utf-8"
                        fields[name] = data.decode(charset, errors="replace")
                return fields

        return Handler


__all__ = ["FakeComfyUI", "default_node_classes"]
