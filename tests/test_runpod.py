"""RunPod jobs end to end against a local stand-in of RunPod's REST API that starts "pods" as local worker
processes against the real S3 server: submit, watch, confirm in the bucket, shut down; and every way a pod
could be left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import TEST_SECRET_KEY, dvc, make_repository, s3_env
from fake_runpod import FakeRunPod
from pose_factory.producer.generate import default_job

REPO = Path(__file__).resolve().parents[1]
API_KEY = "rp-test-key-0123456789"


def start_worker(tmp_path: Path):
    """on_create: run the pod's start command as a local process with the pod's environment."""

    def on_create(pod: dict):
        command = pod.get("dockerStartCmd") or []
        if command[:3] != ["pose-sync", "worker", "run"]:
            return None
        workdir = tmp_path / f"pod-{pod['id']}"
        (workdir / "config").mkdir(parents=True)
        (workdir / ".dvc").mkdir()
        env = {"PATH": os.environ["PATH"], "POSE_FACTORY_ROOT": str(workdir), **pod["env"]}
        return subprocess.Popen([sys.executable, str(REPO / "scripts" / "pose_sync.py"), *command[1:], "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=open(workdir / "worker.log", "w"))

    return on_create


@pytest.fixture
def cloud(project, cli, monkeypatch, tmp_path, s3_server):
    """A pipeline repository on the S3 server, RunPod's stand-in, and the API key in the environment."""
    bucket = f"rp-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    for key, value in s3_env(s3_server.endpoint_url, bucket).items():
        monkeypatch.setenv(key, value)
    repo = make_repository(project, cli, pipeline=True)
    with FakeRunPod(API_KEY, on_create=start_worker(tmp_path)) as runpod:
        (repo.root / "config" / "local.yaml").write_text(json.dumps({"runpod": {
            "api_url": runpod.url, "poll_s": 0.2, "heartbeat_timeout_s": 30, "job_timeout_s": 120}}))
        monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
        yield repo, runpod


def write_job(tmp_path: Path, **changes) -> Path:
    job = default_job("run-cycle", 3, (48, 48), seed=4)
    job.update(changes)
    path = tmp_path / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    return path


def pods_up(runpod: FakeRunPod) -> list[str]:
    return [pid for pid, pod in runpod.pods.items() if pod.get("desiredStatus") == "RUNNING"]


def test_the_whole_loop_submit_render_pull_repro(cloud, cli, tmp_path):
    repo, runpod = cloud
    submitted = cli("job", "submit", write_job(tmp_path))
    assert submitted.code == 0, submitted.err
    job_id = "job-run-cycle-4"
    [pod] = runpod.pods.values()
    assert pod["env"]["CLOUDFLARE_R2_SECRET_ACCESS_KEY"] == TEST_SECRET_KEY  # handed to the pod as a secret...
    assert TEST_SECRET_KEY not in " ".join(pod.get("dockerStartCmd") or [])  # ...never on its command line
    assert TEST_SECRET_KEY not in submitted.out + submitted.err
    assert (pod["volumeInGb"], pod["containerDiskInGb"], pod["dockerStartCmd"]) == (
        20, 40, ["pose-sync", "worker", "run", "job-run-cycle-4"])
    watched = cli("job", "watch", job_id, "--pull", "--commit")
    assert watched.code == 0, watched.err + watched.out
    assert "done" in watched.out and "committed" in watched.out
    assert pods_up(runpod) == [] and runpod.running_processes() == []
    record = json.loads(cli("job", "status", job_id, "--json").out)["jobs"][0]
    assert record["state"] == "done" and record["batch_id"].endswith("_run-cycle") and record["cost_usd"] >= 0
    dvc(repo.root, "repro", "-q")
    index = json.loads((repo.root / "data/working/current_batch/index.json").read_text())
    assert len(index["samples"]) == 3 and index["batches"][0]["batch_id"] == record["batch_id"]


def test_a_crashing_worker_fails_the_job_and_the_pod_is_shut_down(cloud, cli, tmp_path):
    repo, runpod = cloud
    assert cli("job", "submit", write_job(tmp_path, rig={"name": "no-such-rig"})).code == 0
    watched = cli("job", "watch", "job-run-cycle-4")
    assert watched.code == 13 and "the worker failed" in watched.out and "unknown rig 'no-such-rig'" in watched.out
    assert pods_up(runpod) == []
    listing = json.loads(cli("list", "--json").out)["batches"]
    assert all(b["status"] != "complete" for b in listing)


def test_silent_worker_and_timeout_and_ctrl_c_all_shut_the_pod_down(cloud, cli, tmp_path, monkeypatch):
    repo, runpod = cloud
    runpod.on_create = lambda pod: None  # a pod whose worker never starts
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    timed_out = cli("job", "watch", "job-run-cycle-4", "--timeout", "1")
    assert timed_out.code == 13 and "past its timeout" in timed_out.out and pods_up(runpod) == []

    from pose_factory.bucket.backends import open_storage
    from pose_factory.core.settings import load_settings
    from pose_factory.producer.worker import status_key

    storage = open_storage(load_settings(), "r2")
    stale = {"version": 1, "job_id": "job-run-cycle-4", "state": "rendering", "samples_done": 1,
             "samples_total": 3, "batch_id": None, "error": None, "updated_at": "2026-01-01T00:00:00.000Z"}
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    storage.put_bytes(status_key(load_settings(), "job-run-cycle-4"), json.dumps(stale).encode())
    silent = cli("job", "watch", "job-run-cycle-4")
    assert silent.code == 13 and "stopped heartbeating" in silent.out and pods_up(runpod) == []

    storage.delete(status_key(load_settings(), "job-run-cycle-4"))
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    from pose_factory.integrations import runpod as runpod_module

    def interrupt(_seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(runpod_module.time, "sleep", interrupt)
    stopped = cli("job", "watch", "job-run-cycle-4")
    assert stopped.code == 130 and pods_up(runpod) == []


def test_list_and_cancel(cloud, cli, tmp_path):
    repo, runpod = cloud
    runpod.on_create = lambda pod: None
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    listing = json.loads(cli("job", "list", "--json").out)
    assert listing["version"] == 1 and [p["name"] for p in listing["pods"]] == ["pose-factory-job-run-cycle-4"]
    assert "pose-sync job cancel job-run-cycle-4" in cli("job", "list").out
    assert cli("job", "cancel", "job-run-cycle-4").code == 0
    assert pods_up(runpod) == [] and json.loads(cli("job", "list", "--json").out)["pods"] == []


def test_bad_input_never_leaves_a_pod(cloud, cli, tmp_path, monkeypatch):
    repo, runpod = cloud
    bad = write_job(tmp_path, samples=0)
    result = cli("job", "submit", bad)
    assert result.code == 6 and "$.samples" in result.err and runpod.pods == {}
    monkeypatch.delenv("RUNPOD_API_KEY")
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 3 and "RUNPOD_API_KEY is not set" in result.err and runpod.pods == {}
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong-key-123456")
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 3 and "refused the API key" in result.err and "wrong-key-123456" not in result.err
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    runpod.rate_limit_next(2)
    assert cli("job", "submit", write_job(tmp_path)).code == 0  # retried through two 429s
    runpod.on_create = lambda pod: None
    runpod.rate_limit_next(100)
    result = cli("job", "cancel", "job-run-cycle-4")
    assert result.code == 13 and "kept answering 429" in result.err


@pytest.mark.skipif(__import__("shutil").which("blender") is None,
                    reason="Blender is not installed: `make test` installs Debian's blender")
def test_a_blender_job_renders_on_the_pod_and_validates(cloud, cli, tmp_path):
    repo, runpod = cloud
    job = write_job(tmp_path, generator="blender", render={"engine": "CYCLES", "samples": 2,
                                                           "modalities": ["rgb", "pose", "openpose_json", "depth",
                                                                          "normal", "seg"]})
    assert cli("job", "submit", job).code == 0
    watched = cli("job", "watch", "job-run-cycle-4", "--pull")
    assert watched.code == 0, watched.out + watched.err
    record = json.loads(cli("job", "status", "job-run-cycle-4", "--json").out)["jobs"][0]
    batch = repo.root / "data" / "raw" / "pose-factory" / record["batch_id"]
    manifest = json.loads((batch / "manifest.json").read_text())
    assert manifest["software"]["render_engine"] == "CYCLES" and manifest["software"]["blender_version"]
    assert cli("validate", batch).code == 0 and pods_up(runpod) == []
