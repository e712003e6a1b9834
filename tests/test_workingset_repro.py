"""The working set survives `dvc repro`: rebuilt beside the old one and swapped in, through real `dvc repro`.

ComfyUI reads `data/working/current_batch/` at any moment, so during a rebuild, a failed build and a build killed
with SIGKILL, the folder must hold a complete set (the old one or the new one), and the next run must converge.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from helpers import build_pipeline_repository, copy_repository, dvc, quiet_cli
from pose_factory.core.fsutil import SCRATCH_NAME

pytestmark = pytest.mark.integration

A, B = "2026-11-01_run-cycle", "2026-11-02_walk"
WORKING = Path("data") / "working" / "current_batch"


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory) -> Path:
    """Two pulled batches (48x48, 3 samples each), `dvc repro` run and committed: made once for the module."""
    return build_pipeline_repository(tmp_path_factory.mktemp("workingset"), [(A, 1, 3), (B, 2, 3)])


@pytest.fixture
def repo(built_repo, tmp_path, monkeypatch) -> Path:
    return copy_repository(built_repo, tmp_path / "project", monkeypatch).root


def set_working(root: Path, **values) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load((root / "params.yaml").read_text())
    for key, value in values.items():
        params["working"][key] = value
    with (root / "params.yaml").open("w") as handle:
        yaml.dump(params, handle)


def complete_set(root: Path) -> dict:
    """The working set's index, after checking that every file it lists is there: a complete set, old or new."""
    out = root / WORKING
    index = json.loads((out / "index.json").read_text())
    for sample in index["samples"]:
        for rel in sample["files"].values():
            assert (out / rel).is_file(), rel
    return index


def batches_of(index: dict) -> list[str]:
    return [b["batch_id"] for b in index["batches"]]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / WORKING).parent.iterdir() if ".build-" in p.name or p.name == SCRATCH_NAME)


def status_clean(root: Path) -> bool:
    return json.loads(dvc(root, "status", "--json").stdout) == {}


def test_a_rebuild_never_leaves_comfyui_without_a_working_set(repo):
    index_file = repo / WORKING / "index.json"
    seen = {"polls": 0, "missing": 0, "torn": 0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen["polls"] += 1
            try:
                json.loads(index_file.read_bytes())
            except FileNotFoundError:
                seen["missing"] += 1
            except ValueError:
                seen["torn"] += 1
            stop.wait(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        set_working(repo, batches=[A])
        dvc(repo, "repro")
    finally:
        stop.set()
        poller.join()
    assert seen["polls"] > 20 and seen["missing"] == 0 and seen["torn"] == 0, seen
    assert batches_of(complete_set(repo)) == [A]
    assert leftovers(repo) == [] and status_clean(repo)


def test_dvc_lock_records_the_working_set_and_status_notices_an_edit(repo):
    lock = (repo / "dvc.lock").read_text()
    entry = lock[lock.index("path: data/working/current_batch"):]
    assert "md5:" in entry.split("path:")[1] and "nfiles:" in entry.split("path:")[1]
    assert status_clean(repo)
    edited = repo / WORKING / "index.csv"
    edited.write_text("hand-edited\n")
    status = dvc(repo, "status").stdout
    assert "materialize" in status and "data/working/current_batch" in status
    dvc(repo, "repro")
    assert edited.read_text().startswith("index,name,batch_id") and status_clean(repo)


def test_a_failing_repro_keeps_the_previous_set_and_status_says_it_is_stale(repo):
    before = (repo / WORKING / "index.json").read_bytes()
    original = (repo / "params.yaml").read_text()
    for values, fragment in (({"link_mod": "copy"}, "working.link_mod"),
                             ({"filters": {"rig": "nobody"}}, "filters")):
        (repo / "params.yaml").write_text(original)
        set_working(repo, **values)
        failed = dvc(repo, "repro", check=False)
        assert failed.returncode != 0 and fragment in failed.stdout + failed.stderr
        assert (repo / WORKING / "index.json").read_bytes() == before
        complete_set(repo)
        status = dvc(repo, "status").stdout
        assert "materialize" in status and "params.yaml" in status  # stale, and dvc status says so
    (repo / "params.yaml").write_text(original)
    # Archiving every batch leaves nothing to build: the stage fails and the last set stays for ComfyUI.
    for batch_id in (A, B):
        assert quiet_cli("archive", batch_id).code == 0
    failed = dvc(repo, "repro", check=False)
    assert failed.returncode != 0 and "(batches:)" in failed.stdout + failed.stderr
    assert (repo / WORKING / "index.json").read_bytes() == before
    assert leftovers(repo) == []


def test_prepare_batch_that_fails_says_the_previous_set_is_still_there(repo):
    before = (repo / WORKING / "index.json").read_bytes()
    damaged = repo / "data" / "raw" / "pose-factory" / A / "seg" / "000001.png"
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-20])
    result = quiet_cli("prepare-batch", A)
    assert result.code == 9 and f"({B})" in result.err  # the set that stays, named
    assert (repo / WORKING / "index.json").read_bytes() == before


@pytest.mark.parametrize("point", ["materialize:linking:2", "materialize:built", "materialize:swapped"])
def test_sigkill_during_materialize_keeps_a_complete_set_and_the_next_repro_converges(repo, point):
    set_working(repo, batches=[A])
    killed = dvc(repo, "repro", env={"POSE_FACTORY_KILL_AT": point}, check=False)
    assert killed.returncode != 0
    # Before the swap the old set is in place, after it the new one; never half of either.
    assert batches_of(complete_set(repo)) == ([A] if point == "materialize:swapped" else [B])
    assert len(leftovers(repo)) == 1  # the build folder (after the swap: the old set) the kill left
    assert "materialize" in dvc(repo, "status").stdout
    dvc(repo, "repro")
    assert batches_of(complete_set(repo)) == [A]
    assert leftovers(repo) == [] and status_clean(repo)


def test_materialize_with_no_data_is_a_clear_error(repo):
    before = (repo / WORKING / "index.json").read_bytes()
    raw = repo / "data" / "raw" / "pose-factory" / B
    for path in sorted(raw.rglob("*"), reverse=True):
        path.chmod(0o755)
    shutil.rmtree(raw)  # what a clone has before `dvc pull`: the .dvc file only
    result = quiet_cli("materialize")
    assert result.code == 10 and f"batch {B}" in result.err and "dvc pull" in result.err
    assert "Traceback" not in result.err
    (repo / "params.yaml").write_text("batches: []\nworking: {batches: latest}\n")
    result = quiet_cli("materialize")
    assert result.code == 10 and "params.yaml (batches:)" in result.err and "hint: " in result.err
    assert (repo / WORKING / "index.json").read_bytes() == before


def test_a_set_moved_aside_by_a_killed_swap_is_put_back(repo):
    # Where the filesystem has no atomic exchange the swap is two renames; a kill between them leaves the
    # previous set aside. The next run, even one that fails, puts it back first.
    before = (repo / WORKING / "index.json").read_bytes()
    aside = repo / WORKING.parent / SCRATCH_NAME / f"{WORKING.name}.replaced"  # where fsutil.swap_dir sets it
    aside.parent.mkdir()
    (repo / WORKING).rename(aside)
    set_working(repo, link_mod="copy")
    assert quiet_cli("materialize").code == 2
    assert (repo / WORKING / "index.json").read_bytes() == before and leftovers(repo) == []


def test_one_build_at_a_time(repo):
    import fcntl
    import os

    fd = os.open(repo / WORKING.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a build in progress holds
        result = quiet_cli("materialize")
        assert result.code == 10 and f"({WORKING.as_posix()})" in result.err
    finally:
        os.close(fd)
    assert quiet_cli("materialize").code == 0
