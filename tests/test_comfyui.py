"""`comfyui check` and `comfyui queue` against a local server that speaks ComfyUI's HTTP API."""

from __future__ import annotations

import json

import pytest

from conftest import dvc, publish_generated
from fake_comfyui import FakeComfyUI

BATCH = "2026-11-01_run-cycle"
API_WORKFLOW = {
    "10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "11": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "20": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "ComfyUI"}},
    "21": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "ComfyUI"}},
}
UI_WORKFLOW = {"last_node_id": 2, "nodes": [{"id": 1, "type": "LoadImage"}], "links": [], "version": 0.4}


def write_config(repo, workflow: dict, **mapping) -> None:
    (repo.root / "config" / "workflows").mkdir(parents=True, exist_ok=True)
    (repo.root / "config" / "workflows" / "pose.json").write_text(json.dumps(workflow))
    entry = {"workflow": "config/workflows/pose.json", "projects": ["run-cycle"],
             "inputs": {"10.image": "pose", "11.image": "depth"},
             "values": {"20.filename_prefix": "pf_{pose_set}_{name}"}}
    entry.update(mapping)
    (repo.root / "config" / "local.yaml").write_text(json.dumps({"workflows": {"pose-depth": entry}}))


@pytest.fixture
def working_set(pipeline_repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH, samples=3, seed=1)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    dvc(pipeline_repo.root, "repro", "-q")
    return pipeline_repo


@pytest.fixture
def comfy():
    with FakeComfyUI() as server:
        yield server


def test_check_reports_server_classes_and_inputs(working_set, cli, comfy):
    write_config(working_set, API_WORKFLOW)
    result = cli("comfyui", "check", "--server", comfy.url, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["version"] == 1 and report["workflows"][0]["ok"] is True
    workflow = dict(API_WORKFLOW, **{"30": {"class_type": "KSamplerAdvancedPlus", "inputs": {}}})
    write_config(working_set, workflow)
    result = cli("comfyui", "check", "--server", comfy.url)
    assert result.code == 12 and "'KSamplerAdvancedPlus' is not installed on the server" in result.out


def test_ui_format_workflow_is_refused_with_how_to_export(working_set, cli, comfy):
    write_config(working_set, UI_WORKFLOW)
    result = cli("comfyui", "queue", "--server", comfy.url)
    assert result.code == 2 and "not an API-format workflow" in result.err and "Save (API Format)" in result.err
    assert comfy.prompts == []


def test_mapping_errors_name_the_node_and_input(working_set, cli, comfy):
    write_config(working_set, API_WORKFLOW, inputs={"99.image": "pose"})
    result = cli("comfyui", "queue", "--server", comfy.url)
    assert result.code == 2 and "'99.image' names no node of the workflow" in result.err
    write_config(working_set, API_WORKFLOW, inputs={"10.picture": "pose"})
    result = cli("comfyui", "queue", "--server", comfy.url)
    assert result.code == 2 and "node 10 (LoadImage) has no input 'picture'" in result.err


def test_queue_runs_every_sample_records_outputs_and_resumes(working_set, cli, comfy):
    write_config(working_set, API_WORKFLOW)
    result = cli("comfyui", "queue", "--server", comfy.url, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["version"] == 1 and (report["done"], report["skipped"], report["failed"]) == (3, 0, [])
    assert report["outputs"] == 6
    assert len(comfy.prompts) == 3 and len(comfy.uploads) == 6
    first = comfy.prompts[0]["prompt"]
    assert first["10"]["inputs"]["image"] == "pose-factory/pose/000000.png"
    assert first["20"]["inputs"]["filename_prefix"] == "pf_run-cycle_000000"
    out = working_set.root / "data" / "working" / "outputs" / BATCH / "pose-depth"
    record = json.loads((out / "000000.json").read_text())
    assert record["version"] == 1 and record["sample_id"] == "000000" and len(record["outputs"]) == 2
    assert record["batch_version"]["dvc_md5"].endswith(".dir") and len(record["batch_version"]["git_commit"]) == 40
    assert len(record["workflow_hash"]) == 64
    saved = out / record["outputs"][0]["file"]
    working_pose = working_set.root / "data" / "working" / "current_batch" / "pose" / "000000.png"
    import numpy as np
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(Image.open(working_pose)))
    again = json.loads(cli("comfyui", "queue", "--server", comfy.url, "--json").out)
    assert (again["done"], again["skipped"]) == (0, 3) and len(comfy.prompts) == 3


def test_node_errors_are_reported_per_sample(working_set, cli, comfy):
    write_config(working_set, API_WORKFLOW)
    # --linked without a linked folder: ComfyUI cannot find the images and says so per node.
    result = cli("comfyui", "queue", "--server", comfy.url, "--linked", "--limit", "2")
    assert result.code == 12
    assert "failed 000000" in result.out and "node 10 (LoadImage)" in result.out
    assert "2 failed" in result.out


def test_unreachable_server_is_a_clear_error(working_set, cli):
    from pose_factory.devtools.s3local import free_port

    write_config(working_set, API_WORKFLOW)
    result = cli("comfyui", "queue", "--server", f"http://127.0.0.1:{free_port()}")
    assert result.code == 4 and "cannot reach ComfyUI" in result.err and "--server" in result.err


def test_a_failed_execution_is_reported_and_retried_on_the_next_run(working_set, cli, comfy):
    write_config(working_set, API_WORKFLOW)
    comfy.fail_execution_for = {"21"}
    result = cli("comfyui", "queue", "--server", comfy.url, "--limit", "1")
    assert result.code == 12 and "failed 000000" in result.out and "fail_execution_for (21)" in result.out
    out = working_set.root / "data" / "working" / "outputs" / BATCH / "pose-depth"
    assert not (out / "000000.json").exists(), "a failed sample is not recorded as done"
    comfy.fail_execution_for = set()
    again = json.loads(cli("comfyui", "queue", "--server", comfy.url, "--limit", "1", "--json").out)
    assert (again["done"], again["failed"]) == (1, [])


def test_queue_depth_bounds_the_prompts_in_flight(working_set, cli, comfy):
    write_config(working_set, API_WORKFLOW)
    config = json.loads((working_set.root / "config" / "local.yaml").read_text())
    config["comfyui"] = {"queue_depth": 1}
    (working_set.root / "config" / "local.yaml").write_text(json.dumps(config))
    assert cli("comfyui", "queue", "--server", comfy.url).code == 0
    # With a depth of 1 every prompt is followed to its end in /history before the next one is submitted.
    order = [path for method, path in comfy.requests if (method, path.split("?")[0]) == ("POST", "/prompt")
             or path.startswith("/history/")]
    submitted = [i for i, path in enumerate(order) if path == "/prompt"]
    assert len(submitted) == 3
    for before, after in zip(submitted, submitted[1:]):
        assert any(path.startswith("/history/") for path in order[before + 1:after]), order
