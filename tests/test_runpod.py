"""RunPod jobs end to end against the stand-in of RunPod's REST API v2 (tests/fake_runpod.py), whose pods run the
worker image's start command (ENTRYPOINT from the Dockerfile + the pod's args) as real processes against the
real S3 server: submit, watch, shards, assembly, and every way a pod could be created twice or left running.

Opt-in at the end: `-m live_runpod` checks the shapes the stand-in assumes against the real RunPod API."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from fake_runpod import FakeRunPod, ImageConfig, image_from_dockerfile, openapi
from helpers import REPO, TEST_ACCESS_KEY, TEST_SECRET_KEY, dvc, make_repository, run_script, s3_env
from pose_factory.producer.generate import default_job

pytestmark = pytest.mark.integration

API_KEY = "rp-test-key-0123456789"
WORKER_IMAGE = "ghcr.io/pose-factory/worker:test"
SLEEPER_IMAGE = "sleeper:1"  # a pod whose container does nothing: for what needs no worker
FAST = {"poll_s": 0.1, "heartbeat_timeout_s": 30, "job_timeout_s": 120, "startup_timeout_s": 30,
        "shutdown_retry_s": 5, "request_timeout_s": 10, "api_backoff_s": 0.01, "create_lookup_s": 0.3,
        "self_shutdown_s": 2}


def settings_file(root: Path, runpod: FakeRunPod, **changes) -> None:
    (root / "config" / "local.yaml").write_text(json.dumps({"runpod": {"api_url": runpod.url, "image": WORKER_IMAGE,
                                                                       **FAST, **changes}}))


@pytest.fixture
def cloud(project, monkeypatch, tmp_path, s3_server):
    """A project on the S3 server, RunPod's stand-in running the worker image, and the API key set."""
    bucket = f"rp-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    for key, value in s3_env(s3_server.endpoint_url, bucket).items():
        monkeypatch.setenv(key, value)
    images = {WORKER_IMAGE: image_from_dockerfile(REPO / "Dockerfile"), SLEEPER_IMAGE: ImageConfig(["sleep"], ["300"])}
    # The image's files are this machine's: `pose-sync` from the virtualenv, Blender from /usr/bin.
    host_path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    with FakeRunPod(API_KEY, images=images, run_dir=tmp_path / "pods", host_path=host_path) as runpod:
        settings_file(project.root, runpod)
        monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
        yield project, runpod


def write_job(tmp_path: Path, samples: int = 3, **changes) -> Path:
    job = default_job("run-cycle", samples, (48, 48), seed=4)
    job.update(changes)
    path = tmp_path / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    return path


def storage_and_settings():
    from pose_factory.bucket.backends import open_storage
    from pose_factory.core.settings import load_settings

    settings = load_settings()
    return open_storage(settings, "r2"), settings


def record(cli, job_id: str = "job-run-cycle-4") -> dict:
    return json.loads(cli("job", "status", job_id, "--json").out)["jobs"][0]


def created(runpod: FakeRunPod) -> list[str]:
    return [body["name"] for method, path, body in runpod.calls if method == "POST" and path.endswith("/pods")
            and isinstance(body, dict)]


# --- the happy paths -------------------------------------------------------------------------------------------

def test_the_whole_loop_with_runpod_secrets_submit_render_pull_repro(cloud, cli, tmp_path):
    project, runpod = cloud
    repo = make_repository(project, cli, pipeline=True)
    runpod.secrets.update(r2_key=TEST_ACCESS_KEY, r2_secret=TEST_SECRET_KEY)
    settings_file(repo.root, runpod, secrets={"CLOUDFLARE_R2_ACCESS_KEY_ID": "r2_key",
                                              "CLOUDFLARE_R2_SECRET_ACCESS_KEY": "r2_secret"})
    submitted = cli("job", "submit", write_job(tmp_path))
    assert submitted.code == 0, submitted.err
    assert "plain environment" not in submitted.err  # every secret went as a RunPod secret
    [pod] = runpod.pods_named()
    assert (pod["image"], pod["gpu"], pod["disk"], pod["mounts"]) == (WORKER_IMAGE, {"id": "NVIDIA GeForce RTX 4090",
                                                                                     "count": 1}, 40, {})
    batch_id = record(cli)["batch_id"]
    assert pod["args"] == f"worker run job-run-cycle-4 --batch-id {batch_id} --shard 0/1"
    assert pod["env"]["CLOUDFLARE_R2_SECRET_ACCESS_KEY"] == "{{ RUNPOD_SECRET_r2_secret }}"
    settings_sent = json.loads(pod["env"]["POSE_FACTORY_WORKER_SETTINGS"])
    assert settings_sent["bucket"] == os.environ["POSE_FACTORY_R2_BUCKET"]
    assert settings_sent["prefixes"]["jobs"] == "jobs/"
    for secret in (TEST_SECRET_KEY, API_KEY):  # not in any request RunPod stores and shows, nor in the output
        assert secret not in json.dumps(runpod.calls) and secret not in submitted.out + submitted.err

    # Nobody watching: the pod runs the image's start command composed as RunPod does, renders, publishes, and
    # terminates itself with its own pod-scoped key.
    assert runpod.wait_for(lambda: runpod.up() == [], timeout=120)
    assert f"--- start: pose-sync worker run job-run-cycle-4 --batch-id {batch_id} --shard 0/1" in runpod.log(pod["id"])
    assert (pod["id"], "POST", f"/pods/{pod['id']}/action") in runpod.pod_calls
    watched = cli("job", "watch", "job-run-cycle-4", "--pull", "--commit")
    assert watched.code == 0, watched.err + watched.out
    assert "done" in watched.out and "committed" in watched.out and "s0 " in watched.err
    assert runpod.up() == [] and runpod.running_processes() == []
    done = record(cli)
    assert done["state"] == "done" and done["batch_id"] == batch_id and done["cost_usd"] >= 0
    assert done["pods_may_be_running"] == []
    dvc(repo.root, "repro", "-q")
    index = json.loads((repo.root / "data/working/current_batch/index.json").read_text())
    assert len(index["samples"]) == 3 and index["batches"][0]["batch_id"] == batch_id


def test_scale_out_retries_a_failed_shard_on_a_new_pod_and_assembles_once(cloud, cli, tmp_path):
    from pose_factory.bucket.batches import fetch_remote_manifest
    from pose_factory.core.settings import load_settings
    from pose_factory.producer.generate import generate_batch

    project, runpod = cloud
    runpod.pod_fate = lambda body: "error" if body["name"].endswith("-s1-a1") else None  # shard 1's first pod breaks
    job_file = write_job(tmp_path, samples=5)
    assert cli("job", "submit", job_file, "--pods", "2").code == 0
    batch_id = record(cli)["batch_id"]
    # The first watch is SIGKILLed right after writing the manifest, before the marker: nothing looks complete.
    killed = run_script(["job", "watch", "job-run-cycle-4"], cwd=project.root,
                        env={"POSE_FACTORY_KILL_AT": "assemble:after-manifest"}, timeout=120)
    assert killed.returncode == -9, killed.stderr
    # Per-shard progress (shard 1's new pod as RunPod answered its create: PROVISIONING) ...
    assert "s0 " in killed.stderr and "s1 PROVISIONING" in killed.stderr
    assert "~$" in killed.stderr and "(pod 2)" in killed.stderr  # ... the total cost, shard 1 on its second pod
    listing = json.loads(cli("list", "--json").out)["batches"]
    assert [(b["batch_id"], b["status"]) for b in listing] == [(batch_id, "uploading")]
    # Shard 0's record is lost after its shard was judged done: it is rendered again, not a traceback.
    from pose_factory.producer.worker import shard_record_key

    storage, settings = storage_and_settings()
    storage.delete(shard_record_key(settings, "job-run-cycle-4", 0))

    watched = cli("job", "watch", "job-run-cycle-4")
    assert watched.code == 0, watched.out + watched.err
    assert "assembled from 2 shards" in watched.out
    names = created(runpod)
    assert sorted(n.rsplit("-", 2)[1:] for n in names) == [["s0", "a1"], ["s0", "a2"], ["s1", "a1"], ["s1", "a2"]]
    assert runpod.up() == [] and runpod.running_processes() == []
    manifest, _, keys = fetch_remote_manifest(storage, settings, batch_id, allow_incomplete=False)
    assert manifest["totals"]["samples"] == 5 and not any("/_" in k and "_complete" not in k for k in keys)
    # The same bytes one pod would have rendered: shards change who renders, not what.
    reference = generate_batch(json.loads(job_file.read_text()), tmp_path / "ref", load_settings(root=tmp_path),
                               batch_id=batch_id, workers=1)
    local = json.loads((reference.batch_dir / "manifest.json").read_text())
    assert manifest["files"] == local["files"] and manifest["samples"] == local["samples"]
    shards = record(cli)["shards"]
    assert [len(s["attempts"]) for s in shards] == [2, 2] and "ERROR" in shards[1]["attempts"][0]["outcome"]
    assert "shard record is missing" in shards[0]["attempts"][0]["outcome"]


# --- never two pods, never a pod left behind --------------------------------------------------------------------

def test_an_ambiguous_create_is_looked_up_by_name_and_never_sent_twice(cloud, cli, tmp_path):
    project, runpod = cloud
    settings_file(project.root, runpod, image=SLEEPER_IMAGE)
    runpod.inject("POST", "/pods", status=500, after=True)  # RunPod creates the pod, then answers 500
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    [pod] = runpod.pods_named()
    assert record(cli)["shards"][0]["attempts"][0]["pod_id"] == pod["id"] and len(created(runpod)) == 1
    assert cli("job", "cancel", "job-run-cycle-4").code == 0 and runpod.up() == []

    runpod.inject("POST", "/pods", drop=True, after=True)  # created, then the connection drops
    runpod.inject("POST", "/pods", status=503)  # ... and a 503 before anything was done: created once, later
    assert cli("job", "submit", write_job(tmp_path, samples=2), "--pods", "2").code == 0
    assert len(runpod.up()) == 2 and len(created(runpod)) == 1 + 3
    names = [p["name"] for p in runpod.pods_named() if p["status"] != "TERMINATED"]
    assert len(set(names)) == 2
    assert cli("job", "cancel", "job-run-cycle-4").code == 0 and runpod.up() == []


def test_api_errors_do_not_kill_a_healthy_job_and_the_shutdown_is_retried_until_it_holds(cloud, cli, tmp_path):
    project, runpod = cloud
    runpod.pod_keys_forbidden = True  # the worker cannot shut its own pod down: the laptop must
    runpod.provision_s = 0.5  # a slow start is not a failure
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    runpod.inject("GET", "/pods", status=429, retry_after=0, count=12)  # more than one request's retries
    runpod.inject("POST", r"/pods/\w+/action", status=429, retry_after=0, count=10)
    watched = cli("job", "watch", "job-run-cycle-4")
    assert watched.code == 0, watched.out + watched.err
    assert "429" in watched.err  # said, and the job went on
    assert runpod.up() == [] and record(cli)["pods_may_be_running"] == []


def test_the_client_waits_as_long_as_retry_after_says_and_a_429_never_doubles_a_create(cloud):
    from pose_factory.integrations.runpod import RunPodClient

    project, runpod = cloud
    client = RunPodClient(runpod.url, API_KEY, attempts=3, backoff_s=0.01, lookup_s=0.1)
    runpod.rate_limit_next(1, retry_after=1)
    started = time.monotonic()
    assert client.list_pods() == [] and time.monotonic() - started >= 1.0  # waited, then asked again
    runpod.inject("POST", "/pods", status=429, retry_after=1)  # refused before any work: sent again
    started = time.monotonic()
    pod = client.create_pod({"name": "pose-factory-x-abcdef-s0-a1", "image": SLEEPER_IMAGE,
                             "gpu": {"id": "NVIDIA GeForce RTX 4090"}})
    assert time.monotonic() - started >= 1.0 and [p["id"] for p in runpod.pods_named()] == [pod["id"]]
    assert client.shut_down(pod["id"], "terminate") == "terminated" and client.shut_down(pod["id"], "stop") == "gone"


def test_a_shutdown_that_never_holds_is_said_loudly_until_cancel_succeeds(cloud, cli, tmp_path):
    project, runpod = cloud
    settings_file(project.root, runpod, image=SLEEPER_IMAGE, shutdown_retry_s=1)
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    runpod.inject("POST", r"/pods/\w+/action", status=500, count=10_000)
    watched = cli("job", "watch", "job-run-cycle-4", "--timeout", "0.3")
    assert watched.code == 16 and "job cancel" in watched.err
    [name] = runpod.up()
    assert name in watched.err
    listing = cli("job", "list")
    assert listing.code == 16 and "MAY STILL BE RUNNING" in listing.out and name in listing.out
    status = cli("job", "status")
    assert status.code == 16 and "MAY STILL BE RUNNING" in status.out
    assert json.loads(cli("job", "list", "--json").out)["pods_may_be_running"] == {"job-run-cycle-4": [name]}
    runpod.clear_faults()
    assert cli("job", "cancel", "job-run-cycle-4").code == 0 and runpod.up() == []
    assert cli("job", "list").code == 0 and cli("job", "status").code == 0


def test_a_pod_that_never_starts_hits_the_startup_deadline_on_every_attempt(cloud, cli, tmp_path):
    project, runpod = cloud
    settings_file(project.root, runpod, image="no-such-image:1", startup_timeout_s=0.3)
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    watched = cli("job", "watch", "job-run-cycle-4")
    assert watched.code == 13 and "did not start its worker" in watched.out and "PROVISIONING" in watched.out
    assert len(created(runpod)) == 2 and runpod.up() == []  # runpod.shard_attempts = 2, both shut down
    assert record(cli)["state"] == "failed"


def test_timeout_silent_worker_and_ctrl_c_all_shut_the_pods_down(cloud, cli, tmp_path, monkeypatch):
    from pose_factory.producer.worker import status_key

    project, runpod = cloud
    settings_file(project.root, runpod, image=SLEEPER_IMAGE)
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    timed_out = cli("job", "watch", "job-run-cycle-4", "--timeout", "0.3")
    assert timed_out.code == 13 and "past its timeout" in timed_out.out and runpod.up() == []

    assert cli("job", "submit", write_job(tmp_path)).code == 0
    pod_id = record(cli)["shards"][0]["attempts"][0]["pod_id"]
    stale = {"version": 2, "job_id": "job-run-cycle-4", "shard": 0, "shards": 1, "pod_id": pod_id,
             "state": "rendering", "samples_done": 1, "samples_total": 3, "updated_at": "2026-01-01T00:00:00.000Z"}
    storage, settings = storage_and_settings()
    storage.put_bytes(status_key(settings, "job-run-cycle-4", 0), json.dumps(stale).encode())
    settings_file(project.root, runpod, image=SLEEPER_IMAGE, shard_attempts=1)
    silent = cli("job", "watch", "job-run-cycle-4")
    assert silent.code == 13 and "stopped heartbeating" in silent.out and runpod.up() == []

    assert cli("job", "submit", write_job(tmp_path)).code == 0
    from pose_factory.integrations import runpod as runpod_module

    real_sleep, watcher = time.sleep, threading.current_thread()

    def interrupt(seconds):
        # runpod_module.time is the time module itself: the stand-in's threads sleep through it too
        if threading.current_thread() is not watcher:
            return real_sleep(seconds)
        raise KeyboardInterrupt

    monkeypatch.setattr(runpod_module.time, "sleep", interrupt)
    stopped = cli("job", "watch", "job-run-cycle-4")
    assert stopped.code == 130 and runpod.up() == [] and record(cli)["reason"] == "interrupted"


def test_refusals_at_submit_leave_no_pod_running(cloud, cli, tmp_path, monkeypatch):
    project, runpod = cloud
    settings_file(project.root, runpod, image=SLEEPER_IMAGE)
    result = cli("job", "submit", write_job(tmp_path, samples=0))
    assert result.code == 6 and "$.samples" in result.err
    with monkeypatch.context() as without_r2:  # the job file is checked before credentials are asked for
        without_r2.delenv("CLOUDFLARE_R2_SECRET_ACCESS_KEY")
        result = cli("job", "submit", write_job(tmp_path, samples=0))
        assert result.code == 6 and "$.samples" in result.err and "CLOUDFLARE_R2" not in result.err
        assert cli("job", "submit", write_job(tmp_path)).code == 3  # a valid job: now the credentials are missing
    assert cli("job", "submit", write_job(tmp_path), "--pods", "4").code == 2  # more pods than samples
    runpod.no_capacity.add("NVIDIA GeForce RTX 4090")
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 13 and "gpu_type" in result.err
    runpod.no_capacity.clear()
    runpod.inject("POST", "/pods", status=403)
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 3 and "POST /pods" in result.err  # the request the key may not make
    runpod.inject("POST", "/pods", status=400, skip=1)  # the second pod of two cannot be placed ...
    result = cli("job", "submit", write_job(tmp_path, samples=2), "--pods", "2")
    assert result.code == 13 and len(runpod.pods_named()) == 1 and runpod.up() == []  # ... so the first is shut down
    assert record(cli)["state"] == "failed"

    monkeypatch.delenv("RUNPOD_API_KEY")
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 3 and "RUNPOD_API_KEY" in result.err
    monkeypatch.setenv("RUNPOD_API_KEY", "wrong-key-123456")
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 3 and "RUNPOD_API_KEY" in result.err and "wrong-key-123456" not in result.err
    monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
    (project.root / "config" / "local.yaml").write_text(json.dumps({"runpod": {"api_url": "https://rest.runpod.io/v1"}}))
    result = cli("job", "submit", write_job(tmp_path))
    assert result.code == 2 and "https://api.runpod.io/v2" in result.err
    assert "runpod.api_url" in result.err and len(runpod.pods_named()) == 1


# --- the worker on a pod that restarts its container ------------------------------------------------------------

def test_restarted_containers_neither_render_again_nor_forget_a_failure(cloud, cli, tmp_path):
    from pose_factory.bucket.batches import batch_prefix
    from pose_factory.producer.worker import status_key

    project, runpod = cloud
    runpod.pod_keys_forbidden = True  # the pods cannot shut themselves down, exit, and RunPod restarts them
    settings_file(project.root, runpod, self_shutdown_s=0.2, shard_attempts=1)
    assert cli("job", "submit", write_job(tmp_path)).code == 0
    bad = default_job("run-cycle", 2, (48, 48), seed=5)
    bad.update(job_id="job-bad-rig", rig={"name": "no-such-rig"})
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert cli("job", "submit", tmp_path / "bad.json").code == 0
    good_pod = record(cli)["shards"][0]["attempts"][0]["pod_id"]
    bad_pod = record(cli, "job-bad-rig")["shards"][0]["attempts"][0]["pod_id"]
    # Each container ran twice: the first run finished (or failed) and exited, RunPod started it again.
    assert runpod.wait_for(lambda: runpod.log(good_pod).count("shard 0/1: done") >= 2
                           and "failed before this container restart" in runpod.log(bad_pod), timeout=90)

    storage, settings = storage_and_settings()
    good = json.loads(storage.read_bytes(status_key(settings, "job-run-cycle-4", 0)))
    assert good["state"] == "done" and good["note"] == "already complete in the bucket: nothing rendered again"
    marker = batch_prefix(settings, good["batch_id"]) + "_complete.json"
    assert storage.head(marker) is not None  # a restart after publish did not remove the marker
    assert storage.head(batch_prefix(settings, good["batch_id"]) + "manifest.json") is not None
    failed = json.loads(storage.read_bytes(status_key(settings, "job-bad-rig", 0)))
    assert failed["state"] == "failed" and "unknown rig 'no-such-rig'" in failed["error"]  # ... and the failure stands

    for job_id in ("job-run-cycle-4", "job-bad-rig"):  # the laptop, second line of defence, shuts them down
        assert cli("job", "cancel", job_id).code == 0
    assert runpod.up() == [] and runpod.running_processes() == []


def test_a_container_that_keeps_crashing_mid_render_is_recorded_as_failed(cloud, monkeypatch, tmp_path):
    from pose_factory.bucket.jobs import job_key
    from pose_factory.core.errors import PoseFactoryError
    from pose_factory.producer.worker import Shard, run_worker, status_key

    storage, settings = storage_and_settings()
    job = default_job("run-cycle", 2, (48, 48), seed=6)
    storage.put_bytes(job_key(settings, job["job_id"]), json.dumps(job).encode())
    monkeypatch.setenv("RUNPOD_POD_ID", "pod-that-crashes")
    crashed = {"version": 2, "job_id": job["job_id"], "shard": 0, "shards": 1, "pod_id": "pod-that-crashes",
               "state": "rendering", "restarts": 3, "updated_at": "2026-11-30T00:00:00.000Z"}
    storage.put_bytes(status_key(settings, job["job_id"], 0), json.dumps(crashed).encode())
    with pytest.raises(PoseFactoryError, match="restarted 4 times"):
        run_worker(storage, settings, job["job_id"], Shard(), batch_id="2026-11-30_run-cycle")
    status = json.loads(storage.read_bytes(status_key(settings, job["job_id"], 0)))
    assert status["state"] == "failed" and status["restarts"] == 4


def test_a_worker_killed_mid_render_leaves_nothing_after_the_containers_next_run(cloud, tmp_path):
    from pose_factory.bucket.batches import COMPLETE_MARKER_NAME, batch_prefix
    from pose_factory.bucket.jobs import job_key
    from pose_factory.core.settings import r2_credentials
    from pose_factory.integrations.runpod import pod_env

    storage, settings = storage_and_settings()
    job = default_job("run-cycle", 2, (48, 48), seed=7)
    storage.put_bytes(job_key(settings, job["job_id"]), json.dumps(job).encode())
    container = tmp_path / "container"
    (container / "tmp").mkdir(parents=True)  # the container's temporary folder, which a restart keeps
    env = {**pod_env(settings, r2_credentials(required=True))[0], "HOME": str(container),
           "TMPDIR": str(container / "tmp"), "POSE_FACTORY_ROOT": ""}
    args = ["worker", "run", job["job_id"], "--batch-id", "2026-11-30_run-cycle"]
    killed = run_script(args, cwd=container, env={**env, "POSE_FACTORY_KILL_AT": "generate:sample"})
    assert killed.returncode == -9, killed.stderr
    [left] = os.listdir(container / "tmp")
    assert left.startswith(".pose-factory-worker.") and left.endswith(".scratch")
    again = run_script(args, cwd=container, env=env)
    assert again.returncode == 0, again.stderr
    assert os.listdir(container / "tmp") == []  # the killed run's scratch too
    assert storage.head(batch_prefix(settings, "2026-11-30_run-cycle") + COMPLETE_MARKER_NAME) is not None


def test_the_worker_reads_no_project_and_needs_its_request(tmp_path):
    from pose_factory.producer.worker import Shard

    empty = tmp_path / "container"
    empty.mkdir()
    bare = {"PATH": os.environ["PATH"], "HOME": str(empty)}
    result = run_script(["worker", "run", "job-1"], cwd=empty, env={**bare, "POSE_FACTORY_ROOT": ""})
    assert result.returncode == 2 and "POSE_FACTORY_WORKER_SETTINGS is not set" in result.stderr
    assert sorted(os.listdir(empty)) == []  # nothing made for it, nothing made by it
    assert [list(Shard(k, 3).samples(10)) for k in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    bad_shard = run_script(["worker", "run", "job-1", "--shard", "3/3"], cwd=empty, env=bare)
    assert bad_shard.returncode == 2 and "--shard" in bad_shard.stderr


def test_the_worker_image_files(tmp_path):
    from pose_factory.cli import build_parser

    dockerfile = (REPO / "Dockerfile").read_text()
    image = image_from_dockerfile(REPO / "Dockerfile")
    command = image.command("worker run job-1 --batch-id 2026-11-30_run-cycle --shard 1/2")
    args = build_parser().parse_args(command[1:])
    assert (args.job_id, args.batch_id, args.shard) == ("job-1", "2026-11-30_run-cycle", "1/2")
    assert "apt-get install" in dockerfile and "blender" in dockerfile and "pip install --no-deps -e ." in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    for secret_or_data in (".env", "config/local.yaml", "data", "scripts/.venv", ".git"):
        assert secret_or_data in ignored


@pytest.mark.skipif(__import__("shutil").which("blender") is None,
                    reason="Blender is not installed: `make test` installs Debian's blender")
def test_a_blender_job_renders_on_the_pod_and_validates(cloud, cli, tmp_path):
    from pose_factory.bucket.batches import complete_manifest

    project, runpod = cloud
    job = write_job(tmp_path, samples=2, generator="blender",
                    render={"engine": "CYCLES", "samples": 2, "modalities": ["rgb", "pose", "openpose_json", "depth",
                                                                             "normal", "seg"]})
    assert cli("job", "submit", job).code == 0
    watched = cli("job", "watch", "job-run-cycle-4")
    assert watched.code == 0, watched.out + watched.err
    storage, settings = storage_and_settings()
    manifest = complete_manifest(storage, settings, record(cli)["batch_id"])
    assert manifest["software"]["render_engine"] == "CYCLES" and manifest["software"]["blender_version"]
    assert manifest["totals"]["samples"] == 2 and runpod.up() == []


# --- opt-in: the real RunPod API ---------------------------------------------------------------------------------

LIVE_IMAGE = "busybox:1.36"  # tiny, no ENTRYPOINT, CMD ["sh"]: the pod's args replace CMD
LIVE_PYTHON_IMAGE = "python:3.12-slim"


@pytest.fixture
def live(request):
    """A client of the real API, only with `-m live_runpod` and RUNPOD_API_KEY; every pod it makes is terminated."""
    if not re.search(r"(?<!not )\blive_runpod\b", request.config.getoption("-m") or ""):
        pytest.skip("talks to the real RunPod API: run with -m live_runpod")
    key = os.environ.get("RUNPOD_API_KEY", "").strip()
    if not key:
        pytest.skip("RUNPOD_API_KEY is not set")
    from pose_factory.integrations.runpod import API_V2, RunPodClient

    client = RunPodClient(os.environ.get("LIVE_RUNPOD_API_URL", API_V2), key, lookup_s=20)
    names: list[str] = []
    yield client, names
    for name in names:  # whatever happened above: nothing left billing
        for pod in client.pods_named(name):
            client.shut_down(pod["id"], "terminate")
        assert all(client.is_down(p["id"]) for p in client.pods_named(name)), f"pod {name} may still be running"


def _wait_status(client, pod_id: str, wanted: set[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        pod = client.get_pod(pod_id)
        if pod is None or pod["status"] in wanted or time.monotonic() > deadline:
            return pod
        time.sleep(5)


def _cpu_pod(name: str, image: str, args: str, env: dict | None = None) -> dict:
    flavor = os.environ.get("LIVE_RUNPOD_CPU_FLAVOR", "cpu3c")
    return {"name": name, "image": image, "args": args, "env": env or {}, "disk": 5,
            "cpu": {"id": flavor, "vcpuCount": 2}}


@pytest.mark.live_runpod
def test_live_the_pod_shapes_the_stand_in_assumes(live):
    """A CPU pod running `sleep` (cents): create, list, get, stop, terminate, 404 and 422, each answer checked
    against the same OpenAPI schemas the stand-in answers with (undeclared fields are reported, not failed)."""
    import requests

    client, names = live
    spec = openapi()
    name = f"pose-factory-live-{uuid.uuid4().hex[:6]}-s0-a1"
    names.append(name)
    pod = client.create_pod(_cpu_pod(name, LIVE_IMAGE, "sleep 600"))
    assert spec.validator("Pod").is_valid(pod), list(spec.validator("Pod").iter_errors(pod))[:3]
    assert pod["status"] in ("PROVISIONING", "STARTING", "RUNNING") and pod["args"] == "sleep 600"
    assert [p["id"] for p in client.pods_named(name)] == [pod["id"]]
    listed = client.session.get(client.base + "/pods", timeout=30).json()
    assert spec.validator("ListPodsResponse").is_valid(listed)
    running = _wait_status(client, pod["id"], {"RUNNING", "ERROR"}, 600)
    assert running["status"] == "RUNNING" and set(running["actions"]) == {"stop", "restart", "terminate"}
    undeclared = spec.strict_problems("Pod", running)
    print("fields RunPod sends that the document does not declare:", undeclared)
    stopped = client.pod_action(pod["id"], "stop")
    assert spec.validator("Pod").is_valid(stopped) and stopped["status"] in ("EXITED", "RUNNING")
    assert _wait_status(client, pod["id"], {"EXITED"}, 300)["status"] == "EXITED"
    assert client.shut_down(pod["id"], "terminate") == "terminated"
    missing = client.session.get(f"{client.base}/pods/{pod['id']}", timeout=30)
    assert missing.status_code == 404 and missing.headers["Content-Type"].startswith("application/problem+json")
    assert spec.validator("ErrorResponse").is_valid(missing.json())
    refused = requests.post(client.base + "/pods", json={**_cpu_pod(name + "x", LIVE_IMAGE, "sleep 1"), "bogus": 1},
                            headers=client.create_session.headers, timeout=30)
    if refused.status_code == 201:  # it must not be: terminate at once, then fail
        names.append(name + "x")
    assert refused.status_code == 422 and any("bogus" in e for e in refused.json().get("errors", []))


@pytest.mark.live_runpod
def test_live_a_pod_stops_itself_with_its_pod_scoped_key(live):
    """What the worker relies on: RUNPOD_POD_ID and a pod-scoped RUNPOD_API_KEY in the container, accepted by
    `POST /v2/pods/{id}/action`; and `args` replacing the image's CMD. The program comes in an env value and the
    args have no spaces or quotes, so however RunPod splits them the container runs the same command."""
    client, names = live
    name = f"pose-factory-live-{uuid.uuid4().hex[:6]}-s0-a1"
    names.append(name)
    program = ("import json, os, time, urllib.request\ntime.sleep(20)\nrequest = urllib.request.Request("
               "f\"{os.environ['API']}/pods/{os.environ['RUNPOD_POD_ID']}/action\", data=b'{\"action\": \"stop\"}', "
               "method='POST', headers={'Authorization': 'Bearer ' + os.environ['RUNPOD_API_KEY'], "
               "'Content-Type': 'application/json'})\nprint(urllib.request.urlopen(request).status)\ntime.sleep(600)")
    args = "python -c exec(__import__(chr(111)+chr(115)).environ[chr(67)])"  # exec(os.environ['C'])
    pod = client.create_pod(_cpu_pod(name, LIVE_PYTHON_IMAGE, args, {"C": program, "API": client.base}))
    final = _wait_status(client, pod["id"], {"EXITED", "ERROR"}, 900)
    assert final is not None and final["status"] == "EXITED", f"the pod did not stop itself: {final}"


# --- local job records ------------------------------------------------------------------------------------------
GOOD_RECORD = {"version": 2, "job_id": "job-good", "run": "a1b2c3", "batch_id": "2026-11-30_run-cycle", "samples": 4,
               "pods": 1, "state": "done", "reason": None, "submitted_at": "2026-11-30T10:00:00.000000Z",
               "finished_at": "2026-11-30T10:05:00.000000Z", "gpu_type": "NVIDIA GeForce RTX 4090",
               "shutdown": "terminate", "plain_secrets": [], "assembled": True, "pods_may_be_running": [],
               "cost_usd": 0.06, "shards": [{"index": 0, "first": 0, "count": 4, "state": "done", "attempts": [
                   {"attempt": 1, "pod_name": "pose-factory-job-good-a1b2c3-s0-a1", "pod_id": "p1",
                    "created_at": "2026-11-30T10:00:01.000000Z", "cost_per_hr": 0.69,
                    "ended_at": "2026-11-30T10:05:00.000000Z", "down": True, "pod_state": "TERMINATED",
                    "outcome": "done"}]}]}
# A record of the first version (one pod, before jobs had shards), as `job submit` wrote it then.
V1_RECORD = {"version": 1, "job_id": "job-old", "pod_id": "p0", "submitted_at": "2026-11-28T09:00:00.000000Z",
             "state": "done", "batch_id": "2026-11-28_walk", "gpu_type": "NVIDIA GeForce RTX 4090", "cost_per_hr": 0.69,
             "finished_at": "2026-11-28T09:10:00.000000Z", "reason": "done", "pod_shutdown": True}


def test_a_damaged_job_record_is_named_with_its_field_and_hides_no_other_job(project, cli):
    jobs = project.root / "data" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "job-good.json").write_text(json.dumps(GOOD_RECORD))
    (jobs / "job-old.json").write_text(json.dumps(V1_RECORD))
    damaged = {"job-cut": json.dumps(GOOD_RECORD)[:120],  # cut short
               "job-list": "[1, 2]",
               "job-pods": json.dumps({**GOOD_RECORD, "job_id": "job-pods", "pods": "two"}),
               "job-moved": json.dumps(GOOD_RECORD),  # another job's record under this name
               "job-attempt": json.dumps({**GOOD_RECORD, "job_id": "job-attempt", "shards": [
                   {**GOOD_RECORD["shards"][0], "attempts": [{"attempt": 1}]}]})}
    for name, text in damaged.items():
        (jobs / f"{name}.json").write_text(text)
    fields = {"job-cut": "line 1, column", "job-list": "$: expected an object", "job-pods": "$.pods",
              "job-moved": "$.job_id: expected 'job-moved'", "job-attempt": "$.shards[0].attempts[0]"}

    listed = cli("job", "status")
    assert listed.code == 0 and "Traceback" not in listed.err, listed.err
    assert "job-good" in listed.out and "job-old" in listed.out
    for name, field in fields.items():
        line = next(line for line in listed.out.splitlines() if f"{name}.json" in line)
        assert line.startswith("  unreadable record") and field in line and "only pose-sync writes" in line, line
    report = json.loads(cli("job", "status", "--json").out)
    assert sorted(r["job_id"] for r in report["jobs"]) == ["job-good", "job-old"]
    old = next(r for r in report["jobs"] if r["job_id"] == "job-old")
    assert old["version"] == 2 and len(old["shards"]) == 1 and old["shards"][0]["attempts"][0]["pod_id"] == "p0"
    assert sorted(Path(u["file"]).stem for u in report["unreadable"]) == sorted(damaged)
    for name, field in fields.items():
        one = cli("job", "status", name)
        assert one.code == 6 and field in one.err and f"{name}.json" in one.err and "Traceback" not in one.err
        assert "hint: only pose-sync writes" in one.err
    assert cli("job", "status", "job-good").code == 0


def test_a_version_1_record_is_watched_and_cancelled_with_the_settings_shutdown(cloud, cli):
    project, _ = cloud
    jobs = project.root / "data" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "job-old.json").write_text(json.dumps(V1_RECORD))
    cancelled = cli("job", "cancel", "job-old")
    assert cancelled.code == 0 and "Traceback" not in cancelled.err, cancelled.err
    assert "job job-old: done; 1 pod(s) confirmed down (terminate)" in cancelled.out, cancelled.out
    watched = cli("job", "watch", "job-old")
    assert "Traceback" not in watched.err and "(terminate)" in watched.out, watched.err + watched.out
    assert record(cli, "job-old")["version"] == 2  # saved as it was read: upgraded
