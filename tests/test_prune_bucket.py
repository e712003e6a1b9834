"""`pose-sync prune-bucket`: a batch leaves the bucket only once its exact version is committed in git and in the
DVC remote, a tombstone says where it went, and nothing else is ever deleted: refused while not committed, not
pushed, or re-rendered; through 5xx and dropped connections during the check and the deletes (S3 through the
fault proxy), and SIGKILLed mid-way (local); each time a rerun converges.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from helpers import dvc, git, make_repository, publish_generated, run_script, s3_env
from pose_factory.core import contract
from pose_factory.dataset import dvccache

pytestmark = pytest.mark.integration

BATCH = "2026-11-20_run-cycle"
MIRROR = Path("data") / "raw" / "pose-factory"


@pytest.fixture(params=["local", "s3"])
def bucket(request, project, cli, monkeypatch):
    """A dataset repository whose bucket and DVC remote are the local folders, or S3 behind the fault proxy
    (`pose-sync init` writes the proxy's address as the DVC remote's endpoint, so both go through it)."""
    if request.param == "local":
        monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
        make_repository(project, cli, pipeline=False)
        yield None
        return
    server = request.getfixturevalue("s3_server")
    name = f"t-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    with FaultProxy(server.endpoint_url) as proxy:
        for key, value in s3_env(proxy.url, name).items():
            monkeypatch.setenv(key, value)
        make_repository(project, cli, pipeline=False)
        yield proxy


def bucket_keys(cli) -> dict[str, str]:
    """What list says about each batch."""
    return {b["batch_id"]: b["status"] for b in json.loads(cli("list", "--json").out)["batches"]}


def objects(project, bucket) -> list[str]:
    """The keys under the batch's prefix in the bucket."""
    from pose_factory.bucket.backends import open_storage
    from pose_factory.core.settings import load_settings

    prefix = f"batches/{BATCH}/"
    return sorted(info.key[len(prefix):] for info in open_storage(load_settings()).list_objects(prefix))


def remote_object(root: Path, rel: str):
    """The default DVC remote and the key of the object holding rel of the committed version."""
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset import dvccache, dvcremote

    record = dvccache.read_dvc_file(root / MIRROR / f"{BATCH}.dvc")
    odb = root / ".dvc" / "cache" / "files" / "md5"
    listing = dvccache.read_listing(Path(dvccache.object_path(str(odb), record["md5"])).read_bytes(), "")
    remote = dvcremote.default_remote(load_settings())
    return remote, remote.key(listing[rel][1])


def remote_snapshot(root: Path) -> dict[str, int]:
    """Every object of the default DVC remote and its size."""
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset import dvcremote

    remote = dvcremote.default_remote(load_settings())
    return {info.key: info.size for info in remote.storage.list_objects(remote.prefix)}


def prune(cli, *args: str):
    result = cli("prune-bucket", *args, "--json")
    return result, (json.loads(result.out)["batches"] if result.out else [])


def test_prune_keeps_a_batch_until_its_version_is_committed_and_pushed_and_survives_faults(
        bucket, project, cli, tmp_path, monkeypatch):
    root = project.root
    publish_generated(tmp_path, cli, BATCH)
    assert cli("pull", BATCH, "-q").code == 0
    before = objects(project, bucket)

    result, rows = prune(cli, BATCH)  # pulled, not committed
    assert result.code == 10 and rows[0]["action"] == "kept" and "committed in git" in rows[0]["reason"]
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    result, rows = prune(cli, BATCH)  # committed, not pushed
    assert result.code == 10 and "not in the DVC remote" in rows[0]["reason"] and "dvc push" in rows[0]["reason"]
    dvc(root, "push", "-q")
    # Checked, not assumed: one object gone from the DVC remote, or there with other bytes of the same size
    # (a bad upload), keeps the batch.
    remote, key = remote_object(root, "rgb/000001.png")
    dir_key = remote.key(dvccache.read_dvc_file(root / MIRROR / f"{BATCH}.dvc")["md5"])
    object_path, dir_path = (k.removeprefix(remote.prefix.removesuffix("files/md5/")) for k in (key, dir_key))
    original = remote.storage.read_bytes(key)
    remote.storage.delete(key)
    result, rows = prune(cli, BATCH)
    assert result.code == 10 and "1 object(s)" in rows[0]["reason"] and "dvc push" in rows[0]["reason"], rows
    # `dvc push` skips a version whose .dir object the remote has: the advice says to delete that first
    assert f"delete {dir_path} from the DVC remote" in rows[0]["reason"], rows
    remote.storage.put_bytes(key, bytes(b ^ 0xFF for b in original))
    result, rows = prune(cli, BATCH)
    assert result.code == 10 and "not in the DVC remote" in rows[0]["reason"], rows
    assert f"delete {object_path} and {dir_path} from the DVC remote" in rows[0]["reason"], rows
    for stale in (key, dir_key):  # the advice, followed
        remote.storage.delete(stale)
    dvc(root, "push", "-q")
    assert remote.storage.read_bytes(key) == original
    listing = remote.storage.read_bytes(dir_key)  # a damaged .dir object: the advice names it alone
    remote.storage.put_bytes(dir_key, listing[:-1] + b" ")
    result, rows = prune(cli, BATCH)
    assert result.code == 10 and f"delete {dir_path} from the DVC remote" in rows[0]["reason"], rows
    remote.storage.put_bytes(dir_key, listing)
    result, rows = prune(cli, "--dry-run")
    assert result.code == 0 and rows[0]["action"] == "would-prune" and rows[0]["objects_deleted"] == len(before)
    assert objects(project, bucket) == before

    if bucket is not None:
        (root / "config" / "local.yaml").write_text("storage:\n  max_attempts: 2\n")
        bucket.drop_next(40, method="GET", path_contains="prefix=dvc")  # the DVC remote cannot be listed
        result, _ = prune(cli)
        assert result.code == 4, result.err
        assert objects(project, bucket) == before and bucket_keys(cli)[BATCH] == "complete"
        bucket.clear()
        bucket.drop_next(60, method="DELETE")  # every delete fails after the tombstone is written
        result, _ = prune(cli)
        assert result.code == 4, result.err
        bucket.clear()
        (root / "config" / "local.yaml").unlink()
        assert "_pruned.json" in objects(project, bucket)
        bucket.fail_next(1, 503, method="GET", path_contains="prefix=")  # 5xx on listings: retried
        bucket.fail_next(1, 503, method="DELETE")  # and on deletes
    else:
        killed = run_script(["prune-bucket", "-q"], cwd=root,
                            env={**os.environ, "POSE_FACTORY_KILL_AT": "prune:delete:5"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert "_pruned.json" in objects(project, bucket) and "manifest.json" in objects(project, bucket)
    # Half pruned: list already says so, and pull explains where the version is.
    assert bucket_keys(cli)[BATCH] == "pruned"
    result, rows = prune(cli)  # the rerun finishes from the tombstone
    assert result.code == 0 and rows[0]["action"] == "pruned", rows
    if bucket is not None:
        assert bucket.outcomes("DELETE").count("injected 503") == 1
    assert objects(project, bucket) == ["_pruned.json"]
    tombstone = json.loads(cli("list", "--json").out)["batches"][0]
    assert tombstone["status"] == "pruned" and tombstone["pruned"]["dvc_file"] == f"{MIRROR.as_posix()}/{BATCH}.dvc"
    assert tombstone["pruned"]["git_commit"] == git(root, "rev-parse", "HEAD").strip()
    assert prune(cli)[1][0]["action"] == "already-pruned"

    # The local copy is the pruned version: pull says up to date, status too (pushed: its .dir is in the remote).
    pulled = json.loads(cli("pull", BATCH, "--json").out)
    assert pulled["batches"][0]["action"] == "up-to-date"
    [state] = json.loads(cli("status", "--json").out)["batches"]
    assert (state["remote"], state["state"]) == ("pruned", "up-to-date")
    assert "versioned, pruned" in cli("list").out and "versioned, pruned" in cli("status").out
    # Without it here, pull says how to get it back, and that works.
    manifest = contract.load_manifest(root / MIRROR / BATCH)
    git(root, "rm", "-q", "--cached", (MIRROR / f"{BATCH}.dvc").as_posix())
    (root / MIRROR / f"{BATCH}.dvc").unlink()
    refused = cli("pull", BATCH)
    assert refused.code == 8 and "pose-sync fetch" in refused.err and "git checkout" in refused.err
    [state] = json.loads(cli("status", "--json").out)["batches"]
    assert state["state"] in ("untracked", "pruned")
    git(root, "checkout", "-q", "HEAD", "--", (MIRROR / f"{BATCH}.dvc").as_posix())
    import shutil

    shutil.rmtree(root / MIRROR / BATCH)
    [state] = json.loads(cli("status", "--json").out)["batches"]
    assert (state["state"], state["next"]) == ("not-checked-out", f"pose-sync fetch {BATCH}")
    assert cli("fetch", BATCH, "-q").code == 0
    contract.verify_batch(root / MIRROR / BATCH, manifest)

    # A new render of the same batch id is a complete batch again; publishing it removed the tombstone.
    publish_generated(tmp_path, cli, BATCH, seed=2)
    assert bucket_keys(cli)[BATCH] == "complete" and "_pruned.json" not in objects(project, bucket)
    result, rows = prune(cli, BATCH)
    assert result.code == 10 and "another version" in rows[0]["reason"]


# The order prune-bucket deletes in, and what must be left at each kill point (the tombstone is always there).
PRUNE_POINTS = {"prune:after-tombstone": {"_complete.json", "manifest.json", "rgb/000001.png"},
                "prune:after-unmark": {"manifest.json", "rgb/000001.png"},
                "prune:before-manifest": {"manifest.json"}}


def test_a_prune_killed_at_any_step_deletes_only_what_is_stored_and_its_rerun_finishes(project, cli, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    make_repository(project, cli, pipeline=False)
    root = project.root
    batch_dir = publish_generated(tmp_path, cli, BATCH)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    dvc(root, "push", "-q")
    stored = remote_snapshot(root)
    for point, left in PRUNE_POINTS.items():
        killed = run_script(["prune-bucket", "-q"], cwd=root, env={**os.environ, "POSE_FACTORY_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        found = set(objects(project, None))
        assert "_pruned.json" in found and left <= found, (point, sorted(found))
        if "_complete.json" not in left:
            assert "_complete.json" not in found, point  # no pull can start on a half-deleted batch
        assert remote_snapshot(root) == stored  # the DVC remote is never touched
        assert bucket_keys(cli)[BATCH] == "pruned"
        result, rows = prune(cli)
        assert result.code == 0 and rows[0]["action"] == "pruned", (point, rows)
        assert objects(project, None) == ["_pruned.json"]
        assert cli("publish", batch_dir, "-q").code == 0  # the same version again, for the next kill point
        assert bucket_keys(cli)[BATCH] == "complete" and "_pruned.json" not in objects(project, None)
