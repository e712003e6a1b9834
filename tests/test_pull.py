"""`pose-sync pull`: complete batches become verified, read-only, DVC-tracked dataset versions."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from helpers import TEST_SECRET_KEY, git, publish_generated
from pose_factory.bucket.backends import LocalFolderStorage, S3Storage, open_storage
from pose_factory.core.settings import load_settings

BATCH = "2026-11-20_run-cycle"


def mirror(repo) -> Path:
    return repo.root / "data" / "raw" / "pose-factory"


def assert_nothing_pulled(repo, batch_id: str = BATCH) -> None:
    assert not (mirror(repo) / batch_id).exists()
    assert not (mirror(repo) / f"{batch_id}.dvc").exists()
    assert "batches: []" in (repo.root / "params.yaml").read_text()
    assert repo.files_outside_data() == []


def same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_pull_verifies_mirrors_read_only_tracks_and_registers(repo, cli, tmp_path):
    published = publish_generated(tmp_path, cli, BATCH)
    result = cli("pull", BATCH, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["version"] == 1
    [entry] = report["batches"]
    assert entry["action"] == "pulled" and entry["files"] == 21 and entry["downloaded"] == 21
    local = mirror(repo) / BATCH
    same_tree(published, local)
    for path in local.rglob("*"):
        if path.is_file():
            assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), path
    assert (mirror(repo) / f"{BATCH}.dvc").is_file()
    # git status shows exactly what records the new dataset version.
    changed = sorted(line[3:] for line in git(repo.root, "status", "--porcelain", "-uall").splitlines())
    assert changed == ["data/raw/pose-factory/.gitignore", f"data/raw/pose-factory/{BATCH}.dvc", "params.yaml"]
    assert sorted(report["to_commit"]) == changed
    assert f"- {BATCH}" in (repo.root / "params.yaml").read_text()
    assert not (repo.root / "data" / "staging" / BATCH).exists()
    assert repo.files_outside_data() == []
    again = json.loads(cli("pull", BATCH, "--json").out)
    assert again["batches"][0]["action"] == "up-to-date"


def test_pull_commit_records_the_version_in_git(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    result = cli("pull", BATCH, "--commit")
    assert result.code == 0 and "committed" in result.out
    assert BATCH in git(repo.root, "log", "-1", "--format=%s")
    assert git(repo.root, "status", "--porcelain") == ""


def test_pull_latest_and_filters(repo, cli, tmp_path, monkeypatch):
    for day, name, seed in (("2026-11-01", "run-cycle", 1), ("2026-11-10", "walk", 2), ("2026-11-20", "run-cycle", 3)):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(datetime.fromisoformat(day + "T08:00:00+00:00").timestamp())))
        publish_generated(tmp_path, cli, f"{day}_{name}", samples=1, seed=seed, project=name)
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    latest = json.loads(cli("pull-latest", "--project", "walk", "--json").out)
    assert [b["batch_id"] for b in latest["batches"]] == ["2026-11-10_walk"]
    filtered = json.loads(cli("pull", "--project", "run-cycle", "--since", "2026-11-05", "--json").out)
    assert [b["batch_id"] for b in filtered["batches"]] == ["2026-11-20_run-cycle"]
    newest = json.loads(cli("pull-latest", "--json").out)
    assert [(b["batch_id"], b["action"]) for b in newest["batches"]] == [("2026-11-20_run-cycle", "up-to-date")]
    nothing = cli("pull", "--since", "2027-01-01")
    assert nothing.code == 8 and "since 2027-01-01" in nothing.err
    bare = cli("pull")
    assert bare.code == 2 and "pull-latest" in bare.err


def test_half_uploaded_batch_is_refused_unless_allowed(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    storage = open_storage(load_settings())
    storage.delete(f"batches/{BATCH}/_complete.json")
    result = cli("pull", BATCH)
    assert result.code == 7 and "_complete.json" in result.err and "--allow-incomplete" in result.err
    assert_nothing_pulled(repo)
    assert cli("pull", BATCH, "--allow-incomplete").code == 0
    assert (mirror(repo) / BATCH / "manifest.json").is_file()


def test_stale_marker_of_a_reupload_is_refused(repo, cli, tmp_path):
    first = publish_generated(tmp_path, cli, BATCH, seed=1)
    storage = open_storage(load_settings())
    other = publish_generated(tmp_path / "second", cli, "2026-11-21_run-cycle", seed=2)
    # The pod started re-uploading: a new manifest is there, the old marker not yet removed.
    marker = storage.read_bytes(f"batches/{BATCH}/_complete.json")
    storage.put_bytes(f"batches/{BATCH}/manifest.json", (other / "manifest.json").read_bytes())
    storage.put_bytes(f"batches/{BATCH}/_complete.json", marker)
    result = cli("pull", BATCH)
    assert result.code == 7 and f"batches/{BATCH}/_complete.json" in result.err
    assert_nothing_pulled(repo)
    assert first.exists()


def test_wrong_hash_in_the_bucket_is_refused_and_nothing_is_tracked(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    storage = open_storage(load_settings())
    key = f"batches/{BATCH}/depth/000001.png"
    data = bytearray(storage.read_bytes(key))
    data[-3] ^= 0x55
    storage.put_bytes(key, bytes(data))
    result = cli("pull", BATCH)
    assert result.code == 7 and "depth/000001.png" in result.err and "sha256" in result.err
    assert_nothing_pulled(repo)
    staged = repo.root / "data" / "raw" / ".pose-sync" / "staging" / BATCH
    assert not (staged / "depth" / "000001.png").exists(), "a bad file must not stay staged as if verified"


def test_truncated_object_is_refused(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    storage = open_storage(load_settings())
    key = f"batches/{BATCH}/rgb/000000.png"
    storage.put_bytes(key, storage.read_bytes(key)[:100])
    result = cli("pull", BATCH)
    assert result.code == 7 and "rgb/000000.png" in result.err and "size" in result.err
    assert_nothing_pulled(repo)


def test_keys_that_would_escape_the_batch_folder_are_refused(repo, cli, tmp_path, backend):
    publish_generated(tmp_path, cli, BATCH)
    if backend.name == "s3":
        # S3 keys are opaque strings. SeaweedFS itself refuses keys with '..' segments and turns '\\' into
        # '/' (R2 need not); control characters it stores as they are. The shapes it refuses are
        # covered key by key in test_every_escaping_key_shape_is_refused.
        for evil in ("\x01evil.png", "rgb/\x7fevil.png"):
            backend.client().put_object(Bucket=backend.env["POSE_FACTORY_R2_BUCKET"],
                                        Key=f"batches/{BATCH}/{evil}", Body=b"x")
            result = cli("pull", BATCH)
            assert result.code == 5 and "evil.png" in result.err, result.err
            backend.client().delete_object(Bucket=backend.env["POSE_FACTORY_R2_BUCKET"], Key=f"batches/{BATCH}/{evil}")
    else:
        # In the local bucket the same attack is a symlink pointing out of the bucket.
        secret = tmp_path / "outside.txt"
        secret.write_text("private")
        link = repo.bucket_dir / "pose-factory" / "batches" / BATCH / "rgb" / "sneaky.png"
        link.symlink_to(secret)
        result = cli("pull", BATCH)
        assert result.code == 5 and "sneaky.png" in result.err, result.err
    assert_nothing_pulled(repo)
    assert not list(repo.root.rglob("evil.png"))
    assert not list((repo.root / "data" / "raw" / ".pose-sync").rglob("sneaky.png"))


@pytest.mark.parametrize("key", ["../evil", "a/../../evil", "/etc/passwd", "a//b", "a/./b", "a\\b", "C:evil",
                                 "a/\x00b", ""])
def test_every_escaping_key_shape_is_refused(key):
    from pose_factory.bucket.backends import check_key
    from pose_factory.core.errors import UnsafeKeyError

    with pytest.raises(UnsafeKeyError):
        check_key(key)


@pytest.mark.parametrize("engine", ["boto3", "rclone"])
def test_interrupted_pull_leaves_no_batch_and_resumes(repo, cli, tmp_path, monkeypatch, engine):
    publish_generated(tmp_path, cli, BATCH)
    if engine == "rclone":
        from pose_factory.bucket import rclone

        real_join = rclone._Stats.join

        def join_then_die(self):
            real_join(self)  # rclone has landed every file and ended: now "Ctrl-C"
            raise KeyboardInterrupt

        monkeypatch.setattr(rclone._Stats, "join", join_then_die)
        from pose_factory.dataset.pull import pull

        with pytest.raises(KeyboardInterrupt):
            pull(open_storage(load_settings()), load_settings(), [BATCH], engine="rclone")
        assert_nothing_pulled(repo)
        monkeypatch.setattr(rclone._Stats, "join", real_join)
        [entry] = json.loads(cli("pull", BATCH, "--engine", "rclone", "--json").out)["batches"]
        assert entry["reused"] == 21 and entry["downloaded"] == 0
        return
    storage_class = LocalFolderStorage if os.environ["POSE_FACTORY_BACKEND"] == "local" else S3Storage
    real_download = storage_class.download_file
    calls = {"n": 0}

    def download_then_die(self, key, dest):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return real_download(self, key, dest)

    monkeypatch.setattr(storage_class, "download_file", download_then_die)
    from pose_factory.dataset.pull import pull

    with pytest.raises(KeyboardInterrupt):
        pull(open_storage(load_settings()), load_settings(), [BATCH], engine="boto3")
    assert_nothing_pulled(repo)
    monkeypatch.setattr(storage_class, "download_file", real_download)
    report = json.loads(cli("pull", BATCH, "--engine", "boto3", "--json").out)
    [entry] = report["batches"]
    assert entry["reused"] >= 8 and entry["downloaded"] == 21 - entry["reused"]
    assert (mirror(repo) / BATCH / "manifest.json").is_file()


@pytest.mark.parametrize("engine", ["boto3", "rclone"])
@pytest.mark.parametrize("backend", ["s3"], indirect=True)
def test_transient_faults_are_retried_and_persistent_ones_leave_no_partial_batch(
        repo, cli, tmp_path, monkeypatch, s3_server, engine):
    publish_generated(tmp_path, cli, BATCH)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        monkeypatch.setenv("POSE_FACTORY_R2_ENDPOINT", proxy.url)
        (repo.root / "config" / "local.yaml").write_text("storage:\n  max_attempts: 2\n")
        proxy.drop_next(1000, method="GET", path_contains="/seg/")
        failed = cli("pull", BATCH, "--engine", engine)
        assert failed.code == 4 and "hint:" in failed.err, failed.err
        assert TEST_SECRET_KEY not in failed.err
        assert_nothing_pulled(repo)
        proxy.clear()
        (repo.root / "config" / "local.yaml").write_text("storage:\n  max_attempts: 5\n")
        proxy.fail_next(3, 503, method="GET")
        proxy.drop_next(2, method="GET", path_contains="/rgb/")
        result = cli("pull", BATCH, "--engine", engine, "--json")
        assert result.code == 0, result.err
        assert proxy.faults_injected >= 5
    assert json.loads(result.out)["batches"][0]["reused"] > 0


def test_rerendered_batch_is_reported_and_pulled_as_a_new_version(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH, seed=1)
    assert cli("pull", BATCH, "--commit").code == 0
    first_dvc = (mirror(repo) / f"{BATCH}.dvc").read_text()
    publish_generated(tmp_path / "again", cli, BATCH, seed=2)
    status = {b["batch_id"]: b for b in json.loads(cli("status", "--json").out)["batches"]}
    assert status[BATCH]["changed_in_remote"] is True and status[BATCH]["state"] == "changed-in-bucket"
    report = json.loads(cli("pull", BATCH, "--json").out)
    assert report["batches"][0]["action"] == "updated"
    assert (mirror(repo) / f"{BATCH}.dvc").read_text() != first_dvc
    status = {b["batch_id"]: b for b in json.loads(cli("status", "--json").out)["batches"]}
    assert status[BATCH]["changed_in_remote"] is False
