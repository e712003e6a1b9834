"""The RunPod stand-in answers like RunPod's REST API v2 (tests/fake_runpod.py, built from the OpenAPI document
in tests/data/), and its pods behave like pods: composed start command, restarts, secrets, pod-scoped key."""

from __future__ import annotations

import json
import sys
import time

import pytest
import requests

from fake_runpod import SPEC_PATH, FakeRunPod, ImageConfig, image_from_dockerfile, openapi
from helpers import REPO

KEY = "test-runpod-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GPU = "NVIDIA GeForce RTX 4090"
# A container that writes what it was started with (argv, cwd, environment) and then waits to be stopped.
PROBE = ("import json, os, sys, time; open('seen.tmp', 'w').write(json.dumps({'argv': sys.argv[1:], "
         "'cwd': os.getcwd(), 'env': dict(os.environ)})); os.replace('seen.tmp', 'seen.json'); time.sleep(120)")
IMAGES = {"probe:1": ImageConfig([sys.executable, "-c", PROBE], ["default-cmd"], {"FROM_IMAGE": "yes"}),
          "sleeper:1": ImageConfig(["sleep"], ["120"]),
          "quitter:1": ImageConfig(["true"])}


def body(**extra) -> dict:
    return {"name": "pose-factory-job-1-abcdef-s0-a1", "image": "sleeper:1", "gpu": {"id": GPU, "count": 1},
            "disk": 40, "env": {"JOB_ID": "job-1"}, **extra}


@pytest.fixture
def runpod(tmp_path):
    with FakeRunPod(KEY, images=IMAGES, run_dir=tmp_path / "pods") as server:
        yield server


def call(runpod: FakeRunPod, method: str, path: str, payload=None, key: str = KEY) -> requests.Response:
    return requests.request(method, runpod.url + path, json=payload, timeout=10,
                            headers={"Authorization": f"Bearer {key}"})


def status_of(runpod: FakeRunPod, pod_id: str) -> str:
    return call(runpod, "GET", f"/pods/{pod_id}").json()["status"]


def test_the_stand_in_reads_runpods_own_openapi_document():
    spec = openapi()
    assert spec.document["info"]["version"] == "2.0.0" and SPEC_PATH.name == "runpod-rest-v2-openapi.json"
    assert spec.enum("PodStatus") == ["PROVISIONING", "STARTING", "RUNNING", "EXITED", "ERROR", "TERMINATED"]
    assert spec.enum("PodAction") == ["start", "stop", "restart", "terminate"]
    # The document's own examples pass the validators the stand-in uses on its answers.
    example = spec.document["paths"]["/v2/pods/{id}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert spec.strict_problems("Pod", example["examples"]["pod"]["value"]) == []
    assert spec.strict_problems("Pod", {**example["examples"]["pod"]["value"], "desiredStatus": "RUNNING"})


@pytest.mark.integration  # its pod runs a real process
def test_lifecycle_create_provision_run_stop_start_terminate(runpod):
    created = call(runpod, "POST", "/pods", body())
    assert created.status_code == 201
    pod = created.json()
    assert pod["status"] == "PROVISIONING" and pod["actions"] == ["stop", "terminate"] and pod["runtime"] is None
    assert pod["gpu"] == {"id": GPU, "count": 1} and pod["disk"] == 40 and pod["cost"] > 0 and pod["args"] == ""
    assert runpod.wait_for(lambda: status_of(runpod, pod["id"]) == "RUNNING")
    running = call(runpod, "GET", f"/pods/{pod['id']}").json()
    assert running["actions"] == ["stop", "restart", "terminate"] and running["startedAt"].endswith("Z")
    listed = call(runpod, "GET", "/pods").json()
    assert list(listed) == ["pods"] and [p["id"] for p in listed["pods"]] == [pod["id"]]

    stopped = call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "stop"})
    assert stopped.status_code == 200 and stopped.json()["status"] == "EXITED" and stopped.json()["cost"] == 0.0
    assert runpod.running_processes() == []
    again = call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "stop"})
    assert again.status_code == 409 and again.headers["Content-Type"] == "application/problem+json"
    assert again.json()["title"] == "Conflict" and again.json()["status"] == 409

    assert call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "start"}).json()["status"] == "PROVISIONING"
    assert runpod.wait_for(lambda: runpod.running_processes() == [pod["id"]])
    terminated = call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "terminate"})
    assert terminated.status_code == 204 and terminated.content == b""
    gone = call(runpod, "GET", f"/pods/{pod['id']}")
    assert gone.status_code == 404 and gone.json() == {"title": "Not Found", "status": 404, "detail": "pod not found"}
    assert call(runpod, "GET", "/pods").json() == {"pods": []} and runpod.running_processes() == []
    assert call(runpod, "DELETE", f"/pods/{pod['id']}").status_code == 404
    assert KEY not in repr(runpod.calls)  # the Authorization header is never stored


@pytest.mark.parametrize("payload, status, fragment", [
    # the v1 shape of the same request: every v1 field is an unknown field to v2, named
    ({"name": "p", "imageName": "sleeper:1", "gpuTypeIds": [GPU], "gpuCount": 1, "containerDiskInGb": 40,
      "dockerStartCmd": ["x"]}, 422, "additional properties 'containerDiskInGb', 'dockerStartCmd', 'gpuCount', "
                                      "'gpuTypeIds', 'imageName' not allowed"),
    (body(gpu={"id": GPU, "cnt": 1}), 422, "$.gpu: additional properties 'cnt' not allowed"),
    ({k: v for k, v in body().items() if k != "image"}, 422, "'image' is a required property"),
    (body(args=["worker", "run"]), 422, "$.args: ['worker', 'run'] is not of type 'string'"),
    (body(env={"A": 1}), 422, "$.env.A: 1 is not of type 'string'"),
    (body(disk=0), 422, "$.disk: 0 is less than the minimum of 1"),
    (body(cpu={"id": "cpu3c", "vcpuCount": 2}), 400, "exactly one of gpu or cpu"),
    ({k: v for k, v in body().items() if k != "gpu"}, 400, "exactly one of gpu or cpu"),
    (body(gpu={"id": "RTX 4090"}), 400, "unknown GPU type"),
])
def test_invalid_bodies_are_refused_like_v2(runpod, payload, status, fragment):
    answer = call(runpod, "POST", "/pods", payload)
    problem = answer.json()
    assert answer.status_code == status and answer.headers["Content-Type"] == "application/problem+json"
    assert fragment in problem["detail"] + " ".join(problem.get("errors", []))
    assert runpod.pods == {}


@pytest.mark.integration  # its pod may start its process (sleeper:1) before the test ends
def test_no_capacity_and_action_body_validation(runpod):
    runpod.no_capacity.add(GPU)
    answer = call(runpod, "POST", "/pods", body())
    assert answer.status_code == 400 and "no instances available" in answer.json()["detail"]
    runpod.no_capacity.clear()
    pod = call(runpod, "POST", "/pods", body()).json()
    bad = call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "reset"})
    assert bad.status_code == 422 and "$.action" in bad.json()["errors"][0]


@pytest.mark.integration  # its pod may start its process (sleeper:1) before the test ends
def test_keys_401_and_the_pod_scoped_key_reaches_only_its_pod(runpod):
    assert requests.get(runpod.url + "/pods", timeout=5).json()["detail"] == "missing bearer token"
    assert call(runpod, "GET", "/pods", key="wrong").status_code == 401
    mine = call(runpod, "POST", "/pods", body()).json()
    other = call(runpod, "POST", "/pods", body(name="other")).json()
    pod_key = runpod.pod_key(mine["id"])
    assert call(runpod, "GET", f"/pods/{mine['id']}", key=pod_key).status_code == 200
    for method, path, payload in (("GET", "/pods", None), ("POST", "/pods", body()),
                                  ("GET", f"/pods/{other['id']}", None),
                                  ("POST", f"/pods/{other['id']}/action", {"action": "stop"})):
        answer = call(runpod, method, path, payload, key=pod_key)
        assert answer.status_code == 403 and answer.json()["detail"] == "access denied", (method, path)
    assert call(runpod, "POST", f"/pods/{mine['id']}/action", {"action": "terminate"}, key=pod_key).status_code == 204
    assert [p["name"] for p in call(runpod, "GET", "/pods").json()["pods"]] == ["other"]
    assert runpod.pod_calls[-1] == (mine["id"], "POST", f"/pods/{mine['id']}/action")


@pytest.mark.integration  # its pod may start its process (sleeper:1) before the test ends
def test_faults_429_with_retry_after_create_then_500_and_dropped_connections(runpod):
    runpod.rate_limit_next(2, retry_after=3)
    answers = [call(runpod, "GET", "/pods") for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 200] and answers[0].headers["Retry-After"] == "3"
    assert answers[0].json()["title"] == "Too Many Requests"

    runpod.inject("POST", "/pods", status=500, after=True)
    assert call(runpod, "POST", "/pods", body()).status_code == 500
    assert len(call(runpod, "GET", "/pods").json()["pods"]) == 1  # created, although the answer said otherwise

    runpod.inject("POST", "/pods", drop=True, after=True)
    with pytest.raises(requests.ConnectionError):
        call(runpod, "POST", "/pods", body(name="second"))
    assert sorted(p["name"] for p in runpod.pods_named()) == ["pose-factory-job-1-abcdef-s0-a1", "second"]
    runpod.inject("GET", r"/pods/\w+", status=503, skip=1)
    pod_id = runpod.pods_named("second")[0]["id"]
    assert [call(runpod, "GET", f"/pods/{pod_id}").status_code for _ in range(3)] == [200, 503, 200]


@pytest.mark.integration  # its pod runs a real process
def test_the_container_runs_entrypoint_plus_args_with_only_the_pods_environment(runpod, monkeypatch):
    monkeypatch.setenv("POSE_FACTORY_ROOT", "/somewhere/on/the/laptop")  # must not leak into the container
    runpod.secrets["r2_secret"] = "s3cr3t-value-0123"
    env = {"JOB_ID": "job-1", "SECRET": "{{ RUNPOD_SECRET_r2_secret }}"}
    pod = call(runpod, "POST", "/pods", body(image="probe:1", args="worker run job-1 --shard 0/2", env=env)).json()
    seen_file = runpod.run_dir / f"pod-{pod['id']}" / "seen.json"
    assert runpod.wait_for(seen_file.exists)
    seen = json.loads(seen_file.read_text())
    assert seen["argv"] == ["worker", "run", "job-1", "--shard", "0/2"]  # ENTRYPOINT + args, CMD replaced
    assert seen["cwd"] == str(runpod.run_dir / f"pod-{pod['id']}")
    assert seen["env"]["SECRET"] == "s3cr3t-value-0123" and seen["env"]["FROM_IMAGE"] == "yes"
    assert seen["env"]["RUNPOD_POD_ID"] == pod["id"] and seen["env"]["RUNPOD_API_KEY"] == runpod.pod_key(pod["id"])
    assert "POSE_FACTORY_ROOT" not in seen["env"] and KEY not in json.dumps(seen["env"])
    shown = json.dumps(call(runpod, "GET", "/pods").json())
    assert "s3cr3t-value-0123" not in shown and "{{ RUNPOD_SECRET_r2_secret }}" in shown

    no_args = call(runpod, "POST", "/pods", body(name="b", image="probe:1")).json()
    no_args_file = runpod.run_dir / f"pod-{no_args['id']}" / "seen.json"
    assert runpod.wait_for(no_args_file.exists)
    assert json.loads(no_args_file.read_text())["argv"] == ["default-cmd"]  # no args: the image's CMD


@pytest.mark.integration  # its pod runs a real process
def test_a_container_whose_command_exits_is_restarted_until_the_pod_stops(runpod):
    pod = call(runpod, "POST", "/pods", body(image="quitter:1")).json()
    assert runpod.wait_for(lambda: runpod.restarts(pod["id"]) >= 2)
    assert status_of(runpod, pod["id"]) == "RUNNING"
    call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "stop"})
    count = runpod.restarts(pod["id"])
    time.sleep(0.3)  # several supervisor ticks: a stopped pod must not start its container again
    assert runpod.restarts(pod["id"]) == count and status_of(runpod, pod["id"]) == "EXITED"
    assert runpod.log(pod["id"]).count("--- start: true") == count + 1


@pytest.mark.integration  # its pod may start its process (sleeper:1) before the test ends
def test_pods_that_never_start_or_break(runpod):
    stuck = call(runpod, "POST", "/pods", body(image="no-such-image:1")).json()
    runpod.pod_fate = lambda request: "error" if request["name"] == "broken" else None
    broken = call(runpod, "POST", "/pods", body(name="broken")).json()
    missing_secret = call(runpod, "POST", "/pods", body(name="secretless", env={"A": "{{ RUNPOD_SECRET_nope }}"}))
    assert runpod.wait_for(lambda: status_of(runpod, broken["id"]) == "ERROR")
    assert runpod.wait_for(lambda: status_of(runpod, missing_secret.json()["id"]) == "ERROR")
    assert "secret(s) not found: nope" in runpod.log(missing_secret.json()["id"])
    assert status_of(runpod, stuck["id"]) == "PROVISIONING"
    assert call(runpod, "GET", f"/pods/{broken['id']}").json()["actions"] == ["start", "terminate"]
    assert runpod.running_processes() == []


@pytest.mark.integration  # its pod runs a real process
def test_a_container_ignoring_sigterm_is_killed(tmp_path):
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up' * 2, flush=True); " \
             "time.sleep(60)"
    images = {"stubborn:1": ImageConfig([sys.executable, "-c", script])}
    with FakeRunPod(KEY, images=images, run_dir=tmp_path, kill_timeout=0.5) as runpod:
        pod = call(runpod, "POST", "/pods", body(image="stubborn:1")).json()
        assert runpod.wait_for(lambda: "upup" in runpod.log(pod["id"]) and pod["id"] in runpod.processes)
        proc = runpod.processes[pod["id"]]
        assert call(runpod, "POST", f"/pods/{pod['id']}/action", {"action": "stop"}).status_code == 200
        assert proc.poll() == -9 and runpod.running_processes() == []  # SIGKILL after kill_timeout


def test_the_worker_image_is_read_from_the_repositorys_dockerfile():
    image = image_from_dockerfile(REPO / "Dockerfile")
    assert image.entrypoint == ["pose-sync"] and image.cmd == ["worker", "run"]
    assert image.command("worker run job-1 --batch-id 2026-11-30_x --shard 1/4") == [
        "pose-sync", "worker", "run", "job-1", "--batch-id", "2026-11-30_x", "--shard", "1/4"]
    assert image.env["AWS_REQUEST_CHECKSUM_CALCULATION"] == "when_required"
