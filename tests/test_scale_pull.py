"""Batches at scale, tested small: rclone's JSON stats as progress, `pose-sync fetch` (a fresh clone restored
from the DVC remote, then plain `dvc pull` finds nothing to do), `status` from seals, and their kill points.
The figures at 2,000 / 20,000 / 70,000 files are in benchmarks/scale_pull.py, not here.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import counting_hashes, dvc, git, make_repository, publish_generated, run_script
from pose_factory.core import contract

pytestmark = pytest.mark.integration

BATCH = "2026-11-20_run-cycle"
MIRROR = Path("data") / "raw" / "pose-factory"


class Recorder:
    """A progress bar that remembers what it was told."""

    def __init__(self):
        self.advances: list[float] = []

    def advance(self, amount: float = 1) -> None:
        self.advances.append(amount)


def test_rclone_progress_comes_from_its_json_stats_and_its_errors_are_kept(tmp_path):
    from pose_factory.bucket import rclone
    from pose_factory.core.errors import StorageError
    from pose_factory.core.settings import load_settings

    source = tmp_path / "source"
    names = [f"part/{i:03d}.bin" for i in range(40)]
    for i, name in enumerate(names):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(bytes([i]) * (1000 + i))
    settings = load_settings(root=tmp_path)
    env = rclone._env_for("unused", {"type": "local"})
    bar = Recorder()
    dest = tmp_path / "staging" / "dest"
    dest.parent.mkdir()
    rclone.transfer(str(source), env, dest, names, bar, 0, settings=settings, step="test")
    # total_bytes 0: nothing is topped up at the end, so every byte the bar saw came from rclone's stats
    assert sum(bar.advances) == sum(1000 + i for i in range(40))
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == names
    assert sorted(p.name for p in dest.parent.iterdir()) == ["dest"]  # its file list and pid file are gone
    with pytest.raises(StorageError) as failed:
        rclone.transfer(str(tmp_path / "nowhere"), env, tmp_path / "staging" / "other", names, Recorder(), 0,
                        settings=settings, step="test")
    assert "directory not found" in failed.value.message



@pytest.fixture
def local_repo(project, cli, monkeypatch):
    """A data-only dataset repository on the embedded local bucket (local DVC remote)."""
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    return make_repository(project, cli, pipeline=False)


def pushed_repository(repo, cli, tmp_path) -> Path:
    """The batch pulled, committed and pushed with the real `dvc push` (which finds R2 credentials as users' does)."""
    publish_generated(tmp_path, cli, BATCH)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    dvc(repo.root, "push", "-q")
    return repo.root


def clone_of(root: Path, dest: Path, monkeypatch) -> Path:
    """A fresh `git clone` worked in from now on. A local DVC remote is this machine's own (in the git-ignored
    .dvc/config.local), so the clone is told about it, as `pose-sync init` would; the cache type is not."""
    import os

    git(dest.parent, "clone", "-q", str(root), str(dest))
    if os.environ.get("POSE_FACTORY_BACKEND") == "local":
        url = Path(os.environ["POSE_FACTORY_DVC_LOCAL_REMOTE"]).resolve()
        (dest / ".dvc" / "config.local").write_text(f"[core]\n    remote = local\n['remote \"local\"']\n"
                                                    f"    url = {url}\n")
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(dest))
    return dest


def test_fetch_restores_a_fresh_clone_and_dvc_pull_then_finds_nothing_to_do(repo, backend, cli, tmp_path,
                                                                               monkeypatch):
    from dvc.repo import Repo

    root = pushed_repository(repo, cli, tmp_path)
    manifest = contract.load_manifest(root / MIRROR / BATCH)
    clone = clone_of(root, tmp_path / "clone", monkeypatch)
    result = cli("fetch", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["cache_type_set"]  # a fresh clone had none: DVC would copy every file
    [entry] = report["batches"]
    assert entry["action"] == "fetched" and entry["objects_downloaded"] == entry["files"] == 22
    assert report["engine"] == ("rclone" if backend.name == "s3" else "copy")
    folder = clone / MIRROR / BATCH
    contract.verify_batch(folder, manifest)
    odb = clone / ".dvc" / "cache" / "files" / "md5"
    assert all(p.stat().st_mode & 0o777 == 0o444 and p.stat().st_nlink == 2
               for p in folder.rglob("*") if p.is_file())  # each file is its cache object, read-only
    assert sum(1 for p in odb.rglob("*") if p.is_file()) == 23  # the objects and the .dir listing
    pulled = dvc(clone, "pull")
    assert "Everything is up to date" in pulled.stdout, pulled.stdout
    with counting_hashes() as tried, Repo(str(clone)) as dvc_repo:
        assert dvc_repo.status() == {}
    assert tried == []
    again = json.loads(cli("fetch", "--json").out)
    assert again["batches"][0]["action"] == "up-to-date" and again["objects_downloaded"] == 0
    states = json.loads(cli("status", "--json").out)["batches"]
    assert [(s["batch_id"], s["state"]) for s in states] == [(BATCH, "up-to-date")]


def test_fetch_brings_back_an_older_version_after_git_checkout(local_repo, cli, tmp_path):
    root = pushed_repository(local_repo, cli, tmp_path)
    old = contract.load_manifest(root / MIRROR / BATCH)
    publish_generated(tmp_path, cli, BATCH, seed=2)
    assert cli("pull", BATCH, "--commit", "-q").code == 0
    git(root, "checkout", "-q", "HEAD~1", "--", (MIRROR / f"{BATCH}.dvc").as_posix())
    result = cli("fetch", "--json")
    assert result.code == 0, result.err
    entry = json.loads(result.out)["batches"][0]
    assert entry["action"] == "checked-out" and entry["objects_downloaded"] == 0  # all in the cache already
    contract.verify_batch(root / MIRROR / BATCH, old)
    # A folder changed by hand is not replaced without --force.
    (root / MIRROR / BATCH / "stray.txt").write_text("mine")
    git(root, "checkout", "-q", "HEAD", "--", (MIRROR / f"{BATCH}.dvc").as_posix())
    refused = cli("fetch")
    assert refused.code == 7 and "--force" in refused.err and "--repair" in refused.err
    assert (root / MIRROR / BATCH / "stray.txt").exists()
    assert cli("fetch", "--force", "-q").code == 0
    assert cli("verify", BATCH).code == 0
    # A cache type the loop does not make (symlinks): fetch fills the cache as before and DVC links the files.
    dvc(root, "config", "--local", "cache.type", "symlink")
    git(root, "checkout", "-q", "HEAD~1", "--", (MIRROR / f"{BATCH}.dvc").as_posix())
    result = cli("fetch", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["batches"][0]["action"] == "checked-out"
    assert (root / MIRROR / BATCH / "manifest.json").is_symlink()
    assert json.loads((root / MIRROR / BATCH / "manifest.json").read_text()) == old
    assert json.loads(dvc(root, "status", "--json").stdout) == {}


FETCH_POINTS = ["fetch:after-dir-objects", "fetch:object:3", "fetch:after-objects", "fetch:link:5",
                "fetch:mid-swap", "fetch:after-swap"]


def test_a_killed_fetch_leaves_each_batch_whole_or_as_it_was_and_converges(local_repo, cli, tmp_path, monkeypatch):
    import os

    root = pushed_repository(local_repo, cli, tmp_path)
    manifest = contract.load_manifest(root / MIRROR / BATCH)
    clone = clone_of(root, tmp_path / "clone", monkeypatch)
    folder = clone / MIRROR / BATCH
    for point in FETCH_POINTS:
        killed = run_script(["fetch", "-q"], cwd=clone, env={**os.environ, "POSE_FACTORY_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        if folder.exists():  # it appeared whole, or not at all
            contract.verify_batch(folder, manifest)
        odb = clone / ".dvc" / "cache" / "files" / "md5"
        for obj in (p for p in odb.rglob("*") if p.is_file() and p.stat().st_mode & 0o777 == 0o444):
            name = obj.parent.name + obj.name
            assert _md5(obj) == name.removesuffix(".dir"), obj  # an object DVC trusts is intact
        assert git(clone, "status", "--porcelain") == ""
    result = cli("fetch", "--json")
    assert result.code == 0, result.err
    contract.verify_batch(folder, manifest)
    assert not (clone / "data" / "raw" / ".pose-sync" / "fetch").exists()
    pulled = subprocess.run([str(Path(sys.executable).with_name("dvc")), "status"], cwd=clone, capture_output=True,
                            text=True)
    assert pulled.stdout.strip() == "Data and pipelines are up to date.", pulled.stdout


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_an_object_missing_or_damaged_in_the_dvc_remote_is_refused_and_the_hint_mends_it(repo, backend, cli,
                                                                                         tmp_path, monkeypatch):
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset import dvccache, dvcremote

    # The small test batch's objects are checked in two threads after rclone, as a batch of larger files is.
    monkeypatch.setattr(contract, "MD5_THREADED_AVERAGE", 0)
    root = pushed_repository(repo, cli, tmp_path)
    manifest = contract.load_manifest(root / MIRROR / BATCH)
    entry = manifest["files"][0]
    md5 = contract.hash_files(root / MIRROR / BATCH, [entry["path"]], with_md5=True)[entry["path"]][2]
    dir_md5 = dvccache.read_dvc_file(root / MIRROR / f"{BATCH}.dvc")["md5"]
    remote = dvcremote.default_remote(load_settings())
    good = remote.storage.read_bytes(remote.key(md5))
    remote.storage.delete(remote.key(md5))
    clone = clone_of(root, tmp_path / "clone", monkeypatch)
    cached = clone / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    for damaged in (False, True):
        if damaged:  # one bit flipped: same size, other md5
            remote.storage.put_bytes(remote.key(md5), good[:-1] + bytes([good[-1] ^ 1]))
        result = cli("fetch")
        problem = "holds a damaged object" if damaged else "has no object"
        assert result.code == 7 and f"{problem} {md5}" in result.err and "Traceback" not in result.err, result.err
        assert not (clone / MIRROR / BATCH).exists(), "no batch folder from a version that could not be checked"
        assert not cached.exists(), "nothing but checked bytes enters DVC's cache"
        hint = result.err.split("hint: ")[1]
        assert f"files/md5/{dir_md5[:2]}/{dir_md5[2:]}" in hint and "dvc push" in hint
        assert (f"files/md5/{md5[:2]}/{md5[2:]}" in hint) == damaged
    # As the hint says: `dvc push` skips a version whose .dir object the remote has, so both go first.
    remote.storage.delete(remote.key(md5))
    dvc(root, "push", "-q")
    assert not remote.has(md5), "dvc push skipped the version: the remote has its .dir object"
    remote.storage.delete(remote.key(dir_md5))
    dvc(root, "push", "-q")
    assert remote.storage.read_bytes(remote.key(md5)) == good
    result = cli("fetch", "--json")
    assert result.code == 0, result.err
    contract.verify_batch(clone / MIRROR / BATCH, manifest)
