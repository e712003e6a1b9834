"""`publish` and `list` against both backends: the embedded local folder and a real S3 server."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from helpers import TEST_SECRET_KEY, run_script, s3_env
from pose_factory.bucket.backends import LocalFolderStorage, open_storage
from pose_factory.bucket.batches import publish_batch
from pose_factory.core import contract
from pose_factory.core.settings import load_settings
from pose_factory.devtools.s3local import free_port
from pose_factory.producer.generate import default_job, generate_batch

BATCH_ID = "2026-11-20_run-cycle"


def bucket_keys(backend=None) -> list[str]:
    storage = open_storage(load_settings())
    return sorted(info.key for info in storage.list_objects(""))


def listed(cli, *args) -> list[dict]:
    result = cli("list", "--json", *args)
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["version"] == 1
    return document["batches"]


def test_publish_uploads_every_file_and_marks_complete_last(backend, batch, cli, project):
    result = cli("publish", batch, "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["version"] == 1 and report["uploaded"] == 28 and report["skipped"] == 0
    keys = bucket_keys()
    assert len(keys) == 28 + 2
    assert f"batches/{BATCH_ID}/_complete.json" in keys and f"batches/{BATCH_ID}/manifest.json" in keys
    [entry] = listed(cli)
    assert entry["batch_id"] == BATCH_ID and entry["status"] == "complete"
    assert entry["samples"] == 4 and entry["files"] == 28 and entry["project"] == "run-cycle"
    assert project.files_outside_data() == []

    again = cli("publish", batch, "--json")
    assert again.code == 0 and json.loads(again.out)["already_complete"] is True


def test_list_table_shows_status_and_summary(backend, batch, cli):
    assert cli("publish", batch, "-q").code == 0
    result = cli("list")
    assert result.code == 0
    assert BATCH_ID in result.out and "complete" in result.out
    assert "1 batch(es)" in result.out and "0 still uploading" in result.out


def test_rerendered_batch_replaces_the_old_one_and_drops_stale_files(backend, batch, cli, tmp_path):
    assert cli("publish", batch, "-q").code == 0
    job = default_job("run-cycle", 3, (64, 64), seed=99)
    rerender = generate_batch(job, tmp_path / "rerender", load_settings(root=tmp_path), batch_id=BATCH_ID, workers=1)
    report = json.loads(cli("publish", rerender.batch_dir, "--json").out)
    assert report["removed_stale"] == 7 and report["already_complete"] is False
    [entry] = listed(cli)
    assert entry["samples"] == 3 and entry["status"] == "complete"
    assert len(bucket_keys()) == 21 + 2


DAMAGE = {  # how the batch is damaged, the exit code, what the error names (the file, the problem, the JSON path)
    "changed bytes": (lambda b: _flip_byte(b / "rgb/000001.png"), 7, ("rgb/000001.png", "sha256")),
    "truncated image": (lambda b: _truncate(b / "depth/000002.png"), 7, ("depth/000002.png", "size")),
    "missing file": (lambda b: (b / "seg/000003.png").unlink(), 7, ("seg/000003.png", "missing")),
    "extra file": (lambda b: (b / "rgb/notes.txt").write_text("x"), 7, ("rgb/notes.txt",)),
    "symlink": (lambda b: (b / "rgb/link.png").symlink_to(b / "rgb/000000.png"), 7, ("rgb/link.png", "symlink")),
    "schema violation": (lambda b: _edit_manifest(b, lambda m: m["files"][2].update(sha256="xyz")), 6,
                         ("$.files[2].sha256", "'xyz'", "manifest.json")),
    "missing key": (lambda b: _edit_manifest(b, lambda m: m.pop("conventions")), 6,
                    ("$.conventions", "manifest.json")),
    "malformed json": (lambda b: (b / "manifest.json").write_text('{"batch_id": '), 6, ("manifest.json", "line 1")),
    "escaping path": (lambda b: _edit_manifest(b, lambda m: m["files"][0].update(path="../../outside.png")), 6,
                      ("$.files[0].path", "'../../outside.png'")),
}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _edit_manifest(batch: Path, change) -> None:
    manifest = json.loads((batch / "manifest.json").read_text())
    change(manifest)
    (batch / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_batch_is_refused_with_file_and_field_and_nothing_is_uploaded(backend, batch, cli, damage):
    make_damage, code, named = DAMAGE[damage]
    make_damage(batch)
    result = cli("publish", batch)
    assert result.code == code and all(fragment in result.err for fragment in named), result.err
    assert str(batch) in result.err
    assert "Traceback" not in result.err
    assert bucket_keys() == []


def test_listed_twice_and_unsafe_paths_are_caught_past_the_schema(batch):
    manifest = json.loads((batch / "manifest.json").read_text())
    manifest["files"].append(dict(manifest["files"][0]))
    with pytest.raises(Exception, match="listed twice"):
        contract.verify_batch(batch, manifest)
    from pose_factory.core.errors import UnsafeKeyError

    manifest["files"][-1]["path"] = "rgb/../../../etc/passwd"
    with pytest.raises(UnsafeKeyError, match="could escape the batch folder"):
        contract.verify_batch(batch, manifest)


def test_folder_name_must_match_batch_id(backend, batch, cli, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.move(batch, renamed)
    result = cli("publish", renamed)
    assert result.code == 7 and "renamed" in result.err and BATCH_ID in result.err
    assert bucket_keys() == []


def test_interrupted_publish_is_not_complete_and_resumes(backend, batch, cli, monkeypatch, s3_server):
    if backend.name == "local":
        real_upload = LocalFolderStorage.upload_file
        calls = {"n": 0}

        def upload_then_die(self, key, path, sha256):
            calls["n"] += 1
            if calls["n"] > 10:
                raise KeyboardInterrupt
            return real_upload(self, key, path, sha256)

        monkeypatch.setattr(LocalFolderStorage, "upload_file", upload_then_die)
        with pytest.raises(KeyboardInterrupt):
            publish_batch(open_storage(load_settings()), load_settings(), batch)
        monkeypatch.setattr(LocalFolderStorage, "upload_file", real_upload)
        proxy = None
    else:
        proxy = FaultProxy(s3_server.endpoint_url).start()
        monkeypatch.setenv("POSE_FACTORY_R2_ENDPOINT", proxy.url)
        (Path(os.environ["POSE_FACTORY_ROOT"]) / "config" / "local.yaml").write_text(
            "storage:\n  max_attempts: 2\n")
        proxy.drop_next(1000, method="PUT", path_contains="/rgb/")
        result = cli("publish", batch)
        assert result.code == 4 and "hint:" in result.err, result.err
        assert TEST_SECRET_KEY not in result.err
        proxy.clear()
    try:
        keys = bucket_keys()
        assert f"batches/{BATCH_ID}/_complete.json" not in keys
        assert 0 < len(keys) < 29
        [entry] = listed(cli)
        assert entry["status"] == "uploading"
        report = json.loads(cli("publish", batch, "--json").out)
        assert report["uploaded"] < 28 and report["skipped"] > 0
        assert report["uploaded"] + report["skipped"] == 28
        [entry] = listed(cli)
        assert entry["status"] == "complete"
    finally:
        if proxy:
            proxy.stop()


def test_a_publish_deletes_the_partial_files_a_killed_publish_left_in_a_local_bucket(project, batch, cli):
    storage = open_storage(load_settings())
    assert isinstance(storage, LocalFolderStorage)
    folder = storage.root / "batches" / BATCH_ID / "rgb"
    folder.mkdir(parents=True)
    left = folder / ".000000.png.x1y2z3.partial"  # as atomic_write_path names them
    writing = folder / ".000001.png.a1b2c3.partial"
    for path in (left, writing):
        path.write_bytes(b"half an image")
    hour_ago = datetime.now().timestamp() - 3600
    os.utime(left, (hour_ago, hour_ago))
    other = storage.root / "batches" / "2026-11-21_other" / ".manifest.json.q1w2e3.partial"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"{")
    os.utime(other, (hour_ago, hour_ago))
    result = cli("publish", batch)
    assert result.code == 0, result.err
    assert not left.exists(), "a partial file of a killed publish of this batch is deleted"
    assert writing.exists(), "a young one may belong to a publish still running"
    assert other.exists(), "another batch's folder is not touched"
    assert "batches/" + BATCH_ID + "/_complete.json" in bucket_keys()


def test_transient_5xx_and_dropped_connections_are_retried(project, batch, cli, monkeypatch, s3_server):
    bucket = "retry-bucket"
    s3_server.create_bucket(bucket)
    with FaultProxy(s3_server.endpoint_url) as proxy:
        for key, value in s3_env(proxy.url, bucket).items():
            monkeypatch.setenv(key, value)
        proxy.fail_next(2, 503, method="PUT")
        proxy.fail_next(1, 500, method="GET")
        proxy.drop_next(2, method="PUT")
        result = cli("publish", batch, "-q")
        assert result.code == 0, result.err
        assert proxy.faults_injected == 5
        [entry] = listed(cli)
        assert entry["status"] == "complete"


@pytest.mark.integration
def test_unreachable_endpoint_is_a_clear_error(project, batch, cli, monkeypatch):
    for key, value in s3_env(f"http://127.0.0.1:{free_port()}", "pose-factory").items():
        monkeypatch.setenv(key, value)
    (project.root / "config" / "local.yaml").write_text("storage:\n  max_attempts: 2\n  connect_timeout_s: 1\n")
    for args in (("list",), ("publish", batch)):
        result = cli(*args)
        assert result.code == 4, result.err
        assert os.environ["POSE_FACTORY_R2_ENDPOINT"] in result.err and "hint:" in result.err
        assert "Traceback" not in result.err


def test_wrong_secret_is_refused_without_showing_it(project, batch, cli, monkeypatch, s3_server):
    for key, value in s3_env(s3_server.endpoint_url, "pose-factory").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CLOUDFLARE_R2_SECRET_ACCESS_KEY", "wrong-secret-value-123456")
    result = cli("publish", batch)
    assert result.code == 3 and "hint:" in result.err
    assert "wrong-secret-value-123456" not in result.out + result.err


def test_missing_bucket_says_so(project, batch, cli, monkeypatch, s3_server):
    for key, value in s3_env(s3_server.endpoint_url, "no-such-bucket-here").items():
        monkeypatch.setenv(key, value)
    for args in (("list",), ("publish", batch)):
        result = cli(*args)
        assert result.code == 4 and "'no-such-bucket-here'" in result.err, result.err


def test_list_filters_by_project_and_dates(backend, cli, tmp_path, monkeypatch):
    settings = load_settings(root=tmp_path)
    for project_name, day in (("run-cycle", "2026-11-01"), ("walk", "2026-11-15")):
        epoch = datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()
        monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int(epoch)))
        made = generate_batch(default_job(project_name, 1, (32, 32), seed=1), tmp_path / "pod", settings,
                              batch_id=f"{day}_{project_name}", workers=1)
        assert cli("publish", made.batch_dir, "-q").code == 0
    assert [b["batch_id"] for b in listed(cli)] == ["2026-11-15_walk", "2026-11-01_run-cycle"]
    assert [b["batch_id"] for b in listed(cli, "--project", "walk")] == ["2026-11-15_walk"]
    assert [b["batch_id"] for b in listed(cli, "--since", "2026-11-02")] == ["2026-11-15_walk"]
    assert [b["batch_id"] for b in listed(cli, "--until", "2026-11-14")] == ["2026-11-01_run-cycle"]
    assert listed(cli, "--since", "2026-12-01") == []
    bad = cli("list", "--since", "yesterday")
    assert bad.code == 2 and "'yesterday'" in bad.err and "YYYY-MM-DD" in bad.err


def test_a_batch_without_marker_is_listed_as_uploading(backend, batch, cli):
    storage = open_storage(load_settings())
    storage.ensure_bucket()
    storage.put_bytes(f"batches/{BATCH_ID}/manifest.json", (batch / "manifest.json").read_bytes())
    storage.put_bytes("batches/2026-11-21_early/rgb/000000.png", b"partial")
    entries = {b["batch_id"]: b for b in listed(cli)}
    assert entries[BATCH_ID]["status"] == "uploading" and entries[BATCH_ID]["samples"] == 4
    assert entries["2026-11-21_early"]["status"] == "uploading"
    assert entries["2026-11-21_early"]["problem"] == "no manifest.json yet"


@pytest.mark.integration
def test_script_entry_point_matches_the_console_script(backend, batch, cli, project):
    assert cli("publish", batch, "-q").code == 0
    result = run_script(["list", "--json"], cwd=project.root)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(cli("list", "--json").out)


def test_repairing_a_damaged_published_batch_unmarks_it_first(project, batch, cli, monkeypatch):
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    assert cli("publish", batch, "-q").code == 0
    storage = open_storage(load_settings())
    storage.delete(f"batches/{BATCH_ID}/seg/000001.png")

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalFolderStorage, "upload_file", die)
    with pytest.raises(KeyboardInterrupt):
        publish_batch(storage, load_settings(), batch)
    [entry] = listed(cli)
    assert entry["status"] == "uploading", "a batch missing a file must not stay marked complete"
    monkeypatch.undo()
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(project.root))
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    report = json.loads(cli("publish", batch, "--json").out)
    assert report["uploaded"] == 1 and report["skipped"] == 27
    assert listed(cli)[0]["status"] == "complete"
