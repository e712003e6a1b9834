"""The fake ComfyUI answers like ComfyUI's own server code (see tests/fake_comfyui.py for the sources)."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from fake_comfyui import FakeComfyUI


@pytest.fixture
def comfy():
    with FakeComfyUI() as server:
        yield server


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def get_json(url: str):
    return json.loads(_get(url)[2])


def post_json(url: str, obj) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def upload(base: str, name: str, data: bytes, **fields: str) -> tuple[int, dict | None]:
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(base + "/upload/image", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def png_bytes(seed: int = 0, size=(37, 23)) -> bytes:
    rng = np.random.default_rng(seed)
    # include CR/LF byte values inside the image data so multipart parsing is exercised
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[0, :3] = [13, 10, 13]
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def graph(image_name: str, prefix: str = "pose", scale: tuple[int, int] | None = None) -> dict:
    g = {"1": {"class_type": "LoadImage", "inputs": {"image": image_name}, "_meta": {"title": "Load Image"}},
         "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}
    if scale:
        g["5"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                         "width": scale[0], "height": scale[1], "crop": "disabled"}}
        g["9"]["inputs"]["images"] = ["5", 0]
    return g


def wait_history(base: str, prompt_id: str, timeout: float = 5.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        h = get_json(f"{base}/history/{prompt_id}")
        if h:
            return h[prompt_id]
        time.sleep(0.02)
    raise AssertionError("prompt did not finish")


def test_object_info_lists_nodes_in_comfyui_shape(comfy):
    upload(comfy.url, "a.png", png_bytes())
    info = get_json(comfy.url + "/object_info")
    assert {"LoadImage", "SaveImage"} <= set(info)
    load = info["LoadImage"]
    assert load["input"]["required"]["image"] == [["a.png"], {"image_upload": True}]
    assert load["output"] == ["IMAGE", "MASK"] and load["output_node"] is False
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["output"] == []
    for key in ("input_order", "output_is_list", "output_name", "name", "display_name", "category",
                "python_module", "description"):
        assert key in load
    assert get_json(comfy.url + "/object_info/SaveImage").keys() == {"SaveImage"}
    assert get_json(comfy.url + "/object_info/NoSuchNode") == {}
    assert get_json(comfy.url + "/api/object_info/LoadImage").keys() == {"LoadImage"}


def test_upload_prompt_history_view_round_trip(comfy):
    data = png_bytes(1)
    status, ans = upload(comfy.url, "pose_000001.png", data)
    assert status == 200 and ans == {"name": "pose_000001.png", "subfolder": "", "type": "input"}
    assert (comfy.input_dir / "pose_000001.png").read_bytes() == data

    status, ans = post_json(comfy.url + "/prompt", {"prompt": graph("pose_000001.png"), "client_id": "cli-1"})
    assert status == 200, ans
    assert ans["node_errors"] == {} and ans["number"] == 0
    prompt_id = ans["prompt_id"]
    uuid.UUID(prompt_id)
    assert comfy.prompts[-1]["client_id"] == "cli-1"

    entry = wait_history(comfy.url, prompt_id)
    number, pid, prompt, extra, outputs_to_execute = entry["prompt"]
    assert (number, pid, outputs_to_execute) == (0, prompt_id, ["9"])
    assert extra["client_id"] == "cli-1"
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    images = entry["outputs"]["9"]["images"]
    assert images == [{"filename": "pose_00001_.png", "subfolder": "", "type": "output"}]
    assert entry["meta"]["9"]["node_id"] == "9"
    assert prompt_id in get_json(comfy.url + "/history")
    assert get_json(comfy.url + "/queue") == {"queue_running": [], "queue_pending": []}

    q = urllib.parse.urlencode({"filename": "pose_00001_.png", "subfolder": "", "type": "output"})
    status, ctype, body = _get(f"{comfy.url}/view?{q}")
    assert status == 200 and ctype == "image/png"
    got = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(got, want)

    # same graph again: ComfyUI serves it from its cache, no new file
    _, again = post_json(comfy.url + "/prompt", {"prompt": graph("pose_000001.png"), "client_id": "cli-1"})
    entry2 = wait_history(comfy.url, again["prompt_id"])
    assert entry2["outputs"]["9"]["images"][0]["filename"] == "pose_00001_.png"
    assert entry2["status"]["messages"][1][1]["nodes"] == ["9"]
    # a different prefix (and a scale) runs again and uses the counter
    _, third = post_json(comfy.url + "/prompt", {"prompt": graph("pose_000001.png", "pose", (10, 5))})
    entry3 = wait_history(comfy.url, third["prompt_id"])
    assert entry3["outputs"]["9"]["images"][0]["filename"] == "pose_00002_.png"
    assert Image.open(comfy.output_dir / "pose_00002_.png").size == (10, 5)


def test_view_refuses_traversal_and_missing(comfy):
    (comfy.output_dir / "x.png").write_bytes(png_bytes())
    for query, code in ((("filename", "../secret.png"),), 400), ((("filename", "x.png"), ("type", "bogus")), 400), \
            ((("filename", "x.png"), ("subfolder", "../..")), 403), ((("filename", "nope.png"),), 404):
        with pytest.raises(urllib.error.HTTPError) as err:
            _get(f"{comfy.url}/view?{urllib.parse.urlencode(query)}")
        assert err.value.code == code, query
    assert _get(f"{comfy.url}/view?filename=x.png")[0] == 200


def test_ui_format_workflow_rejected(comfy):
    ui_workflow = {"last_node_id": 9, "last_link_id": 1,
                   "nodes": [{"id": 1, "type": "LoadImage", "widgets_values": ["a.png", "image"]}],
                   "links": [[1, 1, 0, 9, 0, "IMAGE"]], "groups": [], "config": {}, "extra": {}, "version": 0.4}
    status, ans = post_json(comfy.url + "/prompt", {"prompt": ui_workflow, "client_id": "c"})
    assert status == 400
    assert ans == {"error": {"type": "invalid_prompt",
                             "message": "Cannot execute because a node is missing the class_type property.",
                             "details": "Node ID '#last_node_id'", "extra_info": {}},
                   "node_errors": {}}
    status, ans = post_json(comfy.url + "/prompt", {"prompt": {"1": {"class_type": "NoSuch", "inputs": {}}}})
    assert status == 400 and ans["error"]["type"] == "invalid_prompt"
    assert ans["error"]["message"] == "Cannot execute because node NoSuch does not exist."
    status, ans = post_json(comfy.url + "/prompt", {"client_id": "c"})
    assert status == 400 and ans["error"]["type"] == "no_prompt"


def test_missing_image_gives_node_errors(comfy):
    status, ans = post_json(comfy.url + "/prompt", {"prompt": graph("absent.png")})
    assert status == 400
    assert ans["error"]["type"] == "prompt_outputs_failed_validation"
    assert ans["error"]["message"] == "Prompt outputs failed validation"
    assert set(ans["node_errors"]) == {"1"}
    node = ans["node_errors"]["1"]
    assert node["class_type"] == "LoadImage" and node["dependent_outputs"] == ["9"]
    assert node["errors"] == [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                               "details": "image - Invalid image file: absent.png",
                               "extra_info": {"input_name": "image"}}]


def test_graph_without_output_node(comfy):
    upload(comfy.url, "a.png", png_bytes())
    status, ans = post_json(comfy.url + "/prompt",
                            {"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}})
    assert status == 400
    assert ans == {"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                             "extra_info": {}}, "node_errors": {}}


def test_upload_name_collision_renames(comfy):
    first, second = png_bytes(1), png_bytes(2)
    assert upload(comfy.url, "p.png", first)[1]["name"] == "p.png"
    assert upload(comfy.url, "p.png", second)[1]["name"] == "p (1).png"
    assert upload(comfy.url, "p.png", png_bytes(3))[1]["name"] == "p (2).png"
    # identical bytes: ComfyUI reuses the existing file (compare_image_hash)
    assert upload(comfy.url, "p.png", first)[1]["name"] == "p.png"
    # overwrite replaces
    assert upload(comfy.url, "p.png", second, overwrite="true")[1]["name"] == "p.png"
    assert (comfy.input_dir / "p.png").read_bytes() == second
    # subfolder and type
    status, ans = upload(comfy.url, "q.png", first, subfolder="batch1", type="input")
    assert ans == {"name": "q.png", "subfolder": "batch1", "type": "input"}
    assert (comfy.input_dir / "batch1" / "q.png").exists()
    assert upload(comfy.url, "../evil.png", first)[0] == 400
    assert [u["name"] for u in comfy.uploads][:3] == ["p.png", "p (1).png", "p (2).png"]


def test_forced_failures_and_system_stats(comfy):
    upload(comfy.url, "a.png", png_bytes())
    comfy.fail_node_errors_for.add("Load Image")  # a node title
    status, ans = post_json(comfy.url + "/prompt", {"prompt": graph("a.png")})
    assert status == 400 and ans["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    comfy.fail_node_errors_for.clear()
    comfy.fail_execution_for.add("9")
    _, ans = post_json(comfy.url + "/prompt", {"prompt": graph("a.png", "other")})
    entry = wait_history(comfy.url, ans["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_error"
    stats = get_json(comfy.url + "/system_stats")
    assert {"os", "python_version", "comfyui_version"} <= set(stats["system"])
    assert stats["devices"][0]["type"] == "cpu"
