"""A newcomer's first hour: outside a project nothing works on someone else's repository, a machine-local
DVC remote stays machine-local, and every state says the next command."""

from __future__ import annotations

import json

import pytest

from helpers import REPO, dvc, git, make_repository

pytestmark = pytest.mark.integration


def test_outside_a_project_commands_refuse_and_file_commands_still_work(cli, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    git(elsewhere, "init", "-q")  # a git repository, but not a Pose Factory project
    monkeypatch.chdir(elsewhere)
    code_head, code_status = git(REPO, "rev-parse", "HEAD"), git(REPO, "status", "--porcelain")
    for command in (["config"], ["list"], ["pull-latest", "--commit"], ["status"], ["diff"], ["init"],
                    ["archive", "2026-11-01_x"]):
        result = cli(*command)
        assert result.code == 10, (command, result.err)
        assert str(elsewhere) in result.err and "POSE_FACTORY_ROOT" in result.err, command
    # Nothing happened to the repository this code lives in, and nothing was written here.
    assert git(REPO, "rev-parse", "HEAD") == code_head and git(REPO, "status", "--porcelain") == code_status
    assert sorted(p.name for p in elsewhere.iterdir()) == [".git"]

    # Commands that read and write only what they are given work anywhere.
    made = cli("generate", "--out", tmp_path / "out", "--samples", "1", "--size", "48x48", "-q")
    assert made.code == 0, made.err
    batch = tmp_path / "out" / made.out.strip()
    assert cli("validate", batch, "-q").code == 0 and cli("verify", batch).code == 0
    # The local-folder bucket is a project's folder: publishing there needs a project (R2 would not).
    refused = cli("publish", batch, "--backend", "local")
    assert refused.code == 10 and "R2" in refused.err
    assert sorted(p.name for p in elsewhere.iterdir()) == [".git"]

    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "config").mkdir()
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(project))
    shown = cli("config", "--json")
    assert shown.code == 0 and json.loads(shown.out)["root"] == str(project)
    monkeypatch.delenv("POSE_FACTORY_ROOT")
    monkeypatch.chdir(project / "config")  # found from a sub-folder, as git finds .git
    assert json.loads(cli("config", "--json").out)["root"] == str(project)


def test_a_local_dvc_remote_is_machine_local_and_r2_is_shared(project, cli, monkeypatch):
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    repo = make_repository(project, cli, pipeline=False)
    shared = (repo.root / ".dvc" / "config").read_text()
    assert "local" not in shared and str(repo.root.parent) not in shared, shared
    assert "dvc-local-remote" in (repo.root / ".dvc" / "config.local").read_text()
    assert dvc(repo.root, "remote", "default").stdout.strip() == "local"  # the real dvc reads config.local
    again = cli("init")
    assert again.code == 0 and "nothing to commit" in again.out and "config.local" in again.out
    assert git(repo.root, "status", "--porcelain") == ""

    monkeypatch.setenv("POSE_FACTORY_BACKEND", "r2")
    monkeypatch.setenv("CLOUDFLARE_R2_ACCESS_KEY_ID", "test-key-id-0001")
    monkeypatch.setenv("CLOUDFLARE_R2_SECRET_ACCESS_KEY", "test-secret-0001")
    monkeypatch.setenv("CLOUDFLARE_R2_ACCOUNT_ID", "0123abcd")
    r2 = cli("init")
    assert r2.code == 0 and "git add .dvc/config" in r2.out
    shared = (repo.root / ".dvc" / "config").read_text()
    assert "s3://pose-factory/dvc" in shared and "test-secret" not in shared
    remote = json.loads(cli("config", "--json").out)["dvc_remote"]
    assert (remote["name"], remote["config_file"]) == ("r2", ".dvc/config"), "config.local no longer overrides R2"


def test_a_newcomer_is_never_stuck_and_every_state_says_the_next_command(project, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    repo = make_repository(project, cli, pipeline=False)  # a fresh clone after `pose-sync init`
    listed = cli("list")
    assert listed.code == 0 and "no batches in local folder" in listed.out
    for step in ("pose-sync generate --out data/pod-outbox", "pose-sync publish data/pod-outbox/",
                 "CLOUDFLARE_R2_ACCESS_KEY_ID"):
        assert step in listed.out, step
    latest = cli("pull-latest")
    assert latest.code == 8 and "pose-sync generate" in latest.err and "pose-sync publish" in latest.err
    assert "pose-sync generate" in cli("status").out

    # Following the hint works, and the local folder is read with plain copies (said so in --json).
    outbox = repo.root / "data" / "pod-outbox"
    made = cli("generate", "--out", outbox, "--samples", "1", "--size", "48x48", "--batch-id", "2026-11-20_try", "-q")
    assert made.code == 0 and cli("publish", outbox / "2026-11-20_try", "-q").code == 0
    pulled = cli("pull-latest", "--json", "-q")
    assert pulled.code == 0 and json.loads(pulled.out)["engine"] == "copy"

    [row] = json.loads(cli("status", "--json").out)["batches"]
    assert (row["batch_id"], row["state"], row["next"]) == ("2026-11-20_try", "not-pushed", "dvc push")
    # The pod re-renders the batch: the bucket's copy changed; pulling it again is the way out.
    assert cli("generate", "--out", outbox, "--samples", "1", "--size", "48x48", "--seed", "9", "--batch-id",
               "2026-11-20_try", "--force", "-q").code == 0
    assert cli("publish", outbox / "2026-11-20_try", "-q").code == 0
    table = cli("status").out.splitlines()
    assert table[0].split() == ["BATCH", "STATE", "BUCKET", "LOCAL", "PUSHED", "NEXT"]
    assert table[1].split() == ["2026-11-20_try", "changed-in-bucket", "complete", "raw", "no", "pose-sync", "pull",
                                "2026-11-20_try"]

    # `config`: readable, no Python values, with the DVC remote in effect and why the backend is what it is.
    shown = cli("config")
    assert shown.code == 0 and "None" not in shown.out and "{" not in shown.out
    assert "backend:" in shown.out and "POSE_FACTORY_BACKEND=local" in shown.out
    assert "DVC remote:" in shown.out and ".dvc/config.local" in shown.out
    monkeypatch.delenv("POSE_FACTORY_BACKEND")
    assert "auto: no R2 credentials" in cli("config").out
