"""Networks fail mid-body: bodies cut mid-stream and dropped connections are retried on every path
(manifest and marker reads, downloads, uploads), and an unreachable endpoint fails within
`connect_timeout_s` with one clear error, not after a minute of retries.

The fault proxy sits in front of the real SeaweedFS server; it cuts answers after a few bytes (the
headers promise the whole body), resets connections, or the endpoint refuses or blackholes them.
"""

from __future__ import annotations

import json
import os

import pytest

from faultproxy import FaultProxy, blackhole_url, refused_url
from helpers import TEST_ACCESS_KEY, TEST_SECRET_KEY, make_repository, publish_generated, run_script, s3_env
from pose_factory.core.errors import StorageError

pytestmark = pytest.mark.integration

BATCH = "2026-11-20_run-cycle"


@pytest.fixture
def through_proxy(project, cli, monkeypatch, s3_server):
    """A repository whose bucket is reached through the fault proxy, with a batch published."""
    bucket = f"n-{os.urandom(6).hex()}"
    s3_server.create_bucket(bucket)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        for name, value in s3_env(proxy.url, bucket).items():
            monkeypatch.setenv(name, value)
        # Few attempts keep the persistent-failure case short; one cut per request still has room.
        (project.root / "config" / "local.yaml").write_text("storage:\n  max_attempts: 3\n")
        repo = make_repository(project, cli, pipeline=False)
        yield repo, proxy


def test_bodies_cut_mid_stream_are_fetched_again_on_every_path(through_proxy, cli, tmp_path):
    repo, proxy = through_proxy
    proxy.drop_next(2, method="PUT")  # uploads: the connection drops after the request was sent
    publish_generated(tmp_path, cli, BATCH, samples=1)
    assert proxy.outcomes("PUT").count("dropped") == 2

    proxy.cut_next(1, 20, method="GET", path_contains="_complete.json")  # the marker, read by list
    listed = cli("list", "--json")
    assert listed.code == 0, listed.err
    assert json.loads(listed.out)["batches"][0]["status"] == "complete"

    for name in ("_complete.json", "manifest.json", "rgb/000000.png"):  # marker, manifest, a data file
        proxy.cut_next(1, 20, method="GET", path_contains=name)
    result = cli("pull", BATCH, "--engine", "boto3", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["batches"][0]["action"] == "pulled"
    cuts = [path for method, path, outcome in proxy.log if outcome.startswith("cut")]
    assert len(cuts) == 4 and any("rgb/000000.png" in path for path in cuts)
    assert (repo.root / "data" / "raw" / "pose-factory" / BATCH / "rgb" / "000000.png").is_file()


def test_a_body_cut_every_time_is_one_clear_error(through_proxy, cli, tmp_path):
    repo, proxy = through_proxy
    publish_generated(tmp_path, cli, BATCH, samples=1)
    proxy.cut_next(10, 20, method="GET", path_contains="manifest.json")
    result = cli("pull", BATCH, "--engine", "boto3")
    assert result.code == StorageError.exit_code, result.err
    assert "Traceback" not in result.err
    assert "3 times" in result.err and "manifest.json" in result.err
    assert proxy.outcomes("GET").count("cut after 20 bytes") == 3
    assert not (repo.root / "data" / "raw" / "pose-factory" / BATCH).exists()


@pytest.mark.parametrize("where", ["refused", "blackhole"])
def test_an_unreachable_endpoint_fails_within_the_connect_timeout(project, where):
    (project.root / "config" / "local.yaml").write_text("storage:\n  connect_timeout_s: 1\n")
    env = {"POSE_FACTORY_BACKEND": "r2", "CLOUDFLARE_R2_ACCESS_KEY_ID": TEST_ACCESS_KEY,
           "CLOUDFLARE_R2_SECRET_ACCESS_KEY": TEST_SECRET_KEY, "POSE_FACTORY_R2_BUCKET": "pose-factory"}
    if where == "refused":
        env["POSE_FACTORY_R2_ENDPOINT"] = refused_url()
        result = run_script(["list"], cwd=project.root, env=env, timeout=40)
    else:
        with blackhole_url() as url:
            env["POSE_FACTORY_R2_ENDPOINT"] = url
            # Without the bound, botocore tries 8 times with backoff: well over the timeout here.
            result = run_script(["list"], cwd=project.root, env=env, timeout=40)
    assert result.returncode == StorageError.exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: cannot reach the S3 endpoint")
    assert "tried for 1 s" in lines[0]
    assert lines[1].startswith("hint: ")
