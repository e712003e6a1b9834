"""A stand-in ComfyUI server for tests: stdlib and Pillow only, bound to 127.0.0.1.

It serves the part of ComfyUI's API that `pose-sync comfyui` uses, with the shapes of ComfyUI's own code
(comfyanonymous/ComfyUI, as of 0.3.64) and checked against a real 0.3.64's recorded answers
(tests/test_fake_comfyui.py lists the accepted differences):

  server.py     /system_stats, /object_info[/{class}], POST /upload/image, /view, GET+POST /prompt,
                GET+POST /queue, /history[/{id}], POST /interrupt (optionally for one prompt_id), /ws
                (events to the socket whose clientId is the prompt's client_id), everything under /api too.
  execution.py  validate_prompt / validate_inputs (error and node_errors; a prompt with one valid output runs
                that output and answers 200 with the other outputs' node_errors), PromptExecutor messages
                (execution_start, execution_cached with every cached node, executing, progress, executed,
                execution_success / execution_error / execution_interrupted), the classic cache (the previous
                prompt's node results are reused), history entries {prompt, outputs, status, meta}.
  nodes.py      LoadImage (VALIDATE_INPUTS "Invalid image file"), SaveImage ("<prefix>_00001_.png"),
                PreviewImage (type temp), ImageScale, and the model nodes of a ControlNet graph:
                CheckpointLoaderSimple, ControlNetLoader, ControlNetApplyAdvanced, CLIPTextEncode,
                EmptyLatentImage, KSampler (one progress event per step, interruptible), VAEDecode.

Nothing is rendered: VAEDecode returns the first ControlNet hint image at the latent's size (or a grey
image), so a test can see which image reached which input. Tests add their own node kinds with add_node().
"""

from __future__ import annotations

import base64
import copy
import email.parser
import email.policy
import hashlib
import heapq
import json
import mimetypes
import os
import shutil
import struct
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

MAX_RESOLUTION = 16384  # nodes.py
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"  # what aiohttp answers on an exception
SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim",
            "uni_pc"]  # a part of comfy.samplers.KSampler.SAMPLERS
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


def node_info(name: str, required: dict, output: list, category: str, *, output_node: bool = False,
              optional: dict | None = None, output_name: list | None = None) -> dict:
    """server.py node_info(): the keys a node has in GET /object_info."""
    inputs = {"required": required, **({"optional": optional} if optional else {})}
    return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()}, "output": output,
            "output_is_list": [False] * len(output), "output_name": output_name or output, "name": name,
            "display_name": name, "description": "", "python_module": "nodes", "category": category,
            "output_node": output_node}


def default_node_classes() -> dict[str, dict]:
    """The nodes.py classes the tests use. Model and image lists are filled on every /object_info request."""
    image, float_ = ["IMAGE"], lambda d, lo, hi: ["FLOAT", {"default": d, "min": lo, "max": hi, "step": 0.01}]
    size = ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8}]
    return {
        "LoadImage": node_info("LoadImage", {"image": [[], {"image_upload": True}]}, ["IMAGE", "MASK"], "image"),
        "SaveImage": node_info("SaveImage", {  # with its tooltips (the other nodes here have none)
            "images": ["IMAGE", {"tooltip": "The images to save."}],
            "filename_prefix": ["STRING", {"default": "ComfyUI", "tooltip": (
                "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd%"
                " or %Empty Latent Image.width% to include values from nodes.")}]}, [], "image", output_node=True),
        "PreviewImage": node_info("PreviewImage", {"images": image}, [], "image", output_node=True),
        "ImageScale": node_info("ImageScale", {
            "image": image, "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
            "width": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
            "height": ["INT", {"default": 512, "min": 0, "max": MAX_RESOLUTION, "step": 1}],
            "crop": [["disabled", "center"]]}, image, "image/upscaling"),
        "CheckpointLoaderSimple": node_info("CheckpointLoaderSimple", {"ckpt_name": [[]]}, ["MODEL", "CLIP", "VAE"],
                                            "loaders"),
        "ControlNetLoader": node_info("ControlNetLoader", {"control_net_name": [[]]}, ["CONTROL_NET"], "loaders"),
        "CLIPTextEncode": node_info("CLIPTextEncode", {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]},
                                    ["CONDITIONING"], "conditioning"),
        "ControlNetApplyAdvanced": node_info("ControlNetApplyAdvanced", {
            "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "control_net": ["CONTROL_NET"],
            "image": image, "strength": float_(1.0, 0.0, 10.0), "start_percent": float_(0.0, 0.0, 1.0),
            "end_percent": float_(1.0, 0.0, 1.0)}, ["CONDITIONING", "CONDITIONING"], "conditioning/controlnet",
            optional={"vae": ["VAE"]}, output_name=["positive", "negative"]),
        "EmptyLatentImage": node_info("EmptyLatentImage", {
            "width": size, "height": size, "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]},
            ["LATENT"], "latent"),
        "KSampler": node_info("KSampler", {
            "model": ["MODEL"], "seed": ["INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000}], "cfg": float_(8.0, 0.0, 100.0),
            "sampler_name": [SAMPLERS], "scheduler": [SCHEDULERS], "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"], "latent_image": ["LATENT"], "denoise": float_(1.0, 0.0, 1.0)},
            ["LATENT"], "sampling"),
        "VAEDecode": node_info("VAEDecode", {"samples": ["LATENT"], "vae": ["VAE"]}, image, "latent"),
    }


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


def _full_type_name(klass) -> str:  # execution.py full_type_name
    return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"


def _now_ms() -> int:
    return int(time.time() * 1000)


class _WebSocket:
    """The server side of one RFC 6455 connection: unmasked text frames out, masked client frames in."""

    def __init__(self, handler: BaseHTTPRequestHandler):
        self.rfile, self.wfile, self.connection = handler.rfile, handler.wfile, handler.connection
        self.lock = threading.Lock()

    def send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else b"\x7e" + struct.pack(">H", n) if n < 65536
                                         else b"\x7f" + struct.pack(">Q", n))
        with self.lock:
            self.wfile.write(head + payload)
            self.wfile.flush()

    def send_json(self, obj) -> None:
        try:
            self.send(0x1, json.dumps(obj).encode())
        except (OSError, ValueError):
            # server.py send_socket_catch_exception: a gone client is not an error. ValueError: the handler thread
            # of a client that just left closed the stream between the sender's look-up and this write (it made
            # a prompt of a killed client fail now and then, as real ComfyUI never does)
            pass

    def receive(self) -> tuple[int | None, bytes]:
        head = self.rfile.read(2)
        if len(head) < 2:
            return None, b""
        n = head[1] & 0x7F
        if n >= 126:
            n = struct.unpack(">H" if n == 126 else ">Q", self.rfile.read(2 if n == 126 else 8))[0]
        mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        data = self.rfile.read(n)
        return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def close(self) -> None:
        try:
            self.connection.shutdown(2)
        except OSError:
            pass


class FakeComfyUI:
    """A local ComfyUI look-alike. Use as a context manager, or start()/stop()."""

    def __init__(self, *, base_dir: Path | None = None, models: dict[str, list[str]] | None = None,
                 exec_delay: float = 0.01, step_delay: float = 0.0, serve_ws: bool = True) -> None:
        self.node_classes = default_node_classes()
        # Model files per models/ folder, as folder_paths.get_filename_list lists them.
        self.models = models if models is not None else {
            "checkpoints": ["sd_xl_base_1.0.safetensors"], "controlnet": ["controlnet-openpose-sdxl-1.0.safetensors",
                                                                          "controlnet-depth-sdxl-1.0.safetensors"]}
        self.base_dir = base_dir  # a ComfyUI folder to serve (input/, output/, temp/), else a temporary one
        self.exec_delay = exec_delay  # per prompt, before it runs
        self.step_delay = step_delay  # per KSampler step
        self.serve_ws = serve_ws  # False: /ws is missing (a proxy in front that does not pass websockets)
        # Test hooks: node ids or titles whose validation fails, or whose execution raises.
        self.fail_node_errors_for: set[str] = set()
        self.fail_execution_for: set[str] = set()
        self.lose_outputs: set[str] = set()  # file name prefixes deleted right after saving (a disk cleaner)
        self._custom: dict[str, Callable] = {}

        self.uploads: list[dict] = []
        self.prompts: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        # Called with (method, path) before a request is answered: lets a test make something happen between two
        # of the client's questions.
        self.before_answer: Callable[[str, str], None] | None = None
        self.interrupts: list[dict] = []
        self.ws_clients: list[str] = []
        self.history: dict[str, dict] = {}
        self.executing: str | None = None  # the node running now
        self.url, self.port = "", 0
        self._tmp: Path | None = None
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._number = 0
        self._queue: list[tuple] = []  # heap of (number, prompt_id, prompt, extra_data, outputs_to_execute)
        self._running: tuple | None = None
        self._interrupt = threading.Event()
        self._cache: dict[str, tuple[str, tuple, dict | None]] = {}  # node id -> (signature, outputs, ui)
        self._sockets: dict[str, _WebSocket] = {}
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeComfyUI:
        root = self.base_dir or Path(tempfile.mkdtemp(prefix="fake-comfyui-"))
        self._tmp = None if self.base_dir else root
        self.input_dir, self.output_dir, self.temp_dir = root / "input", root / "output", root / "temp"
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                          daemon=True),
                         threading.Thread(target=self._prompt_worker, daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._interrupt.set()
            self._wake.notify_all()
            sockets = list(self._sockets.values())
        for socket in sockets:
            socket.close()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeComfyUI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for tests

    def add_node(self, info: dict, run: Callable[[dict], tuple[tuple, dict]]) -> None:
        """A node kind of the test's own: `run(inputs) -> (outputs, ui)`; `self.save_file` writes output files."""
        self.node_classes[info["name"]] = info
        self._custom[info["name"]] = run

    def save_file(self, name: str, data: bytes, kind: str = "output") -> dict:
        folder = self.output_dir if kind == "output" else self.temp_dir
        (folder / name).write_bytes(data)
        return {"filename": name, "subfolder": "", "type": kind}

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Poll `condition` (called under the server's lock) until it holds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if condition():
                    return True
            time.sleep(0.01)
        return False

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return self.wait_for(lambda: not self._queue and self._running is None, timeout)

    def running_id(self) -> str | None:
        with self._lock:
            return self._running[1] if self._running else None

    def pending_ids(self) -> list[str]:
        with self._lock:
            return [item[1] for item in sorted(self._queue)]

    # ------------------------------------------------------------------ folders and /object_info

    def _annotated_path(self, name: str) -> Path:
        # folder_paths.get_annotated_filepath: "name [output]" picks the folder, the default is input/
        for suffix, folder in ((" [output]", self.output_dir), (" [input]", self.input_dir),
                               (" [temp]", self.temp_dir)):
            if name.endswith(suffix):
                return folder / name[:-len(suffix)]
        return self.input_dir / name

    def object_info(self, node_class: str | None = None) -> dict:
        lists = {("LoadImage", "image"): sorted(  # nodes.py LoadImage.INPUT_TYPES: top-level files of input/
                     p.name for p in self.input_dir.iterdir() if p.is_file()),
                 ("CheckpointLoaderSimple", "ckpt_name"): self.models.get("checkpoints", []),
                 ("ControlNetLoader", "control_net_name"): self.models.get("controlnet", [])}
        out = {}
        for name in [node_class] if node_class else list(self.node_classes):
            if name in self.node_classes:  # an unknown class is {} (server.py get_object_info_node)
                out[name] = copy.deepcopy(self.node_classes[name])
                for (cls, input_name), values in lists.items():
                    if cls == name:
                        out[name]["input"]["required"][input_name][0] = sorted(values)
        return out

    # ------------------------------------------------------------------ POST /upload/image

    def _image_upload(self, fields: dict) -> tuple[int, dict | None]:
        """server.py image_upload: the folder by type, the commonpath check, renaming unless overwrite."""
        image, overwrite = fields.get("image"), fields.get("overwrite")
        upload_type = fields.get("type") or "input"
        upload_dir = {"input": self.input_dir, "temp": self.temp_dir, "output": self.output_dir}.get(upload_type)
        if upload_dir is None or not isinstance(image, dict):
            raise ValueError("ComfyUI raises here: type_dir unbound, or no file field")  # -> aiohttp 500
        filename = image["filename"]
        if not filename:
            return 400, None
        subfolder = fields.get("subfolder", "")
        upload_root = os.path.abspath(upload_dir)
        folder = os.path.join(upload_root, os.path.normpath(subfolder))
        filepath = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((upload_root, filepath)) != upload_root:
            return 400, None
        os.makedirs(folder, exist_ok=True)
        duplicate, (stem, ext) = False, os.path.splitext(filename)
        if overwrite not in ("true", "1"):
            i = 1
            while os.path.exists(filepath):
                with open(filepath, "rb") as f:  # compare_image_hash: identical bytes reuse the file
                    if hashlib.sha256(f.read()).digest() == hashlib.sha256(image["data"]).digest():
                        duplicate = True
                        break
                filename = f"{stem} ({i}){ext}"
                filepath = os.path.join(folder, filename)
                i += 1
        if not duplicate:
            with open(filepath, "wb") as f:  # like ComfyUI: follows a symlink in the way, as any open() does
                f.write(image["data"])
        self.uploads.append({"name": filename, "subfolder": subfolder, "overwrite": overwrite,
                             "path": Path(filepath), "duplicate": duplicate})
        return 200, {"name": filename, "subfolder": subfolder, "type": upload_type}

    # ------------------------------------------------------------------ POST /prompt and validation

    def _post_prompt(self, json_data: dict) -> tuple[int, dict]:
        """server.py post_prompt: the number, a client-chosen prompt_id, validation, the queue item."""
        with self._lock:
            number = float(json_data["number"]) if "number" in json_data else self._number
            if "number" not in json_data:
                number = -number if json_data.get("front") else number
                self._number += 1
        if "prompt" not in json_data:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return 400, {"error": error, "node_errors": {}}
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        valid, error, outputs, node_errors = self._validate_prompt(prompt, json_data.get("partial_execution_targets"))
        if not valid:
            return 400, {"error": error, "node_errors": node_errors}
        extra_data = dict(json_data.get("extra_data") or {})
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        with self._lock:
            heapq.heappush(self._queue, (number, prompt_id, prompt, extra_data, outputs))
            self._wake.notify_all()
        self._queue_updated()
        return 200, {"prompt_id": prompt_id, "number": number, "node_errors": node_errors}

    def _validate_prompt(self, prompt: dict, partial: list | None) -> tuple:
        """execution.validate_prompt -> (valid, error, outputs_to_execute, node_errors)."""
        outputs = []
        for x, node in prompt.items():
            # `"class_type" not in node` raises TypeError on a number, as in a UI-format file's "last_node_id"
            # (then aiohttp answers 500); a list or a string simply has no class_type.
            if "class_type" not in node:
                return False, {"type": "invalid_prompt", "details": f"Node ID '#{x}'", "extra_info": {},
                               "message": "Cannot execute because a node is missing the class_type property."}, [], {}
            if node["class_type"] not in self.node_classes:
                return False, {"type": "invalid_prompt", "details": f"Node ID '#{x}'", "extra_info": {},
                               "message": f"Cannot execute because node {node['class_type']} does not exist."}, [], {}
            if self.node_classes[node["class_type"]]["output_node"] and (partial is None or x in partial):
                outputs.append(x)
        if not outputs:
            return False, {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                           "extra_info": {}}, [], {}
        good, failures, node_errors, validated = [], [], {}, {}
        for o in outputs:
            try:
                valid, reasons = self._validate_inputs(prompt, o, validated)
            except Exception as ex:
                valid, reasons = False, [{"type": "exception_during_validation", "details": str(ex),
                                          "message": "Exception when validating node", "extra_info": {
                                              "exception_type": _full_type_name(type(ex)),
                                              "traceback": traceback.format_tb(ex.__traceback__)}}]
                validated[o] = (False, reasons)
            if valid:
                good.append(o)
                continue
            failures.extend(reasons)
            for node_id, (ok, errors) in validated.items():
                if not ok and errors:
                    entry = node_errors.setdefault(node_id, {"errors": errors, "dependent_outputs": [],
                                                             "class_type": prompt[node_id]["class_type"]})
                    entry["dependent_outputs"].append(o)
        if not good:
            details = "\n".join(f"{e['message']}: {e['details']}" for e in failures)
            return False, {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                           "details": details, "extra_info": {}}, [], node_errors
        return True, None, good, node_errors

    def _validate_inputs(self, prompt: dict, unique_id: str, validated: dict) -> tuple[bool, list]:
        """execution.validate_inputs for object_info-described nodes (links, types, min/max, COMBO lists)."""
        if unique_id in validated:
            return validated[unique_id]
        node = prompt[unique_id]
        inputs, class_type = node.get("inputs", {}), node["class_type"]
        spec = self.object_info(class_type)[class_type]["input"]
        required, optional = spec["required"], spec.get("optional", {})
        errors, valid = [], True
        if {unique_id, (node.get("_meta") or {}).get("title")} & self.fail_node_errors_for:
            errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                           "details": "forced by FakeComfyUI.fail_node_errors_for",
                           "extra_info": {"input_name": next(iter(required))}})
        for x, info in [*required.items(), *optional.items()]:
            if x not in inputs:
                if x in required:
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": x, "extra_info": {"input_name": x}})
                continue
            val, input_type = inputs[x], info[0]
            extra = info[1] if len(info) > 1 else {}
            config = [input_type, extra]  # get_input_info gives (type, extra_info): what input_config shows
            if isinstance(val, list):
                if len(val) != 2:
                    errors.append({"type": "bad_linked_input", "details": x,
                                   "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                   "extra_info": {"input_name": x, "input_config": config, "received_value": val}})
                    continue
                received = self.node_classes[prompt[val[0]]["class_type"]]["output"][val[1]]  # KeyError: dangling
                if received != input_type and "*" not in (received, input_type):
                    errors.append({"type": "return_type_mismatch", "details": f"{x}, {received} != {input_type}",
                                   "message": "Return type mismatch between linked nodes",
                                   "extra_info": {"input_name": x, "input_config": config,
                                                  "received_type": received, "linked_node": val}})
                    continue
                if not self._validate_inputs(prompt, val[0], validated)[0]:
                    valid = False
                continue
            try:
                if input_type in ("INT", "FLOAT", "STRING"):
                    val = {"INT": int, "FLOAT": float, "STRING": str}[input_type](val)
            except (TypeError, ValueError) as ex:
                errors.append({"type": "invalid_input_type", "details": f"{x}, {val}, {ex}",
                               "message": f"Failed to convert an input value to a {input_type} value",
                               "extra_info": {"input_name": x, "input_config": config, "received_value": val,
                                              "exception_message": str(ex)}})
                continue
            for bound, kind, word in (("min", "value_smaller_than_min", "smaller"),
                                      ("max", "value_bigger_than_max", "bigger")):
                if bound in extra and (val < extra[bound] if bound == "min" else val > extra[bound]):
                    errors.append({"type": kind, "message": f"Value {val} {word} than {bound} of {extra[bound]}",
                                   "details": x, "extra_info": {"input_name": x, "input_config": config,
                                                                "received_value": val}})
                    break
            else:
                # A COMBO is a list of options (nodes.py classes) or "COMBO" with extra["options"] (V3 nodes).
                # LoadImage's VALIDATE_INPUTS takes over its `image` check (it also allows sub/folder names).
                options = extra.get("options", []) if input_type == "COMBO" else input_type
                if isinstance(options, list) and (class_type, x) != ("LoadImage", "image") and val not in options:
                    big = len(options) > 20
                    errors.append({"type": "value_not_in_list", "message": "Value not in list",
                                   "details": f"{x}: '{val}' not in "
                                              + (f"(list of length {len(options)})" if big else str(options)),
                                   "extra_info": {"input_name": x, "input_config": None if big else config,
                                                  "received_value": val}})
        if class_type == "LoadImage" and not self._annotated_path(str(inputs.get("image", ""))).exists():
            errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                           "details": f"image - Invalid image file: {inputs.get('image')}",
                           "extra_info": {"input_name": "image"}})
        validated[unique_id] = (not errors and valid, errors)
        return validated[unique_id]

    # ------------------------------------------------------------------ execution (main.py prompt_worker)

    def interrupt(self, prompt_id: str | None) -> None:
        """server.py post_interrupt: a prompt_id interrupts only that prompt, and only while it runs."""
        with self._lock:
            self.interrupts.append({"prompt_id": prompt_id})
            if prompt_id is None or (self._running and self._running[1] == prompt_id):
                self._interrupt.set()

    def _check_interrupt(self) -> None:  # nodes.before_node_execution / the sampler's callback
        if self._interrupt.is_set():
            raise Interrupted("Processing interrupted")

    def _prompt_worker(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait(timeout=0.1)
                if self._stopping:
                    return
                item = heapq.heappop(self._queue)
                self._running = item
                self._interrupt.clear()  # PromptExecutor.execute: interrupt_processing(False)
            self._queue_updated()
            self._interrupt.wait(self.exec_delay)  # starting up; an interrupt meanwhile stops it at its first node
            history_result, success, messages = self._execute(item)
            with self._lock:
                # PromptQueue.task_done: the entry; then the worker tells the client it is idle
                self.history[item[1]] = {"prompt": list(item), **history_result, "status": {
                    "status_str": "success" if success else "error", "completed": success, "messages": messages}}
                self._running = None
            self._send("executing", {"node": None, "prompt_id": item[1]}, item[3].get("client_id"))
            self._queue_updated()

    def _signature(self, prompt: dict, node_id: str, memo: dict) -> str:
        """The cache key of a node: its class and inputs, recursively, and LoadImage's file hash (IS_CHANGED)."""
        if node_id not in memo:
            node = prompt[node_id]
            parts: list = [node["class_type"]]
            for k, v in sorted(node.get("inputs", {}).items()):
                parts.append([k, self._signature(prompt, str(v[0]), memo), v[1]] if isinstance(v, list) else [k, v])
            if node["class_type"] == "LoadImage":
                path = self._annotated_path(str(node["inputs"].get("image", "")))
                parts.append(hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None)
            memo[node_id] = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
        return memo[node_id]

    def _order(self, prompt: dict, node_id: str, order: list) -> None:
        if node_id not in order:
            for v in prompt[node_id].get("inputs", {}).values():
                if isinstance(v, list) and len(v) == 2:
                    self._order(prompt, str(v[0]), order)
            order.append(node_id)

    def _execute(self, item: tuple) -> tuple[dict, bool, list]:
        """PromptExecutor.execute: messages, the classic cache, one node at a time; -> (result, success, msgs)."""
        _, prompt_id, prompt, extra_data, outputs_to_execute = item
        client_id, messages = extra_data.get("client_id"), []

        def add_message(event: str, data: dict, broadcast: bool = False) -> None:
            data = {**data, "timestamp": _now_ms()}
            messages.append([event, data])
            if client_id is not None or broadcast:
                self._send(event, data, client_id)

        add_message("execution_start", {"prompt_id": prompt_id})
        order: list[str] = []
        for o in outputs_to_execute:
            self._order(prompt, o, order)
        memo: dict = {}
        signatures = {node_id: self._signature(prompt, node_id, memo) for node_id in order}
        cached = [n for n in order if n in self._cache and self._cache[n][0] == signatures[n]]
        add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id})
        results = {n: self._cache[n][1] for n in cached}
        uis = {n: self._cache[n][2] for n in cached if self._cache[n][2]}
        executed, current = [], None
        try:
            for node_id in order:
                if node_id in results:
                    continue
                current = self.executing = node_id
                self._check_interrupt()
                self._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                           client_id)
                node = prompt[node_id]
                if {node_id, (node.get("_meta") or {}).get("title")} & self.fail_execution_for:
                    raise RuntimeError(f"forced by FakeComfyUI.fail_execution_for ({node_id})")
                inputs = {k: results[str(v[0])][v[1]] if isinstance(v, list) else v
                          for k, v in node.get("inputs", {}).items()}
                results[node_id], ui = self._run_node(node["class_type"], inputs, node_id, prompt_id, client_id)
                executed.append(node_id)
                if ui:
                    uis[node_id] = ui
                    self._send("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                            "prompt_id": prompt_id}, client_id)
            add_message("execution_success", {"prompt_id": prompt_id})
            success = True
        except Exception as ex:  # PromptExecutor.handle_execution_error
            base = {"prompt_id": prompt_id, "node_id": current, "node_type": prompt[current]["class_type"],
                    "executed": executed}
            if isinstance(ex, Interrupted):
                add_message("execution_interrupted", base, broadcast=True)
            else:
                add_message("execution_error", {**base, "exception_message": str(ex),
                                                "exception_type": _full_type_name(type(ex)),
                                                "traceback": traceback.format_tb(ex.__traceback__),
                                                "current_inputs": {}, "current_outputs": list(results)})
            success = False
        self.executing = None
        self._cache = {n: (signatures[n], results[n], uis.get(n)) for n in results}
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in uis}
        return {"outputs": copy.deepcopy(uis), "meta": meta}, success, messages

    def _run_node(self, class_type: str, inputs: dict, node_id: str, prompt_id: str, client_id) -> tuple:
        """The nodes' FUNCTIONs -> (outputs, ui)."""
        if class_type in self._custom:
            return self._custom[class_type](inputs)
        if class_type == "LoadImage":
            with Image.open(self._annotated_path(inputs["image"])) as image:
                return (image.convert("RGB"), None), {}
        if class_type == "ImageScale":
            return (inputs["image"].resize((inputs["width"], inputs["height"])),), {}
        if class_type == "CheckpointLoaderSimple":
            return ("model", "clip", "vae"), {}
        if class_type == "ControlNetLoader":
            return (inputs["control_net_name"],), {}
        if class_type == "CLIPTextEncode":
            return ({"text": inputs["text"], "hints": []},), {}
        if class_type == "ControlNetApplyAdvanced":
            return tuple({**inputs[k], "hints": [*inputs[k]["hints"], inputs["image"]]}
                         for k in ("positive", "negative")), {}
        if class_type == "EmptyLatentImage":
            return ({"size": (inputs["width"], inputs["height"]), "hints": []},), {}
        if class_type == "KSampler":
            for step in range(inputs["steps"]):  # comfy.utils.ProgressBar -> "progress" events
                self._check_interrupt()
                time.sleep(self.step_delay)
                self._send("progress", {"value": step + 1, "max": inputs["steps"], "prompt_id": prompt_id,
                                        "node": node_id}, client_id)
            return ({**inputs["latent_image"], "hints": inputs["positive"]["hints"]},), {}
        if class_type == "VAEDecode":
            latent = inputs["samples"]
            hints = latent["hints"]
            return ((hints[0].resize(latent["size"]) if hints else Image.new("RGB", latent["size"], "grey")),), {}
        if class_type in ("SaveImage", "PreviewImage"):
            return (), {"images": [self._save(inputs["images"], inputs.get("filename_prefix", "ComfyUI"),
                                              class_type == "PreviewImage")]}
        raise RuntimeError(f"FakeComfyUI cannot execute {class_type}")

    def _save(self, image: Image.Image, prefix: str, preview: bool) -> dict:
        """SaveImage.save_images + folder_paths.get_save_image_path: the counter after the prefix."""
        if preview:
            root, kind, prefix = self.temp_dir, "temp", "ComfyUI_temp_" + uuid.uuid4().hex[:5]
        else:
            root, kind = self.output_dir, "output"
        subfolder, base = os.path.split(os.path.normpath(prefix))
        folder = root / subfolder
        if os.path.commonpath((root.resolve(), folder.resolve())) != str(root.resolve()):
            raise RuntimeError("**** ERROR: Saving image outside the output folder is not allowed.")
        folder.mkdir(parents=True, exist_ok=True)
        counters = [int(n[len(base) + 1:].split("_")[0]) for n in os.listdir(folder)
                    if n.startswith(base + "_") and n[len(base) + 1:].split("_")[0].isdigit()]
        name = f"{base}_{max(counters, default=0) + 1:05}_.png"
        image.save(folder / name, compress_level=4)
        if any(name.startswith(p) for p in self.lose_outputs):
            (folder / name).unlink()
        return {"filename": name, "subfolder": subfolder, "type": kind}

    # ------------------------------------------------------------------ /ws, /queue, /history

    def _send(self, event: str, data: dict, sid: str | None) -> None:
        """PromptServer.send_sync: to the client's socket, or to every socket when sid is None."""
        with self._lock:
            targets = [self._sockets[sid]] if sid in self._sockets else [] if sid else list(self._sockets.values())
        for socket in targets:
            socket.send_json({"type": event, "data": data})

    def _queue_updated(self) -> None:
        self._send("status", {"status": self.queue_remaining()}, None)

    def queue_remaining(self) -> dict:
        with self._lock:
            return {"exec_info": {"queue_remaining": len(self._queue) + (self._running is not None)}}

    def queue_info(self) -> dict:
        with self._lock:
            return {"queue_running": [list(self._running)] if self._running else [],
                    "queue_pending": [list(x) for x in sorted(self._queue)]}

    def system_stats(self) -> dict:
        return {"system": {"os": os.name, "ram_total": 2 ** 34, "ram_free": 2 ** 33, "comfyui_version": "0.3.64",
                           "python_version": sys.version, "pytorch_version": "2.8.0+cpu", "embedded_python": False,
                           "argv": ["main.py", "--cpu"]},
                "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": 2 ** 34,
                             "vram_free": 2 ** 33, "torch_vram_total": 2 ** 34, "torch_vram_free": 2 ** 33}]}

    # ------------------------------------------------------------------ HTTP

    def _handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes = b"", ctype: str | None = None, headers: dict | None = None):
                self.send_response(status)
                for key, value in (({"Content-Type": ctype} if ctype else {}) | (headers or {})).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, obj, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json; charset=utf-8")

            def _text(self, status: int, text: str) -> None:
                self._send(status, text.encode(), "text/plain; charset=utf-8")

            def _route(self) -> tuple[str, dict]:
                parts = urlsplit(self.path)
                path = parts.path[4:] if parts.path.startswith("/api/") else parts.path  # add_routes: /api too
                fake.requests.append((self.command, path))
                if fake.before_answer is not None:
                    fake.before_answer(self.command, path)
                return path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}

            def do_GET(self) -> None:
                path, query = self._route()
                try:
                    if path == "/ws" and fake.serve_ws:
                        return self._websocket(query)
                    if path.startswith("/object_info"):
                        return self._json(fake.object_info(unquote(path[len("/object_info/"):]) or None))
                    if path == "/history" or path.startswith("/history/"):
                        prompt_id = unquote(path[len("/history/"):])
                        with fake._lock:
                            ids = [prompt_id] if prompt_id else list(fake.history)
                            return self._json({i: fake.history[i] for i in ids if i in fake.history})
                    answers = {"/system_stats": fake.system_stats, "/queue": fake.queue_info,
                               "/prompt": fake.queue_remaining}
                    if path in answers:
                        return self._json(answers[path]())
                    if path == "/view":
                        return self._view(query)
                    return self._text(404, "404: Not Found")
                except Exception:
                    return self._text(500, AIOHTTP_500)

            def _view(self, query: dict) -> None:
                """server.py view_image: no "..", the folder by type, the subfolder inside it."""
                name = query.get("filename", "")
                if not name:
                    return self._send(404)
                if name[0] == "/" or ".." in name:
                    return self._send(400)
                folder = {"output": fake.output_dir, "input": fake.input_dir, "temp": fake.temp_dir}.get(
                    query.get("type", "output"))
                if folder is None:
                    return self._send(400)
                full = os.path.abspath(os.path.join(folder, query.get("subfolder", "")))
                if os.path.commonpath((full, str(folder))) != str(folder):
                    return self._send(403)
                file = os.path.join(full, os.path.basename(name))
                if not os.path.isfile(file):
                    return self._send(404)
                with open(file, "rb") as f:
                    self._send(200, f.read(), mimetypes.guess_type(file)[0] or "application/octet-stream",
                               {"Content-Disposition": f'filename="{os.path.basename(name)}"'})

            def _websocket(self, query: dict) -> None:
                """server.py websocket_handler: the status first, then events until the client leaves."""
                key = self.headers.get("Sec-WebSocket-Key")
                if (self.headers.get("Upgrade") or "").lower() != "websocket" or not key:
                    return self._text(400, "No WebSocket UPGRADE hdr")
                accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
                self.send_response(101)
                for header, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                      ("Sec-WebSocket-Accept", accept)):
                    self.send_header(header, value)
                self.end_headers()
                self.wfile.flush()
                sid = query.get("clientId") or uuid.uuid4().hex
                socket = _WebSocket(self)
                with fake._lock:
                    fake._sockets[sid] = socket
                    fake.ws_clients.append(sid)
                socket.send_json({"type": "status", "data": {"status": fake.queue_remaining(), "sid": sid}})
                try:
                    while True:
                        opcode, payload = socket.receive()
                        if opcode is None or opcode == 0x8:
                            socket.send(0x8, payload[:2]) if opcode else None  # answer the close
                            break
                        if opcode == 0x9:
                            socket.send(0xA, payload)
                except OSError:
                    pass
                finally:
                    with fake._lock:
                        if fake._sockets.get(sid) is socket:
                            del fake._sockets[sid]
                    self.close_connection = True

            def do_POST(self) -> None:
                path, _ = self._route()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    if path == "/upload/image":
                        status, out = fake._image_upload(self._multipart(body))
                        return self._json(out, status) if out is not None else self._send(status)
                    data = json.loads(body or b"{}")  # aiohttp request.json(): bad JSON -> 500
                    if path == "/prompt":
                        fake.prompts.append(data)
                        status, out = fake._post_prompt(data)
                        return self._json(out, status)
                    if path == "/queue":  # server.py post_queue
                        with fake._lock:
                            if data.get("clear"):
                                fake._queue = []
                            fake._queue = [x for x in fake._queue if x[1] not in data.get("delete", [])]
                            heapq.heapify(fake._queue)
                        fake._queue_updated()
                        return self._send(200)
                    if path == "/interrupt":
                        fake.interrupt(data.get("prompt_id"))
                        return self._send(200)
                    return self._text(404, "404: Not Found")
                except Exception:
                    return self._text(500, AIOHTTP_500)

            def _multipart(self, body: bytes) -> dict:
                """multipart/form-data through the stdlib email parser (aiohttp's request.post())."""
                raw = b"Content-Type: " + self.headers.get("Content-Type", "").encode("latin-1") + b"\r\n\r\n" + body
                fields: dict = {}
                for part in email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw).iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    data = part.get_payload(decode=True) or b""
                    filename = part.get_filename()
                    fields[name] = {"filename": filename, "data": data} if filename is not None else data.decode()
                return fields

        return Handler


__all__ = ["FakeComfyUI", "default_node_classes", "node_info"]
