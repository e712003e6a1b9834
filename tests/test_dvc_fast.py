"""The fast `dvc add` of a pull (dataset/dvccache.py) against real DVC.

First byte for byte: the .dvc file, the .dir object, the cache objects, the workspace files and DVC's state
entries are what real `dvc add` writes for the same folder, on a first add and on an update; a DVC upgrade
that changes any of them fails here. Then what a user does with DVC afterwards, on real pulled batches:
`dvc status` and `dvc data status` are clean without hashing a file, `dvc push`, `dvc pull` into a second
clone, `git checkout` + `dvc checkout` of the older version and back, `dvc gc`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import counting_hashes, dvc, git, make_repository, publish_generated
from pose_factory.core import contract

pytestmark = pytest.mark.integration

BATCH = "2026-11-20_run-cycle"
MIRROR = Path("data") / "raw" / "pose-factory"


def plain_repository(root: Path) -> Path:
    """git + DVC with the cache type `pose-sync init` chooses on this filesystem, nothing else."""
    from pose_factory.dataset import dvcrepo

    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    dvc(root, "init", "-q")
    dvc(root, "config", "--local", "cache.type", dvcrepo.cache_type(root))
    return root


def place(source: Path, root: Path) -> Path:
    """A writable copy of a batch folder at data/raw/pose-factory/<batch> (as a download leaves it)."""
    dest = root / MIRROR / BATCH
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, copy_function=shutil.copyfile)
    return dest


def cache_listing(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every object in the DVC cache: content, mode and link count."""
    cache = root / ".dvc" / "cache"
    return {p.relative_to(cache).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777, p.stat().st_nlink)
            for p in sorted(cache.rglob("*")) if p.is_file()}


def workspace(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777, p.stat().st_nlink)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def dvc_state(root: Path, folder: Path) -> tuple[dict[str, dict], object]:
    """DVC's state for the folder's files (path relative to the folder -> entry, its checksum checked against
    the file as it is now and then left out), and its record of the folder as a link it made."""
    from dvc.repo import Repo
    from dvc_data.fsutils import _localfs_info
    from dvc_data.hashfile.state import _checksum
    from dvc_data.hashfile.utils import get_mtime_and_size

    with Repo(str(root)) as repo:
        entries = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            entry = json.loads(repo.state.hashes.get(str(path)))
            assert entry.pop("checksum") == _checksum(_localfs_info(str(path))), path
            entries[path.relative_to(folder).as_posix()] = entry
        with repo.state.links as links:
            inode, mtime = links[folder.relative_to(root).as_posix()]
        assert inode == folder.lstat().st_ino
        assert mtime == get_mtime_and_size(str(folder), repo.fs)[0]
    return entries, folder.relative_to(root).as_posix()


def test_fast_add_writes_what_dvc_add_writes(template_batch, tmp_path, monkeypatch):
    from pose_factory.dataset import dvccache, dvcrepo

    ours, theirs = plain_repository(tmp_path / "ours"), plain_repository(tmp_path / "theirs")
    renders = [template_batch, tmp_path / "rerender"]
    shutil.copytree(template_batch, renders[1])
    for name in ("rgb/000001.png", "annotations/000002.json"):  # a new render of two files, one file gone
        (renders[1] / name).write_bytes((renders[1] / name).read_bytes() + b" ")
    (renders[1] / "seg" / "000003.png").unlink()
    for render in renders:
        folder = place(render, ours)
        dvcrepo.ensure_gitignored(folder.parent, BATCH)
        added = dvccache.add(ours, [folder], {folder: dvccache.folder_md5s(folder)}, seal_dir=tmp_path / "seals")
        assert not added[0].by_dvc
        place(render, theirs)
        dvc(theirs, "add", "-q", (MIRROR / BATCH).as_posix())  # the real CLI
        for rel in (f"{BATCH}.dvc", ".gitignore"):
            assert (ours / MIRROR / rel).read_bytes() == (theirs / MIRROR / rel).read_bytes(), rel
        mine, dvcs = cache_listing(ours), cache_listing(theirs)
        files, dvc_files = workspace(ours / MIRROR / BATCH), workspace(theirs / MIRROR / BATCH)
        if render == renders[0]:
            assert mine == dvcs and files == dvc_files  # link counts too: each file is its cache object
        else:
            # On an update, `dvc add` leaves the files whose object was already cached as they were given to
            # it: writable copies beside their objects ("copy" is an acceptable link for "hardlink,copy").
            # The fast add links them like the others: one copy on disk, read-only.
            assert {k: v[:2] for k, v in mine.items()} == {k: v[:2] for k, v in dvcs.items()}
            assert {k: v[0] for k, v in files.items()} == {k: v[0] for k, v in dvc_files.items()}
            assert {v[1] for v in files.values()} == {0o444}
        md5s = dvccache.folder_md5s(ours / MIRROR / BATCH)
        odb = ours / ".dvc" / "cache" / "files" / "md5"
        assert all((folder / rel).stat().st_ino == (odb / md5[:2] / md5[2:]).stat().st_ino
                   for rel, (_, md5) in md5s.items())
        assert dvc_state(ours, ours / MIRROR / BATCH) == dvc_state(theirs, theirs / MIRROR / BATCH)

    # The .dir object is dvc-data's own Tree serialisation, which DVC reads back as the same listing.
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    md5s = dvccache.folder_md5s(ours / MIRROR / BATCH)
    tree = Tree()
    for rel, (size, md5) in md5s.items():
        tree.add(tuple(rel.split("/")), Meta(size=size), HashInfo("md5", md5))
    assert dvccache.dir_object_bytes(md5s) == tree.as_bytes()

    # What DVC's own add must do instead: a .dvcignore pattern leaves files out of the listing.
    (ours / ".dvcignore").write_text("*.json\n")
    folder = place(template_batch, ours)
    added = dvccache.add(ours, [folder])[0]
    assert added.by_dvc
    assert added.files == sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix != ".json")



def test_dvc_commands_on_a_fast_added_batch(project, tmp_path, monkeypatch, cli):
    from dvc.repo import Repo

    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    make_repository(project, cli, pipeline=False)
    root = project.root
    folder = root / MIRROR / BATCH
    manifests = []
    for seed in (1, 2):
        publish_generated(tmp_path, cli, BATCH, seed=seed)
        result = cli("pull", BATCH, "--commit", "-q")
        assert result.code == 0, result.err
        manifests.append(contract.load_manifest(folder))
        with counting_hashes() as tried, Repo(str(root)) as repo:
            assert repo.status() == {}
            data = repo.data_status()
            assert not data["uncommitted"] and not data["not_in_cache"] and not data["committed"], data
        assert tried == [], f"DVC hashed {len(tried)} file(s) again, e.g. {tried[:2]}"
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."

    # dvc push, then dvc pull into a second clone (the local remote lives in .dvc/config.local, as for a user)
    with Repo(str(root)) as repo:
        assert repo.push() > 0
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    shutil.copy(root / ".dvc" / "config.local", clone / ".dvc" / "config.local")
    pulled = subprocess.run([str(Path(sys.executable).with_name("dvc")), "pull", "-q"], cwd=clone,
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    assert workspace(clone / MIRROR / BATCH).keys() == workspace(folder).keys()
    contract.verify_batch(clone / MIRROR / BATCH, manifests[1])

    # git checkout of the older version, dvc checkout, and back
    dvc_file = (MIRROR / f"{BATCH}.dvc").as_posix()
    git(root, "checkout", "-q", "HEAD~1", "--", dvc_file)
    with Repo(str(root)) as repo:
        repo.checkout()
    contract.verify_batch(folder, manifests[0])
    git(root, "checkout", "-q", "HEAD", "--", dvc_file)
    with Repo(str(root)) as repo:
        repo.checkout()
        assert repo.status() == {}
    contract.verify_batch(folder, manifests[1])

    # dvc gc keeps what the workspace uses and drops the rest (the older version's own objects)
    before = cache_listing(root)
    with Repo(str(root)) as repo:
        repo.gc(workspace=True, force=True)
        assert repo.status() == {}
    after = cache_listing(root)
    assert set(after) < set(before)
    contract.verify_batch(folder, manifests[1])
    assert cli("verify", BATCH).code == 0
