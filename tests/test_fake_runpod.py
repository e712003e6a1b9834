"""The fake RunPod answers like RunPod's v1 REST API (see tests/fake_runpod.py for the spec it follows)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from fake_runpod import FakeRunPod, container_env

KEY = "test-runpod-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def create_body(**extra) -> dict:
    body = {
        "name": "pose-render-job-1",
        "imageName": "ghcr.io/example/pose-worker:1.0",
        "gpuTypeIds": ["NVIDIA GeForce RTX 4090"],
        "gpuCount": 1,
        "cloudType": "SECURE",
        "containerDiskInGb": 40,
        "volumeInGb": 0,
        "env": {"JOB_ID": "job-0001"},
        "dockerStartCmd": ["python", "-m", "worker"],
        "ports": ["8188/http"],
    }
    body.update(extra)
    return body


@pytest.fixture
def runpod():
    with FakeRunPod(KEY) as server:
        yield server


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_create_get_list_stop_start_delete_round_trip(runpod):
    r = requests.post(f"{runpod.url}/pods", json=create_body(), headers=AUTH, timeout=5)
    assert r.status_code == 201
    pod = r.json()
    pod_id = pod["id"]
    assert len(pod_id) == 14 and pod_id.isalnum()
    assert pod["name"] == "pose-render-job-1"
    assert pod["image"] == "ghcr.io/example/pose-worker:1.0"  # Pod.image, not imageName
    assert pod["desiredStatus"] == "RUNNING"
    assert pod["env"] == {"JOB_ID": "job-0001"}
    assert pod["dockerStartCmd"] == ["python", "-m", "worker"]
    assert pod["containerDiskInGb"] == 40 and pod["volumeInGb"] == 0
    assert pod["gpu"]["id"] == "NVIDIA GeForce RTX 4090" and pod["gpu"]["count"] == 1
    assert isinstance(pod["costPerHr"], float) and pod["costPerHr"] > 0
    assert pod["machineId"] and pod["lastStartedAt"].endswith("Z")
    assert pod["volumeMountPath"] == "/workspace"  # spec default

    r = requests.get(f"{runpod.url}/pods/{pod_id}", headers=AUTH, timeout=5)
    assert r.status_code == 200 and r.json() == pod

    r = requests.get(f"{runpod.url}/pods", headers=AUTH, timeout=5)
    assert r.status_code == 200 and [p["id"] for p in r.json()] == [pod_id]

    r = requests.post(f"{runpod.url}/pods/{pod_id}/stop", headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert requests.get(f"{runpod.url}/pods/{pod_id}", headers=AUTH, timeout=5).json()["desiredStatus"] == "EXITED"
    running = requests.get(f"{runpod.url}/pods", params={"desiredStatus": "RUNNING"}, headers=AUTH, timeout=5)
    assert running.json() == []

    r = requests.post(f"{runpod.url}/pods/{pod_id}/start", headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert requests.get(f"{runpod.url}/pods/{pod_id}", headers=AUTH, timeout=5).json()["desiredStatus"] == "RUNNING"

    r = requests.delete(f"{runpod.url}/pods/{pod_id}", headers=AUTH, timeout=5)
    assert r.status_code == 200
    assert requests.get(f"{runpod.url}/pods/{pod_id}", headers=AUTH, timeout=5).status_code == 404
    assert requests.get(f"{runpod.url}/pods", headers=AUTH, timeout=5).json() == []
    assert runpod.pods == {} and runpod.terminated[pod_id]["desiredStatus"] == "TERMINATED"

    assert [(m, p) for m, p, _ in runpod.calls] == [
        ("POST", "/v1/pods"), ("GET", f"/v1/pods/{pod_id}"), ("GET", "/v1/pods"),
        ("POST", f"/v1/pods/{pod_id}/stop"), ("GET", f"/v1/pods/{pod_id}"),
        ("GET", "/v1/pods?desiredStatus=RUNNING"), ("POST", f"/v1/pods/{pod_id}/start"),
        ("GET", f"/v1/pods/{pod_id}"), ("DELETE", f"/v1/pods/{pod_id}"), ("GET", f"/v1/pods/{pod_id}"),
        ("GET", "/v1/pods"),
    ]
    assert runpod.calls[0][2] == create_body()
    assert KEY not in repr(runpod.calls)  # the Authorization header is never stored


def test_cost_per_hr_scales_with_gpu_count(runpod):
    one = requests.post(f"{runpod.url}/pods", json=create_body(gpuCount=1), headers=AUTH, timeout=5).json()
    two = requests.post(f"{runpod.url}/pods", json=create_body(gpuCount=2), headers=AUTH, timeout=5).json()
    assert two["costPerHr"] == pytest.approx(2 * one["costPerHr"])
    machine = requests.get(f"{runpod.url}/pods/{one['id']}", params={"includeMachine": "true"},
                           headers=AUTH, timeout=5).json()["machine"]
    assert machine["gpuTypeId"] == "NVIDIA GeForce RTX 4090"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY}])
def test_401_without_or_with_wrong_key(runpod, headers):
    for method, path in (("GET", "/pods"), ("POST", "/pods"), ("GET", "/pods/abc"),
                         ("POST", "/pods/abc/stop"), ("DELETE", "/pods/abc")):
        r = requests.request(method, runpod.url + path, json=create_body() if method == "POST" else None,
                             headers=headers, timeout=5)
        assert r.status_code == 401, (method, path)
        assert r.json() == {"error": "Unauthorized.", "status": 401}
    assert runpod.pods == {}
    assert "wrong-key" not in repr(runpod.calls)


@pytest.mark.parametrize("body, reason", [
    ({k: v for k, v in create_body().items() if k != "imageName"}, "imageName"),
    (create_body(gpuCount=0), "gpuCount"),
    (create_body(cloudType="ALL"), "cloudType"),              # GraphQL's ALL is not in the REST enum
    (create_body(gpuTypeIds="NVIDIA GeForce RTX 4090"), "gpuTypeIds"),
    (create_body(gpuTypeIds=["RTX 4090"]), "gpuTypeIds"),
    (create_body(env=[{"key": "A", "value": "b"}]), "env"),   # GraphQL's env list is not the REST shape
    (create_body(gpuTypeId="NVIDIA GeForce RTX 4090"), "gpuTypeId"),  # unknown field (GraphQL name)
    (create_body(name="x" * 192), "name"),
    (["not", "an", "object"], "object"),
])
def test_400_on_invalid_body(runpod, body, reason):
    r = requests.post(f"{runpod.url}/pods", json=body, headers=AUTH, timeout=5)
    assert r.status_code == 400
    err = r.json()
    assert err["status"] == 400 and err["error"].startswith("Invalid input.") and reason in err["error"]
    assert runpod.pods == {}


def test_400_on_body_that_is_not_json(runpod):
    r = requests.post(f"{runpod.url}/pods", data=b"{nope", headers={**AUTH, "Content-Type": "application/json"},
                      timeout=5)
    assert r.status_code == 400 and runpod.pods == {}


def test_404_for_unknown_pod_id(runpod):
    for method, path in (("GET", "/pods/doesnotexist00"), ("POST", "/pods/doesnotexist00/stop"),
                         ("POST", "/pods/doesnotexist00/start"), ("DELETE", "/pods/doesnotexist00")):
        r = requests.request(method, runpod.url + path, headers=AUTH, timeout=5)
        assert r.status_code == 404, (method, path)
        assert r.json() == {"error": "Pod not found.", "status": 404}


def test_rate_limit_next_two_then_success(runpod):
    runpod.rate_limit_next(2)
    codes = [requests.get(f"{runpod.url}/pods", headers=AUTH, timeout=5) for _ in range(3)]
    assert [r.status_code for r in codes] == [429, 429, 200]
    assert codes[0].headers["Retry-After"] == "1" and codes[0].json()["status"] == 429
    assert len(runpod.calls) == 3  # rejected requests are recorded too


def test_on_create_process_is_terminated_by_stop(tmp_path):
    seen: list[dict] = []

    def on_create(pod: dict) -> subprocess.Popen:
        seen.append(pod)
        return subprocess.Popen(SLEEPER, env={**os.environ, **container_env(pod)})

    with FakeRunPod(KEY, on_create=on_create) as runpod:
        pod = requests.post(f"{runpod.url}/pods", json=create_body(), headers=AUTH, timeout=5).json()
        assert [p["id"] for p in seen] == [pod["id"]] and seen[0]["env"] == {"JOB_ID": "job-0001"}
        proc = runpod.processes[pod["id"]]
        assert proc.poll() is None and runpod.running_processes() == [pod["id"]]

        r = requests.post(f"{runpod.url}/pods/{pod['id']}/stop", headers=AUTH, timeout=10)
        assert r.status_code == 200
        assert proc.poll() == -15  # ended by SIGTERM
        assert runpod.running_processes() == []

        # Resuming starts the container again: on_create runs a second time with the same pod.
        requests.post(f"{runpod.url}/pods/{pod['id']}/start", headers=AUTH, timeout=5)
        assert [p["id"] for p in seen] == [pod["id"], pod["id"]]
        assert runpod.running_processes() == [pod["id"]]
        second = runpod.processes[pod["id"]]
        assert requests.delete(f"{runpod.url}/pods/{pod['id']}", headers=AUTH, timeout=10).status_code == 200
        assert second.poll() is not None and runpod.running_processes() == []


def test_child_sees_pod_env_and_runpod_pod_id(tmp_path):
    out = tmp_path / "env.txt"
    script = ("import os, pathlib, time; pathlib.Path(os.environ['OUT']).write_text("
              "os.environ['JOB_ID'] + ' ' + os.environ['RUNPOD_POD_ID']); time.sleep(60)")

    def on_create(pod: dict) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **container_env(pod)})

    with FakeRunPod(KEY, on_create=on_create) as runpod:
        body = create_body(env={"JOB_ID": "job-0042", "OUT": str(out)})
        pod = requests.post(f"{runpod.url}/pods", json=body, headers=AUTH, timeout=5).json()
        assert wait_until(lambda: out.exists() and out.read_text())
        assert out.read_text() == f"job-0042 {pod['id']}"
        proc = runpod.processes[pod["id"]]
    assert proc.poll() is not None  # leaving the context manager ends every pod process


def test_process_ignoring_sigterm_is_killed(tmp_path):
    script = ("import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(60)")

    def on_create(pod: dict) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)

    with FakeRunPod(KEY, on_create=on_create, kill_timeout=0.5) as runpod:
        pod = requests.post(f"{runpod.url}/pods", json=create_body(), headers=AUTH, timeout=5).json()
        proc = runpod.processes[pod["id"]]
        assert proc.stdout.readline().strip() == "ready"
        started = time.monotonic()
        assert requests.post(f"{runpod.url}/pods/{pod['id']}/stop", headers=AUTH, timeout=10).status_code == 200
        assert proc.poll() == -9  # SIGKILL after kill_timeout
        assert time.monotonic() - started >= 0.5
        proc.stdout.close()
        assert runpod.running_processes() == []
