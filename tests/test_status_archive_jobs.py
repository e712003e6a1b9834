"""`status`, `archive` / `restore`, `push-job` / `list-jobs`, `init` and the rclone engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TEST_SECRET_KEY, dvc, git, publish_generated
from pose_factory.producer.generate import default_job

BATCH = "2026-11-20_run-cycle"
OTHER = "2026-11-21_walk"


def states(cli) -> dict[str, dict]:
    result = cli("status", "--json")
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["version"] == 1
    return {b["batch_id"]: b for b in document["batches"]}


def test_status_tells_bucket_only_unpushed_uptodate_and_archived(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    publish_generated(tmp_path / "b", cli, OTHER, project="walk", seed=2)
    assert {k: v["state"] for k, v in states(cli).items()} == {BATCH: "in-bucket-only", OTHER: "in-bucket-only"}
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    assert states(cli)[BATCH]["state"] == "not-pushed"
    dvc(repo.root, "push", "-q")
    pushed = states(cli)[BATCH]
    assert pushed["state"] == "up-to-date" and pushed["pushed"] is True
    table = cli("status")
    assert BATCH in table.out and "up-to-date" in table.out and "1 in-bucket-only" in table.out


def test_archive_and_restore_keep_the_batch_versioned(repo, cli, tmp_path):
    published = publish_generated(tmp_path, cli, BATCH)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    result = cli("archive", BATCH)
    assert result.code == 0, result.err
    archived = repo.root / "data" / "archive" / "pose-factory" / BATCH
    assert (archived / "manifest.json").read_bytes() == (published / "manifest.json").read_bytes()
    assert (archived.parent / f"{BATCH}.dvc").is_file()
    assert not (repo.root / "data" / "raw" / "pose-factory" / BATCH).exists()
    params = (repo.root / "params.yaml").read_text()
    assert "batches: []" in params and f"archived:\n  - {BATCH}" in params
    assert states(cli)[BATCH]["state"] == "archived"
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "archive")
    assert json.loads(dvc(repo.root, "status", "--json").stdout) == {}, "nothing is stale"
    again = cli("archive", BATCH)
    assert again.code == 8 and "already in data/archive/pose-factory" in again.err
    assert cli("restore", BATCH).code == 0
    assert (repo.root / "data" / "raw" / "pose-factory" / BATCH / "manifest.json").is_file()
    params = (repo.root / "params.yaml").read_text()
    assert f"batches:\n  - {BATCH}" in params and "archived: []" in params
    unknown = cli("restore", "2020-01-01_nothing")
    assert unknown.code == 8 and "status" in unknown.err


def test_push_job_validates_and_list_jobs_lists(repo, cli, tmp_path):
    job = default_job("run-cycle", 16, (1024, 1024), seed=4)
    good = tmp_path / "job.json"
    good.write_text(json.dumps(job))
    result = cli("push-job", good)
    assert result.code == 0 and "jobs/job-run-cycle-4.json" in result.out
    job["cameras"]["distances_m"] = [-1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(job))
    refused = cli("push-job", bad)
    assert refused.code == 6 and "$.cameras.distances_m[0]" in refused.err and str(bad) in refused.err
    listing = json.loads(cli("list-jobs", "--json").out)
    assert listing["version"] == 1
    assert [(j["job_id"], j["samples"], j["problem"]) for j in listing["jobs"]] == [("job-run-cycle-4", 16, None)]
    assert "job-run-cycle-4" in cli("list-jobs").out


def test_init_needs_a_git_repository(project, cli):
    result = cli("init")
    assert result.code == 2 and "git init" in result.err


def test_pull_needs_a_repository(project, cli, backend, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    result = cli("pull", BATCH)
    assert result.code == 10 and str(project.root) in result.err and "git init" in result.err


def test_rclone_engine_pulls_and_verifies_the_same(repo, cli, tmp_path):
    published = publish_generated(tmp_path, cli, BATCH)
    report = json.loads(cli("pull", BATCH, "--engine", "rclone", "--json").out)
    assert report["engine"] == "rclone" and report["batches"][0]["downloaded"] == 21
    local = repo.root / "data" / "raw" / "pose-factory" / BATCH
    for path in published.rglob("*"):
        if path.is_file():
            assert (local / path.relative_to(published)).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_rclone_engine_refuses_a_tampered_object(repo, cli, tmp_path, backend):
    publish_generated(tmp_path, cli, BATCH)
    client = backend.client()
    bucket = backend.env["POSE_FACTORY_R2_BUCKET"]
    key = f"batches/{BATCH}/normal/000002.png"
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[-2] ^= 1
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    result = cli("pull", BATCH, "--engine", "rclone")
    assert result.code == 7 and "normal/000002.png" in result.err and "sha256" in result.err
    assert not (repo.root / "data" / "raw" / "pose-factory" / BATCH).exists()


@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_rclone_config_section_works_with_rclone_by_hand(repo, cli, tmp_path, backend):
    published = publish_generated(tmp_path, cli, BATCH)
    hidden = cli("rclone-config")
    assert hidden.code == 0 and "[r2_pose_factory]" in hidden.out and TEST_SECRET_KEY not in hidden.out
    assert "provider = Other" in hidden.out  # not an r2.cloudflarestorage.com endpoint
    shown = cli("rclone-config", "--show-secrets")
    conf = tmp_path / "rclone.conf"
    conf.write_text(shown.out)
    dest = tmp_path / "by-hand"
    rclone = Path(sys.executable).with_name("rclone")
    subprocess.run([str(rclone), "--config", str(conf), "sync",
                    f"r2_pose_factory:{backend.env['POSE_FACTORY_R2_BUCKET']}/batches", str(dest)], check=True)
    assert (dest / BATCH / "manifest.json").read_bytes() == (published / "manifest.json").read_bytes()
    assert cli("verify", dest / BATCH).code == 0


def test_rclone_config_for_cloudflare(project, cli, monkeypatch):
    monkeypatch.setenv("CLOUDFLARE_R2_ACCESS_KEY_ID", "TESTKEYID-EXAMPLE-0002")
    monkeypatch.setenv("CLOUDFLARE_R2_SECRET_ACCESS_KEY", "sekret-sekret-sekret")
    monkeypatch.setenv("CLOUDFLARE_R2_ACCOUNT_ID", "0123456789abcdef")
    out = cli("rclone-config").out
    for line in ("type = s3", "provider = Cloudflare", "endpoint = https://0123456789abcdef.r2.cloudflarestorage.com",
                 "region = auto", "acl = private", "no_check_bucket = true"):
        assert line in out
    assert "sekret" not in out and "TESTKEYID-EXAMPLE-0002" not in out
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    missing = cli("rclone-config")
    assert missing.code == 0  # the section is about R2 whatever the current backend (it takes no --backend)


@pytest.mark.parametrize("body, fragment", [
    (b"[" * 5000 + b"]" * 5000, "deep"),
    (b'{"job_id": "' + b"x" * (2 * 1024 * 1024) + b'"}', "bytes"),
    (b'{"job_id": "j1"}', "job"),
])
def test_a_job_read_from_the_bucket_is_bounded_and_checked(tmp_path, body, fragment):
    """What the laptop's `job watch` and the pod's worker read from the bucket is untrusted, like a manifest."""
    from pose_factory.bucket.backends import LocalFolderStorage
    from pose_factory.bucket.jobs import job_key, read_job
    from pose_factory.core.errors import SchemaError
    from pose_factory.core.settings import load_settings

    settings = load_settings(root=tmp_path)
    storage = LocalFolderStorage(tmp_path / "bucket", "b")
    storage.put_bytes(job_key(settings, "j1"), body)
    with pytest.raises(SchemaError) as caught:
        read_job(storage, settings, "j1")
    assert "j1.json" in str(caught.value) and fragment in str(caught.value).lower()
