"""The dvc.yaml pipeline: `dvc repro` validates each batch and materialises the ComfyUI working set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    building_once,
    copy_repository,
    dvc,
    environment_of_a_test,
    git,
    publish_generated,
    quiet_cli,
    run_script,
)
from pose_factory.core.fsutil import exclusive_lock
from pose_factory.core.layout import Layout
from pose_factory.dataset import materialize as materialize_module

pytestmark = pytest.mark.integration  # real git, dvc and `dvc repro`

A, B, C = "2026-11-01_run-cycle", "2026-11-02_walk", "2026-11-03_jump"
MODALITY_FOLDERS = ["depth", "normal", "openpose_json", "pose", "rgb", "seg"]


def working(repo) -> Path:
    return repo.root / "data" / "working" / "current_batch"


def set_working(repo, **values) -> None:
    from ruamel.yaml import YAML

    yaml = YAML()
    params = yaml.load((repo.root / "params.yaml").read_text())
    for key, value in values.items():
        params["working"][key] = value
    with (repo.root / "params.yaml").open("w") as handle:
        yaml.dump(params, handle)


def repro(repo, check: bool = True) -> subprocess.CompletedProcess:
    return dvc(repo.root, "repro", check=check)


def ran(output: str) -> list[str]:
    return sorted(line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage"))


@pytest.fixture(scope="module")
def two_batches_template(tmp_path_factory):
    """A pipeline repository with batches A and B (3 samples each) pulled and committed, built once."""
    base = tmp_path_factory.mktemp("two-batches")
    with building_once(base, pipeline=True) as (repo, env):
        for batch_id, seed, hour in ((A, 1, "08"), (B, 2, "09")):
            env.setenv("SOURCE_DATE_EPOCH", str(1793520000 + int(hour) * 3600))
            publish_generated(base, quiet_cli, batch_id, samples=3, seed=seed)
            assert quiet_cli("pull", batch_id, "--commit", "-q").code == 0
    return repo


@pytest.fixture(scope="module")
def reproduced_template(two_batches_template, tmp_path_factory):
    """The same after a first `dvc repro` (both validate stages and the working set), built once."""
    base = tmp_path_factory.mktemp("reproduced")
    with environment_of_a_test(base) as patch:
        repo = copy_repository(two_batches_template, base / "project", patch)
        repro(repo)
    return repo


@pytest.fixture
def two_batches(two_batches_template, tmp_path, monkeypatch):
    """A private copy: batches A and B pulled and committed, `dvc repro` not run yet."""
    return copy_repository(two_batches_template, tmp_path / "project", monkeypatch)


@pytest.fixture
def reproduced(reproduced_template, tmp_path, monkeypatch):
    """A private copy of two_batches after its first `dvc repro`."""
    return copy_repository(reproduced_template, tmp_path / "project", monkeypatch)


def test_repro_validates_every_batch_and_builds_the_latest_working_set(two_batches, cli):
    repo = two_batches
    result = repro(repo)
    assert ran(result.stdout) == ["materialize", f"validate@{A}", f"validate@{B}"]
    out = working(repo)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == MODALITY_FOLDERS
    index = json.loads((out / "index.json").read_text())
    assert index["version"] == 1 and [b["batch_id"] for b in index["batches"]] == [B]
    assert [s["name"] for s in index["samples"]] == ["000000", "000001", "000002"]
    for folder in MODALITY_FOLDERS:
        names = sorted(p.stem for p in (out / folder).iterdir())
        assert names == ["000000", "000001", "000002"], folder
    # Hardlinks by default: the same inode as the read-only raw file, which cannot be written through.
    first = index["samples"][0]
    raw = repo.root / "data" / "raw" / "pose-factory" / first["source"]["depth"]
    linked = out / first["files"]["depth"]
    assert linked.stat().st_ino == raw.stat().st_ino
    assert not raw.stat().st_mode & 0o222
    assert (out / "index.csv").read_text().splitlines()[0].startswith("index,name,batch_id,sample_id,pose,")
    assert json.loads(dvc(repo.root, "status", "--json").stdout) == {}, "nothing is stale"
    metrics = dvc(repo.root, "metrics", "show", "--json").stdout
    for key in ("samples", "files", "errors", "warnings"):
        assert f'"{key}"' in metrics
    assert dvc(repo.root, "plots", "show", "-o", str(repo.root / "data" / "plots")).returncode == 0
    assert (repo.root / "data" / "plots" / "index.html").is_file()


def test_adding_a_batch_validates_only_that_batch_and_a_working_key_reruns_only_materialize(
        reproduced, cli, tmp_path):
    repo = reproduced
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "repro")
    publish_generated(tmp_path / "c", cli, C, samples=2, seed=3)
    assert cli("pull", C, "-q").code == 0
    assert ran(repro(repo).stdout) == ["materialize", f"validate@{C}"]
    set_working(repo, link_mode="copy")
    assert ran(repro(repo).stdout) == ["materialize"]
    assert json.loads(dvc(repo.root, "status", "--json").stdout) == {}, "nothing is stale"
    index = json.loads((working(repo) / "index.json").read_text())
    assert index["link_mode"] == "copy"


def test_a_failing_batch_fails_its_stage_and_leaves_the_working_set_alone(reproduced, cli):
    repo = reproduced
    before = (working(repo) / "index.json").read_bytes()
    damaged = repo.root / "data" / "raw" / "pose-factory" / B / "seg" / "000001.png"
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-20])
    result = repro(repo, check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "seg/000001.png" in text and "size" in text
    assert (working(repo) / "index.json").read_bytes() == before


@pytest.mark.parametrize("mode", ["symlink", "copy", "clone"])
def test_link_modes(reproduced, cli, mode):
    repo = reproduced
    set_working(repo, link_mode=mode)
    repro(repo)
    index = json.loads((working(repo) / "index.json").read_text())
    sample = index["samples"][1]
    linked = working(repo) / sample["files"]["rgb"]
    raw = repo.root / "data" / "raw" / "pose-factory" / sample["source"]["rgb"]
    assert linked.read_bytes() == raw.read_bytes()
    if mode == "symlink":
        assert linked.is_symlink() and not os.readlink(linked).startswith("/")
    else:
        assert not linked.is_symlink() and linked.stat().st_ino != raw.stat().st_ino
        linked.chmod(0o644)
        linked.write_bytes(b"changed in the working set")
        assert raw.read_bytes() != b"changed in the working set"


def test_the_raw_mirror_cannot_be_written_through_a_hardlink(reproduced):
    repo = reproduced
    linked = next((working(repo) / "pose").iterdir())
    probe = [sys.executable, "-c", f"open({str(linked)!r}, 'r+b').write(b'x')"]
    if os.geteuid() == 0:  # root ignores file modes: try as an ordinary user, as ComfyUI would run
        probe = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *probe]
    result = subprocess.run(probe, capture_output=True, text=True)
    assert result.returncode != 0 and "Permission denied" in result.stderr


def test_an_interrupted_materialize_leaves_the_previous_set_intact(reproduced, monkeypatch):
    repo = reproduced
    before = (working(repo) / "index.json").read_bytes()
    real_link_folder = materialize_module.link_folder
    calls = {"n": 0}

    def dying_link_folder(mode, pairs, dest_folder, counts):
        calls["n"] += 1
        if calls["n"] == 3:  # the third modality folder, two already linked
            raise KeyboardInterrupt
        real_link_folder(mode, pairs, dest_folder, counts)

    monkeypatch.setattr(materialize_module, "link_folder", dying_link_folder)
    monkeypatch.chdir(repo.root)
    set_working(repo, batches=[A])
    with pytest.raises(KeyboardInterrupt):
        materialize_module.materialize(Path("params.yaml"), Path("data/raw/pose-factory"),
                                       Path("data/reports/validate"), Path("data/working/current_batch"))
    assert (working(repo) / "index.json").read_bytes() == before
    assert [p.name for p in working(repo).parent.iterdir() if p.name != ".gitkeep"] == ["current_batch"]


BAD_WORKING = [  # a wrong `working:` entry, and what the error names: the key and the value
    ({"link_mod": "copy"}, ("'working.link_mod'",)),
    ({"link_mode": "reflink"}, ("'working.link_mode'", "'reflink'")),
    ({"batches": ["2026-01-01_nope"]}, ("'working.batches'", "'2026-01-01_nope'")),
    ({"filters": {"azimuth": [0, 90]}}, ("'working.filters.azimuth'",)),
    ({"filters": {"rig": "nobody"}}, ("filters",)),
    ({"modalities": ["pose", "thermal"]}, ("'working.modalities[1]'",)),
]


def test_every_working_key_is_validated_by_name(reproduced, cli, monkeypatch):
    repo = reproduced
    before = (working(repo) / "index.json").read_bytes()
    monkeypatch.chdir(repo.root)
    original = (repo.root / "params.yaml").read_text()
    for values, named in BAD_WORKING:
        (repo.root / "params.yaml").write_text(original)
        set_working(repo, **values)
        result = cli("materialize")  # what the stage runs, with dvc.yaml's default paths
        assert result.code == 2 and all(fragment in result.err for fragment in named), (values, result.err)
        assert "params.yaml" in result.err and "Traceback" not in result.err
    assert (working(repo) / "index.json").read_bytes() == before
    # Through dvc repro the same error fails the stage.
    failed = repro(repo, check=False)
    assert failed.returncode != 0 and "'working.modalities[1]'" in failed.stdout + failed.stderr


def test_filters_and_naming(reproduced):
    repo = reproduced
    set_working(repo, batches=[A, B], filters={"azimuth_deg": [0, 100], "sample_ids": []},
                naming={"prefix": "pose_", "digits": 5}, modalities=["pose", "depth"])
    repro(repo)
    index = json.loads((working(repo) / "index.json").read_text())
    # Spread sampling visits azimuths 0, 180, 90, ... so samples 0 and 2 of each batch are in [0, 100].
    assert [(s["batch_id"], s["sample_id"]) for s in index["samples"]] == [
        (A, "000000"), (A, "000002"), (B, "000000"), (B, "000002")]
    assert sorted(p.name for p in (working(repo) / "pose").iterdir()) == [
        "pose_00000.png", "pose_00001.png", "pose_00002.png", "pose_00003.png"]
    assert sorted(p.name for p in working(repo).iterdir() if p.is_dir()) == ["depth", "pose"]


def test_prepare_batch_and_comfyui_link(two_batches, cli, tmp_path):
    repo = two_batches
    result = cli("prepare-batch", A)
    assert result.code == 0, result.err
    assert f"working set for {A}: 3 samples" in result.out
    assert json.loads((working(repo) / "index.json").read_text())["batches"][0]["batch_id"] == A
    unknown = cli("prepare-batch", "2026-01-01_nope")
    assert unknown.code == 10 and "pose-sync pull 2026-01-01_nope" in unknown.err
    params_before = (repo.root / "params.yaml").read_bytes()
    with exclusive_lock(Layout.of(repo.root).lock_file, "pull"):  # a pull registering a batch in params.yaml
        busy = cli("prepare-batch", B)
    assert busy.code == 17 and "pull" in busy.err
    assert (repo.root / "params.yaml").read_bytes() == params_before

    comfy = tmp_path / "ComfyUI"
    (comfy / "input").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    linked = cli("comfyui", "link", comfy)
    assert linked.code == 0, linked.err
    link = comfy / "input" / "pose-factory"
    assert link.is_symlink() and (link / "pose" / "000000.png").is_file()
    assert cli("comfyui", "link", comfy).code == 0  # re-linking replaces the symlink
    (comfy / "input" / "mine").mkdir()
    clash = cli("comfyui", "link", comfy, "--name", "mine")
    assert clash.code == 2 and "--name" in clash.err
    assert (comfy / "input" / "mine").is_dir() and not (comfy / "input" / "mine").is_symlink()
    not_comfy = cli("comfyui", "link", tmp_path / "elsewhere")
    assert not_comfy.code == 2 and str(tmp_path / "elsewhere") in not_comfy.err


def test_fresh_clone_after_dvc_pull_reproduces_the_same_index(reproduced, tmp_path):
    repo = reproduced
    git(repo.root, "add", "-A")
    git(repo.root, "commit", "-q", "-m", "working set")
    dvc(repo.root, "push", "-q")
    clone = tmp_path / "second-machine"
    git(tmp_path, "clone", "-q", str(repo.root), str(clone))
    # A local-folder DVC remote is machine-local (.dvc/config.local): each clone runs `pose-sync init`.
    assert run_script(["init"], cwd=clone, env={"POSE_FACTORY_ROOT": str(clone)}).returncode == 0
    dvc(clone, "pull", "-q")
    dvc(clone, "repro", "-q")
    assert (clone / "data/working/current_batch/index.json").read_bytes() == (
        working(repo) / "index.json").read_bytes()


def test_a_broken_params_file_is_a_clear_error(pipeline_repo, cli, monkeypatch):
    monkeypatch.chdir(pipeline_repo.root)
    (pipeline_repo.root / "params.yaml").write_text("batches: [\n")
    result = cli("materialize")
    assert result.code == 2 and "params.yaml" in result.err and "line 2" in result.err
    assert "Traceback" not in result.err
    (pipeline_repo.root / "params.yaml").unlink()
    result = cli("materialize")
    assert result.code == 2 and "params.yaml" in result.err
