"""`comfyui check`, `comfyui queue` and `comfyui link` against a server that speaks ComfyUI's API.

The stand-in (tests/fake_comfyui.py) by default; tests using the `server` fixture also run, with
`-m real_comfyui` and POSE_FACTORY_REAL_COMFYUI=http://host:8188, against a real ComfyUI (no models needed).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from fake_comfyui import FakeComfyUI, node_info
from helpers import ENV_NAMES, REPO, Project, Result, dvc, make_repository, publish_generated, run_script
from pose_factory.cli import main as cli_main

pytestmark = pytest.mark.integration

BATCH = "2026-11-01_run-cycle"
REAL_COMFYUI = os.environ.get("POSE_FACTORY_REAL_COMFYUI")
# Two LoadImage -> SaveImage chains: runs on any ComfyUI, with or without models.
API_WORKFLOW = {
    "10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "11": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "20": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "ComfyUI"}},
    "21": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "ComfyUI"}},
}
SIMPLE = {"inputs": {"10.image": "pose", "11.image": "depth"}, "values": {"20.filename_prefix": "pf_{pose_set}_{name}"}}
# The realistic SDXL graph (checkpoint, two ControlNets, KSampler, VAEDecode, SaveImage), at the set's 48x48.
CONTROLNET = {"inputs": {"10.image": "pose", "13.image": "depth"},
              "values": {"3.seed": "{seed}", "6.text": "a mannequin, {pose_set}, seen from {azimuth_deg} degrees",
                         "9.filename_prefix": "pf_{batch_id}_{name}"}}
UI_WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "LoadImage"}], "links": [], "version": 0.4}


def controlnet_graph(steps: int = 4) -> dict:
    graph = json.loads((REPO / "config" / "examples" / "openpose_depth_controlnet_api.json").read_text())
    graph["5"]["inputs"].update(width=48, height=48)
    graph["3"]["inputs"]["steps"] = steps
    return graph


def write_config(root: Path, workflow: dict, mapping: dict, **comfyui) -> None:
    (root / "config" / "workflows").mkdir(parents=True, exist_ok=True)
    (root / "config" / "workflows" / "pose.json").write_text(json.dumps(workflow))
    entry = {"workflow": "config/workflows/pose.json", "projects": ["run-cycle"], **mapping}
    (root / "config" / "local.yaml").write_text(json.dumps({"workflows": {"pose-depth": entry},
                                                             **({"comfyui": comfyui} if comfyui else {})}))


def _run_cli(*args) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory) -> Path:
    """A dataset repository with one pulled batch (3 samples, 48x48) and its working set, built once."""
    base = tmp_path_factory.mktemp("comfyui-repo")
    root = base / "project"
    with pytest.MonkeyPatch.context() as env:
        for name in ENV_NAMES:
            env.delenv(name, raising=False)
        env.setenv("DVC_SITE_CACHE_DIR", str(base / "dvc-site-cache"))
        env.setenv("DVC_NO_ANALYTICS", "1")
        env.setenv("POSE_FACTORY_DVC_LOCAL_REMOTE", str(base / "dvc-remote"))
        env.setenv("POSE_FACTORY_BACKEND", "local")
        env.setenv("POSE_FACTORY_ROOT", str(root))
        for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
            (root / folder).mkdir(parents=True)
        make_repository(Project(root), _run_cli, pipeline=True)
        publish_generated(base, _run_cli, BATCH, samples=3, seed=1)
        assert _run_cli("pull", BATCH, "--commit", "-q").code == 0
        dvc(root, "repro", "-q")
    return root


@pytest.fixture
def repo(template_repo, tmp_path, monkeypatch) -> Path:
    """A private copy of the repository (hardlinks between the working set, the mirror and the cache kept)."""
    root = tmp_path / "project"
    subprocess.run(["cp", "-a", str(template_repo), str(root)], check=True)
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(root))
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    return root


@pytest.fixture
def comfy():
    with FakeComfyUI() as server:
        yield server


@pytest.fixture(params=["stand-in", pytest.param("real", marks=pytest.mark.real_comfyui)])
def server(request):
    """The stand-in (yielded as itself) or, opt-in, the URL of a real ComfyUI."""
    if request.param == "real":
        if not REAL_COMFYUI:
            pytest.skip("set POSE_FACTORY_REAL_COMFYUI=http://host:port to run against a real ComfyUI")
        yield REAL_COMFYUI.rstrip("/")
        return
    with FakeComfyUI() as stand_in:
        yield stand_in


def url_of(server) -> str:
    return server if isinstance(server, str) else server.url


def outputs_dir(root: Path) -> Path:
    return root / "data" / "working" / "outputs" / BATCH / "pose-depth"


def queue_json(cli, url: str, *args) -> tuple[int, dict]:
    result = cli("comfyui", "queue", "--server", url, "--json", "-q", *args)
    assert result.out, result.err
    return result.code, json.loads(result.out)


def test_check_names_missing_models_bad_options_and_classes(repo, cli):
    write_config(repo, controlnet_graph(), CONTROLNET)
    with FakeComfyUI() as comfy:
        result = cli("comfyui", "check", "--server", comfy.url, "--json")
        assert result.code == 0, result.out
        assert json.loads(result.out)["workflows"][0]["problems"] == []
    graph = controlnet_graph()
    graph["3"]["inputs"]["sampler_name"] = "dpmpp_2m_turbo"
    graph["30"] = {"class_type": "KSamplerAdvancedPlus", "inputs": {}}
    graph["31"] = {"class_type": "V3Upscale", "inputs": {"method": "lanczos4", "image": ["10", 0]}}
    write_config(repo, graph, CONTROLNET)
    with FakeComfyUI(models={"checkpoints": [], "controlnet": ["controlnet-openpose-sdxl-1.0.safetensors"]}) as comfy:
        # A newer node declares its dropdown as ["COMBO", {"options": [...]}]
        comfy.add_node(node_info("V3Upscale", {"image": ["IMAGE"], "method": ["COMBO", {"options": ["lanczos"]}]},
                                 ["IMAGE"], "image"), lambda inputs: ((inputs["image"],), {}))
        result = cli("comfyui", "check", "--server", comfy.url, "--json")
        assert result.code == 12
        workflow = json.loads(result.out)["workflows"][0]
        assert {(m["node"], m["folder"], m["value"]) for m in workflow["missing_models"]} == {
            ("4", "checkpoints", "sd_xl_base_1.0.safetensors"), ("15", "controlnet",
                                                                 "controlnet-depth-sdxl-1.0.safetensors")}
        for named in (("node 4 (CheckpointLoaderSimple)", "'sd_xl_base_1.0.safetensors'", "models/checkpoints/"),
                      ("node 3 (KSampler)", "sampler_name", "'dpmpp_2m_turbo'"),
                      ("node 31 (V3Upscale)", "method", "'lanczos4'"), ("'KSamplerAdvancedPlus'",)):
            assert any(all(part in problem for part in named) for problem in workflow["problems"]), named
        assert len(workflow["problems"]) == 5
        # and what check foresaw is what a run meets
        write_config(repo, controlnet_graph(), CONTROLNET)
        code, report = queue_json(cli, comfy.url, "--limit", "1")
        assert code == 12 and report["failed"][0]["reason"] == "refused"
        assert "ckpt_name" in report["failed"][0]["error"]
        assert "'sd_xl_base_1.0.safetensors'" in report["failed"][0]["error"]


def test_mapping_and_format_errors_name_the_fix(repo, cli):
    write_config(repo, UI_WORKFLOW, SIMPLE)
    result = cli("comfyui", "queue", "--server", "http://127.0.0.1:9")
    assert result.code == 2 and "pose.json" in result.err and "Save (API Format)" in result.err
    write_config(repo, API_WORKFLOW, {**SIMPLE, "inputs": {"99.image": "pose"}})
    result = cli("comfyui", "queue", "--server", "http://127.0.0.1:9")
    assert result.code == 2 and "'99.image'" in result.err
    write_config(repo, API_WORKFLOW, {**SIMPLE, "inputs": {"10.picture": "pose"}})
    result = cli("comfyui", "queue", "--server", "http://127.0.0.1:9")
    assert result.code == 2 and "node 10 (LoadImage)" in result.err and "'picture'" in result.err
    # Nodes that are not ComfyUI's {class_type, inputs}: named before anything is sent, never a traceback.
    for node in ({"class_type": "LoadImage", "inputs": 5}, {"class_type": 7, "inputs": {}}):
        write_config(repo, {**API_WORKFLOW, "10": node}, SIMPLE)
        result = cli("comfyui", "queue", "--server", "http://127.0.0.1:9")
        assert result.code == 2 and "not an API-format workflow" in result.err and "Traceback" not in result.err
    (repo / "config" / "workflows" / "pose.json").write_bytes(b'{"10": {"class_type": "Load\xffImage"}}')
    result = cli("comfyui", "queue", "--server", "http://127.0.0.1:9")
    assert result.code == 2 and "pose.json" in result.err and "not UTF-8 text (byte 27)" in result.err


def test_queue_runs_a_controlnet_graph_records_every_sample_and_resumes(repo, cli, comfy):
    write_config(repo, controlnet_graph(), CONTROLNET)
    code, report = queue_json(cli, comfy.url)
    assert code == 0, report
    assert (report["done"], report["skipped"], report["failed"], report["outputs"]) == (3, 0, [], 3)
    assert comfy.ws_clients, "the run followed its prompts on /ws"
    # uploads went to their own folder, by batch and modality, never to input/pose-factory
    assert not (comfy.input_dir / "pose-factory").exists()
    assert {u["path"].relative_to(comfy.input_dir).parts[:3] for u in comfy.uploads} == {
        ("pose-factory-upload", BATCH, "pose"), ("pose-factory-upload", BATCH, "depth")}
    assert all(u["overwrite"] is None for u in comfy.uploads)
    first = comfy.prompts[0]
    assert first["prompt"]["3"]["inputs"]["seed"] == 0 and first["prompt"]["9"]["inputs"]["filename_prefix"] == \
        f"pf_{BATCH}_000000"
    record = json.loads((outputs_dir(repo) / "000000.json").read_text())
    assert record["prompt_id"] == first["prompt_id"], "the client chose the prompt_id"
    assert record["sample_id"] == "000000" and len(record["workflow_hash"]) == 64
    assert record["batch_version"]["dvc_md5"].endswith(".dir") and len(record["batch_version"]["git_commit"]) == 40
    [output] = record["outputs"]
    assert (output["node"], output["kind"], output["file"]) == ("9", "images", "000000_9_0.png")
    working_pose = repo / "data" / "working" / "current_batch" / "pose" / "000000.png"
    assert np.array_equal(np.asarray(Image.open(outputs_dir(repo) / output["file"])),
                          np.asarray(Image.open(working_pose))), "the pose image reached the pose ControlNet"
    assert not list(outputs_dir(repo).glob("*.prompt.json")), "nothing left in flight"
    code, again = queue_json(cli, comfy.url)
    assert (code, again["done"], again["skipped"]) == (0, 0, 3) and len(comfy.prompts) == 3


def test_queue_round_trip(repo, cli, server):
    """Also against a real ComfyUI: upload, prompt, follow, download."""
    write_config(repo, API_WORKFLOW, SIMPLE)
    code, report = queue_json(cli, url_of(server), "--limit", "2")
    assert code == 0 and (report["done"], report["failed"], report["outputs"]) == (2, [], 4), report
    record = json.loads((outputs_dir(repo) / "000001.json").read_text())
    saved = {o["node"]: outputs_dir(repo) / o["file"] for o in record["outputs"]}
    depth = repo / "data" / "working" / "current_batch" / "depth" / "000001.png"
    assert np.array_equal(np.asarray(Image.open(saved["21"]).convert("RGB")),
                          np.asarray(Image.open(depth).convert("RGB")))


def test_a_partly_invalid_prompt_fails_its_sample_and_is_taken_back(repo, cli, server):
    """ComfyUI answers 200 and runs only the outputs that validated: that sample is not done."""
    if not isinstance(server, str):
        server.exec_delay = 10  # still queued or starting when the client takes it back, however busy the machine
    write_config(repo, API_WORKFLOW, {**SIMPLE, "inputs": {"10.image": "pose"}})  # 11 keeps "placeholder.png"
    code, report = queue_json(cli, url_of(server), "--limit", "2")
    assert code == 12 and report["done"] == 0 and len(report["failed"]) == 2
    failure = report["failed"][0]
    assert failure["reason"] == "node_errors" and "node 11 (LoadImage)" in failure["error"]
    assert "placeholder.png" in failure["error"]
    assert not list(outputs_dir(repo).glob("*.json")), "no record, no marker"
    if isinstance(server, FakeComfyUI):
        assert server.wait_idle()
        for prompt in server.prompts:
            messages = [m[0] for m in server.history.get(prompt["prompt_id"], {"status": {"messages": []}})
                        ["status"]["messages"]]
            assert "execution_success" not in messages, "deleted from the queue or interrupted, never run"
        code, again = queue_json(cli, url_of(server), "--limit", "2")
        assert again["skipped"] == 0 and len(again["failed"]) == 2, "a failed sample is retried"


def test_an_execution_error_is_reported_and_retried_on_the_next_run(repo, cli, comfy):
    write_config(repo, API_WORKFLOW, SIMPLE)
    comfy.fail_execution_for = {"21"}
    result = cli("comfyui", "queue", "--server", comfy.url, "--limit", "1")
    assert result.code == 12 and "000000 (execution_error)" in result.out and "node 21 (SaveImage)" in result.out
    assert "fail_execution_for (21)" in result.out
    assert not (outputs_dir(repo) / "000000.json").exists(), "a failed sample is not recorded as done"
    comfy.fail_execution_for = set()
    code, again = queue_json(cli, comfy.url, "--limit", "1")
    assert (code, again["done"], again["failed"]) == (0, 1, [])


def _when(condition, then, timeout: float = 60) -> threading.Thread:
    """In the background: once `condition()` holds, call `then()`."""
    def run():
        end = time.monotonic() + timeout
        while time.monotonic() < end and not condition():
            time.sleep(0.01)
        then()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_interrupted_in_comfyui_is_reported_as_interrupted(repo, cli, comfy):
    comfy.step_delay = 0.01
    write_config(repo, controlnet_graph(steps=5000), CONTROLNET)
    # someone presses Cancel in ComfyUI's UI while the sampler runs (a global interrupt, no prompt_id)
    clicker = _when(lambda: comfy.executing == "3", lambda: requests.post(comfy.url + "/interrupt", timeout=10))
    code, report = queue_json(cli, comfy.url, "--limit", "1")
    clicker.join()
    assert code == 12 and report["failed"][0]["reason"] == "interrupted"
    assert "at node 3 (KSampler)" in report["failed"][0]["error"]


def test_the_timeout_counts_from_the_start_of_execution_and_interrupts(repo, cli, comfy):
    # Another client's prompt holds the server for longer than our timeout: ours wait in the queue unharmed.
    release = threading.Event()
    comfy.add_node(node_info("Hold", {}, [], "test", output_node=True),
                   lambda inputs: (release.wait(60), ((), {}))[1])
    requests.post(comfy.url + "/prompt", json={"prompt": {"1": {"class_type": "Hold", "inputs": {}}}}, timeout=10)
    # Queued for 4 s behind it with a 3 s timeout; once running, ours take milliseconds (slack for a busy machine).
    write_config(repo, controlnet_graph(steps=2), CONTROLNET, timeout_s=3.0)
    holder = _when(lambda: len(comfy.pending_ids()) >= 2, lambda: (time.sleep(4.0), release.set()))
    code, report = queue_json(cli, comfy.url, "--limit", "2")
    holder.join()
    assert (code, report["done"], report["failed"]) == (0, 2, []), report
    # Our own prompt running past the timeout is interrupted, and reported as timed out.
    comfy.step_delay = 0.01
    write_config(repo, controlnet_graph(steps=5000), CONTROLNET, timeout_s=0.5)
    code, report = queue_json(cli, comfy.url, "--limit", "1")
    assert code == 12 and report["failed"][0]["reason"] == "timeout"
    assert comfy.wait_idle(timeout=10), "the abandoned prompt did not go on running"
    stuck = report["failed"][0]["prompt_id"]
    assert comfy.history[stuck]["status"]["messages"][-1][0] == "execution_interrupted"
    assert {"prompt_id": stuck} in comfy.interrupts


def test_a_run_killed_after_sending_follows_that_prompt_on_the_rerun(repo, comfy):
    comfy.step_delay = 0.01
    write_config(repo, controlnet_graph(steps=150), CONTROLNET)
    args = ["comfyui", "queue", "--server", comfy.url, "--limit", "1", "-q", "--json"]
    killed = run_script(args, cwd=repo, env={"POSE_FACTORY_KILL_AT": "comfyui-queue:after-submit"})
    assert killed.returncode == -9
    assert len(comfy.prompts) == 1 and (outputs_dir(repo) / "000000.prompt.json").is_file()
    rerun = run_script(args, cwd=repo)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert (report["done"], report["followed"]) == (1, 1)
    assert len(comfy.prompts) == 1, "the prompt still queued or running was not sent twice"
    record = json.loads((outputs_dir(repo) / "000000.json").read_text())
    assert record["prompt_id"] == comfy.prompts[0]["prompt_id"]


def test_a_prompt_of_a_killed_run_finishing_while_the_rerun_looks_for_it_is_collected_not_resent(repo, comfy):
    """The earlier prompt finishes between the rerun's questions about it: whatever it asks first, the answer to
    the second one is given after the prompt left the queue for the history."""
    comfy.step_delay = 0.05
    write_config(repo, controlnet_graph(steps=2000), CONTROLNET)
    args = ["comfyui", "queue", "--server", comfy.url, "--limit", "1", "-q", "--json"]
    killed = run_script(args, cwd=repo, env={"POSE_FACTORY_KILL_AT": "comfyui-queue:after-submit"})
    assert killed.returncode == -9 and comfy.running_id() is not None
    questions: list[str] = []

    def finish_before_the_second_question(method: str, path: str) -> None:
        if method == "GET" and (path == "/queue" or path.startswith("/history/")):
            questions.append(path)
            if len(questions) == 2:
                comfy.step_delay = 0.0
                assert comfy.wait_idle(timeout=10)

    comfy.before_answer = finish_before_the_second_question
    rerun = run_script(args, cwd=repo)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert len(questions) >= 2 and comfy.running_id() is None
    assert (report["done"], report["followed"]) == (1, 1), report
    assert len(comfy.prompts) == 1, "the prompt that finished meanwhile was sent a second time"
    record = json.loads((outputs_dir(repo) / "000000.json").read_text())
    assert record["prompt_id"] == comfy.prompts[0]["prompt_id"]


def _state(*folders: Path) -> dict[str, tuple[str, int]]:
    """Every file's sha256 and modification time: a rewrite with the same bytes shows too."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_no_queue_run_changes_a_byte_of_the_raw_mirror_or_the_dvc_cache(repo, cli, tmp_path, template_repo,
                                                                         monkeypatch):
    comfyui_dir = tmp_path / "ComfyUI"
    raw, cache = repo / "data" / "raw", repo / ".dvc" / "cache"
    working_pose = repo / "data" / "working" / "current_batch" / "pose" / "000000.png"
    assert working_pose.stat().st_nlink >= 3, "working set, raw mirror and DVC cache share the file"
    # A second clone whose working set holds other samples under the same names (000000.png is sample 000001).
    other = tmp_path / "other-clone"
    subprocess.run(["cp", "-a", str(template_repo), str(other)], check=True)
    params = other / "params.yaml"
    params.write_text(params.read_text().replace("sample_ids: []", 'sample_ids: ["000001", "000002"]'))
    assert cli("materialize", "--params", params, "--raw", other / "data/raw/pose-factory", "--reports",
               other / "data/reports/validate", "--out", other / "data/working/current_batch", "-q").code == 0
    write_config(repo, API_WORKFLOW, SIMPLE)
    write_config(other, API_WORKFLOW, SIMPLE)
    before = _state(raw, cache)
    assert len(before) > 10
    with FakeComfyUI(base_dir=comfyui_dir) as comfy:  # writes into a real input/ folder, as ComfyUI does
        assert cli("comfyui", "link", comfyui_dir).code == 0
        assert (comfyui_dir / "input" / "pose-factory").is_symlink()
        code, report = queue_json(cli, comfy.url)  # uploads
        assert (code, report["done"]) == (0, 3)
        assert cli("comfyui", "link", comfyui_dir).code == 0, "link does not refuse after an upload run"
        for path in outputs_dir(repo).iterdir():
            path.unlink()
        code, report = queue_json(cli, comfy.url, "--linked")
        assert (code, report["done"]) == (0, 3) and len(comfy.uploads) == 6
        assert cli("comfyui", "link", comfyui_dir, "--name", "poses-b").code == 0
        (comfyui_dir / "input" / "pose-factory").unlink()  # only the link named poses-b is left
        for path in outputs_dir(repo).iterdir():
            path.unlink()
        code, report = queue_json(cli, comfy.url, "--linked", "poses-b")  # the graph reads input/poses-b/...
        assert (code, report["done"]) == (0, 3) and len(comfy.uploads) == 6
        assert cli("comfyui", "link", comfyui_dir).code == 0  # input/pose-factory again, for the last check
        monkeypatch.setenv("POSE_FACTORY_ROOT", str(other))
        code, report = queue_json(cli, comfy.url)  # the other clone uploads to the same ComfyUI
        assert (code, report["done"]) == (0, 2)
        assert _state(raw, cache) == before
        # What the old client did (upload into input/pose-factory with overwrite) rewrites the dataset as root:
        with (other / "data" / "working" / "current_batch" / "pose" / "000000.png").open("rb") as handle:
            requests.post(comfy.url + "/upload/image", files={"image": ("000000.png", handle, "image/png")},
                          data={"subfolder": "pose-factory/pose", "overwrite": "true"}, timeout=10)
        changed = {k for k, v in _state(raw, cache).items() if before[k][0] != v[0]}
        if os.geteuid() == 0:  # as in Docker and on RunPod: read-only files do not stop root
            assert len(changed) >= 2, "the raw mirror and the DVC cache share the rewritten file"
        else:
            assert changed == set()


def test_every_output_kind_is_kept_with_its_own_extension_and_previews_are_skipped(repo, cli, comfy):
    def media(inputs):
        prefix = inputs["filename_prefix"]
        ui = {"images": [comfy.save_file(f"{prefix}_00001_.webp", b"RIFF-webp")],
              "gifs": [comfy.save_file(f"{prefix}_00001.mp4", b"mp4-bytes")],
              "audio": [comfy.save_file(f"{prefix}_00001_.flac", b"fLaC")],
              "3d": [comfy.save_file(f"{prefix}_00001_.glb", b"glTF")],
              "text": [f"caption for {prefix}"], "animated": [True]}
        ui["images"].append(comfy.save_file(f"{prefix}_preview.png", b"png", kind="temp"))
        return (), ui

    comfy.add_node(node_info("SaveMedia", {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]}, [], "test",
                             output_node=True), media)
    graph = {"10": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
             "20": {"class_type": "SaveMedia", "inputs": {"images": ["10", 0], "filename_prefix": "m"}},
             "21": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}}
    write_config(repo, graph, {"inputs": {"10.image": "pose"}, "values": {"20.filename_prefix": "m{name}"}})
    code, report = queue_json(cli, comfy.url, "--limit", "1")
    assert code == 0, report
    record = json.loads((outputs_dir(repo) / "000000.json").read_text())
    assert {(o["kind"], o["file"]) for o in record["outputs"]} == {
        ("images", "000000_20_0.webp"), ("gifs", "000000_20_gifs_0.mp4"), ("audio", "000000_20_audio_0.flac"),
        ("3d", "000000_20_3d_0.glb"), ("text", "000000_20_text_0.txt")}
    assert (outputs_dir(repo) / "000000_20_gifs_0.mp4").read_bytes() == b"mp4-bytes"
    assert (outputs_dir(repo) / "000000_20_text_0.txt").read_text() == "caption for m000000"


def test_one_upload_or_download_error_fails_its_sample_and_the_run_goes_on(repo, cli, comfy):
    write_config(repo, API_WORKFLOW, SIMPLE)
    # a folder where sample 000001's pose upload goes makes ComfyUI fail that upload (HTTP 500)
    (comfy.input_dir / "pose-factory-upload" / BATCH / "pose" / "000001.png").mkdir(parents=True)
    comfy.lose_outputs = {"pf_run-cycle_000002"}  # sample 000002's output is gone before it is downloaded
    code, report = queue_json(cli, comfy.url)
    assert code == 12 and report["done"] == 1
    failed = {f["sample"]: f for f in report["failed"]}
    assert failed["000001"]["reason"] == "upload" and "HTTP 500" in failed["000001"]["error"]
    assert "Server got itself in trouble" in failed["000001"]["error"]
    assert failed["000002"]["reason"] == "download" and "HTTP 404" in failed["000002"]["error"]
    # --fail-fast: stop at the first failure, leave nothing queued
    prompts = len(comfy.prompts)
    code, report = queue_json(cli, comfy.url, "--fail-fast")
    assert code == 12 and report["stopped"] is True and len(report["failed"]) == 1
    assert len(comfy.prompts) == prompts and comfy.pending_ids() == []


def test_polling_without_a_websocket_and_the_queue_depth(repo, cli):
    write_config(repo, API_WORKFLOW, SIMPLE, queue_depth=1)
    with FakeComfyUI(serve_ws=False) as comfy:
        code, report = queue_json(cli, comfy.url)
        assert (code, report["done"]) == (0, 3) and comfy.ws_clients == []
    # With a depth of 1 every prompt is followed to its end before the next one is sent.
    order = [p for m, p in comfy.requests if (m, p) == ("POST", "/prompt") or p.startswith("/history/")]
    sent = [i for i, p in enumerate(order) if p == "/prompt"]
    assert len(sent) == 3
    for before, after in zip(sent, sent[1:]):
        assert any(p.startswith("/history/") for p in order[before + 1:after]), order


def test_an_unreachable_server_has_its_own_exit_code(project, cli):
    from pose_factory.devtools.s3local import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = cli("comfyui", "check", "--server", url)
    assert result.code == 14 and url in result.err and "--server" in result.err


def test_a_damaged_working_set_index_stops_the_queue_with_its_field_before_any_prompt(repo, cli, comfy):
    write_config(repo, API_WORKFLOW, SIMPLE)
    index_file = repo / "data" / "working" / "current_batch" / "index.json"
    index = json.loads(index_file.read_text())
    index_file.unlink()  # (the set's files may be read-only links; the index is replaced, as a hand edit would)
    index_file.write_text(json.dumps({**index, "samples": [{"name": "000000"}]}))
    result = cli("comfyui", "queue", "--server", comfy.url, "--limit", "1")
    assert result.code == 6 and "$.samples[0]" in result.err and "index.json" in result.err, result.err
    assert "dvc repro" in result.err and "Traceback" not in result.err
    assert comfy.prompts == [] and comfy.uploads == []
    dvc(repo, "repro", "-q")  # as the hint says: dvc.lock records the set, so DVC rebuilds it
    assert json.loads(index_file.read_text()) == index
