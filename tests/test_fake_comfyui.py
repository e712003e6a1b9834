"""The stand-in answers like a real ComfyUI 0.3.64: the same requests, compared with that server's recorded answers.

`-m real_comfyui` with POSE_FACTORY_REAL_COMFYUI=http://host:8188 sends the same requests to a real server and
compares its answers with the same recording.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket
from PIL import Image

from fake_comfyui import FakeComfyUI, node_info

RECORDING = Path(__file__).parent / "data" / "comfyui-0.3.64-answers.json"
REAL_COMFYUI = os.environ.get("POSE_FACTORY_REAL_COMFYUI")


@pytest.fixture
def comfy():
    with FakeComfyUI() as server:
        yield server


@pytest.fixture(params=["stand-in", pytest.param("real", marks=pytest.mark.real_comfyui)])
def server_url(request):
    """The stand-in, or (opt-in) the real ComfyUI at POSE_FACTORY_REAL_COMFYUI."""
    if request.param == "real":
        if not REAL_COMFYUI:
            pytest.skip("set POSE_FACTORY_REAL_COMFYUI=http://host:port to run against a real ComfyUI")
        yield REAL_COMFYUI.rstrip("/")
        return
    with FakeComfyUI() as server:
        yield server.url


def png(size=(8, 6), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_history(url: str, prompt_id: str, timeout: float = 60) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        entry = requests.get(f"{url}/history/{prompt_id}", timeout=10).json().get(prompt_id)
        if entry:
            return entry
        time.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} did not finish")


def answer(response: requests.Response) -> dict:
    """An answer as the recording keeps it: status, content type and the JSON body (or the text)."""
    ctype = response.headers.get("Content-Type", "").split(";")[0]
    body = response.json() if ctype == "application/json" else {"<text>": response.text}
    return {"status": response.status_code, "ctype": ctype, "body": body}


def probe_graph(image: str, prefix: str, **changes) -> dict:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": image}},
             "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nearest-exact",
                                                          "width": 8, "height": 6, "crop": "disabled"}},
             "9": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}
    for key, value in changes.items():
        node, _, name = key.partition("_")
        graph[node]["inputs"][name] = value
    return graph


def probe(url: str) -> dict:
    """The request shapes the ComfyUI client sends, answered and normalised as in the recording."""
    tag = uuid.uuid4().hex[:8]
    folder = f"pose-factory-{tag}/pose"
    out: dict = {}

    def upload(name: str, data: bytes | None, **fields) -> dict:
        files = {"image": (name, data, "image/png")} if data is not None else {"x": ("", b"")}
        return answer(requests.post(f"{url}/upload/image", files=files, data=fields, timeout=10))

    def post(body: dict) -> dict:
        return answer(requests.post(f"{url}/prompt", json=body, timeout=10))

    info = requests.get(f"{url}/object_info", timeout=30).json()
    for name in ("LoadImage", "SaveImage"):
        out[f"object_info.{name}.keys"] = sorted(info[name])
    out["object_info.LoadImage.input"] = {k: list(v) for k, v in info["LoadImage"]["input"].items()}
    out["object_info.LoadImage.image.spec[1]"] = info["LoadImage"]["input"]["required"]["image"][1]
    out["object_info.SaveImage.input.required"] = info["SaveImage"]["input"]["required"]
    out["object_info.unknown"] = requests.get(f"{url}/object_info/NoSuchNode", timeout=10).json()
    out["api-prefix.object_info"] = list(requests.get(f"{url}/api/object_info/SaveImage", timeout=10).json())

    first, other = png(), png(colour=(10, 200, 10))
    out["upload.new.overwrite"] = upload("000000.png", first, subfolder=folder, overwrite="true")
    out["upload.same-name.same-bytes.no-overwrite"] = upload("000000.png", first, subfolder=folder)
    out["upload.same-name.other-bytes.no-overwrite"] = upload("000000.png", other, subfolder=folder)
    out["upload.traversal"] = upload("../x.png", first, subfolder=folder)
    out["upload.bad-type"] = upload("000000.png", first, subfolder=folder, type="bogus")
    out["upload.no-file-field"] = upload("000000.png", None, subfolder=folder)

    image, prefix = f"{folder}/000000.png", f"probe_{tag}"
    ok = post({"prompt": probe_graph(image, prefix), "client_id": "pose-factory"})
    out["prompt.ok"] = ok
    entry = wait_history(url, ok["body"]["prompt_id"])
    out["history.entry.keys"] = sorted(entry)
    out["history.status"] = {"completed": entry["status"]["completed"], "status_str": entry["status"]["status_str"],
                             "events": [m[0] for m in entry["status"]["messages"]]}
    out["history.outputs"], out["history.meta"] = entry["outputs"], entry["meta"]
    out["history.prompt.len"] = len(entry["prompt"])
    out["history.prompt[3]"], out["history.prompt[4]"] = entry["prompt"][3], entry["prompt"][4]
    saved = entry["outputs"]["9"]["images"][0]
    view = requests.get(f"{url}/view", params=saved, timeout=10)
    out["view"] = {"status": view.status_code, "ctype": view.headers["Content-Type"],
                   "size": list(Image.open(io.BytesIO(view.content)).size)}
    out["view.missing"] = requests.get(f"{url}/view", params={"filename": f"absent_{tag}.png"}, timeout=10).status_code

    cached = post({"prompt": probe_graph(image, prefix), "client_id": "pose-factory"})
    entry = wait_history(url, cached["body"]["prompt_id"])
    out["history.cached.events"] = [[m[0], sorted(m[1]["nodes"]) if m[0] == "execution_cached" else None]
                                    for m in entry["status"]["messages"]]
    out["history.cached.outputs"] = entry["outputs"]

    out["prompt.missing-image"] = post({"prompt": probe_graph(f"absent_{tag}.png", prefix)})
    out["prompt.not-in-list"] = post({"prompt": probe_graph(image, prefix, **{"2_upscale_method": "nope"})})
    out["prompt.below-min"] = post({"prompt": probe_graph(image, prefix, **{"2_width": -1})})
    partial = probe_graph(image, prefix)
    partial["11"] = {"class_type": "LoadImage", "inputs": {"image": f"absent_{tag}.png"}}
    partial["19"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": prefix}}
    out["prompt.partial"] = post({"prompt": partial})
    out["prompt.partial.history.outputs"] = sorted(wait_history(url, out["prompt.partial"]["body"]["prompt_id"])
                                                   ["outputs"])
    out["prompt.dangling-link"] = post({"prompt": probe_graph(image, prefix, **{"9_images": ["77", 0]})})
    out["prompt.missing-class"] = post({"prompt": {"1": {"class_type": "NoSuch", "inputs": {}}}})
    out["prompt.no-outputs"] = post({"prompt": {"1": probe_graph(image, prefix)["1"]}})
    out["prompt.no-prompt"] = post({"client_id": "pose-factory"})
    out["prompt.ui-format"] = post({"prompt": {"last_node_id": 9, "last_link_id": 1, "nodes": [
        {"id": 1, "type": "LoadImage", "widgets_values": ["a.png", "image"]}], "links": [], "version": 0.4}})
    out["queue"] = answer(requests.get(f"{url}/queue", timeout=10))
    out["get.prompt"] = answer(requests.get(f"{url}/prompt", timeout=10))
    out["interrupt.status"] = requests.post(f"{url}/interrupt", timeout=10).status_code
    out["ws.status"] = requests.get(f"{url}/ws", timeout=10).status_code

    text = json.dumps(out).replace(tag, "<tag>")
    return json.loads(re.sub(r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"', '"<uuid>"', text))


def _drop(obj, key: str):
    """obj without `key` at any depth."""
    if isinstance(obj, dict):
        return {k: _drop(v, key) for k, v in obj.items() if k != key}
    if isinstance(obj, list):
        return [_drop(v, key) for v in obj]
    return obj


def test_answers_match_the_recording_of_a_real_comfyui(server_url):
    recorded = json.loads(RECORDING.read_text())["answers"]
    got = probe(server_url)
    # Accepted differences, each a known and harmless one (the rest must be equal):
    # - the traceback of an exception during validation names ComfyUI's files and lines.
    # - prompt numbers count every prompt the server has seen: only the stand-in starts fresh (0 and 5).
    # Not probed: tooltips of the other nodes (the stand-in has them for SaveImage only; the client never reads
    # them), and `create_time`, which ComfyUI after 0.3.64 adds to extra_data (the stand-in is 0.3.64: none).
    for answers in (recorded, got):
        answers["prompt.dangling-link"] = _drop(answers["prompt.dangling-link"], "traceback")
    if server_url == REAL_COMFYUI:
        assert got["prompt.partial"]["body"]["number"] > got["prompt.ok"]["body"]["number"]
        for answers in (recorded, got):
            answers["prompt.ok"]["body"]["number"] = answers["prompt.partial"]["body"]["number"] = "<n>"
    assert set(got) == set(recorded)
    assert {key: got[key] for key in recorded if got[key] != recorded[key]} == {}


def _events(ws, until: str, timeout: float = 30) -> list[dict]:
    ws.settimeout(timeout)
    seen = []
    while not seen or seen[-1]["type"] != until:
        message = ws.recv()
        if isinstance(message, str):
            seen.append(json.loads(message))
    return seen


def ksampler_graph(steps: int) -> dict:
    """The realistic ControlNet graph (config/examples) on the stand-in's grey image, with `steps` steps."""
    graph = json.loads((Path(__file__).parents[1] / "config" / "examples" /
                        "openpose_depth_controlnet_api.json").read_text())
    graph["3"]["inputs"]["steps"] = steps
    graph["5"]["inputs"].update(width=16, height=16)
    graph["10"]["inputs"]["image"] = graph["13"]["inputs"]["image"] = "grey.png"
    return graph


def test_websocket_reports_start_nodes_progress_and_end_to_its_client(comfy):
    (comfy.input_dir / "grey.png").write_bytes(png(colour=(128, 128, 128)))
    ws = websocket.create_connection(comfy.url.replace("http", "ws") + "/ws?clientId=me", timeout=10)
    other = websocket.create_connection(comfy.url.replace("http", "ws") + "/ws?clientId=someone-else", timeout=10)
    try:
        status = json.loads(ws.recv())
        assert status == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "me"}}
        body = {"prompt": ksampler_graph(3), "client_id": "me", "prompt_id": "my-own-id"}
        prompt_id = requests.post(comfy.url + "/prompt", json=body, timeout=10).json()["prompt_id"]
        assert prompt_id == "my-own-id"  # server.py post_prompt takes the client's prompt_id
        events = _events(ws, "execution_success")
        kinds = [e["type"] for e in events if e["type"] != "status"]
        assert kinds[:2] == ["execution_start", "execution_cached"]
        assert [e["data"]["value"] for e in events if e["type"] == "progress"] == [1, 2, 3]
        assert {e["data"]["node"] for e in events if e["type"] == "executing"} >= {"3", "4", "8", "9"}
        executed = [e["data"] for e in events if e["type"] == "executed"]
        assert executed[0]["node"] == "9" and executed[0]["output"]["images"][0]["type"] == "output"
        assert all(e["data"].get("prompt_id", prompt_id) == prompt_id for e in events)
        assert _events(ws, "executing")[-1]["data"] == {"node": None, "prompt_id": prompt_id}
        # the other client hears queue changes only, never this client's execution
        other.settimeout(0.5)
        heard = []
        with pytest.raises(websocket.WebSocketTimeoutException):
            while True:
                heard.append(json.loads(other.recv())["type"])
        assert set(heard) == {"status"}
    finally:
        ws.close()
        other.close()


def test_interrupt_ends_only_the_named_running_prompt_and_delete_empties_the_queue(comfy):
    comfy.step_delay = 0.02
    (comfy.input_dir / "grey.png").write_bytes(png(colour=(128, 128, 128)))
    first = requests.post(comfy.url + "/prompt", json={"prompt": ksampler_graph(5000)}, timeout=10).json()
    second = requests.post(comfy.url + "/prompt", json={"prompt": ksampler_graph(4000)}, timeout=10).json()
    assert comfy.wait_for(lambda: comfy._running and comfy._running[1] == first["prompt_id"])
    requests.post(comfy.url + "/queue", json={"delete": [second["prompt_id"]]}, timeout=10)
    assert comfy.pending_ids() == []
    assert comfy.wait_for(lambda: comfy.executing == "3")  # the sampler
    requests.post(comfy.url + "/interrupt", json={"prompt_id": second["prompt_id"]}, timeout=10)
    assert comfy.running_id() == first["prompt_id"], "a prompt_id that is not running interrupts nothing"
    requests.post(comfy.url + "/interrupt", json={"prompt_id": first["prompt_id"]}, timeout=10)
    entry = wait_history(comfy.url, first["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    last = entry["status"]["messages"][-1]
    assert last[0] == "execution_interrupted" and last[1]["node_id"] == "3" and last[1]["node_type"] == "KSampler"
    assert comfy.wait_idle() and second["prompt_id"] not in comfy.history


def test_combo_inputs_are_checked_in_both_forms(comfy):
    # nodes.py classes list their options; V3 nodes say "COMBO" with {"options": [...]}.
    comfy.add_node(node_info("V3Picker", {"images": ["IMAGE"], "mode": ["COMBO", {"options": ["a", "b"]}]}, [],
                             "test", output_node=True), lambda inputs: ((), {}))
    (comfy.input_dir / "grey.png").write_bytes(png())
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "grey.png"}},
             "2": {"class_type": "V3Picker", "inputs": {"images": ["1", 0], "mode": "c"}}}
    body = requests.post(comfy.url + "/prompt", json={"prompt": graph}, timeout=10).json()
    assert body["node_errors"]["2"]["errors"][0]["details"] == "mode: 'c' not in ['a', 'b']"
    graph["2"]["inputs"]["mode"] = "b"
    graph["3"] = ksampler_graph(1)["4"]
    graph["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    graph["3"]["inputs"]["ckpt_name"] = "v1-5-pruned.safetensors"  # not in models/checkpoints: only 4 has to run
    body = requests.post(comfy.url + "/prompt", json={"prompt": graph}, timeout=10).json()
    assert body["node_errors"] == {}
    assert wait_history(comfy.url, body["prompt_id"])["outputs"]["4"]["images"][0]["type"] == "temp"


def test_an_event_for_a_client_that_just_left_is_dropped_as_comfyui_drops_it():
    """The socket's stream may already be closed by its handler thread when an event is written: that client is
    gone, which is no error of the prompt (server.py send_socket_catch_exception)."""
    import types

    from fake_comfyui import _WebSocket

    closed = io.BytesIO()
    closed.close()
    handler = types.SimpleNamespace(rfile=io.BytesIO(), wfile=closed, connection=None)
    _WebSocket(handler).send_json({"type": "progress", "data": {}})  # raised ValueError before
