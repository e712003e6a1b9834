"""params.yaml stays as the user wrote it: the tool rewrites only the entries it changes, and `--commit`
records only what it changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML

from helpers import git, make_repository, publish_generated
from pose_factory.core.settings import load_settings
from pose_factory.dataset import params

HEAVY = """\
# Parameters the DVC pipeline reads.

# batches: every batch that `dvc repro` validates.
batches:   # pulled by pose-sync
# the reference render, keep it first
- 2026-11-01_run-cycle   # keep: reference set
- "2026-11-02_walk"
  # a comment inside the list, after its last item

# working: what materialize builds.
working:
    batches: latest            # or a list of batch ids
    modalities: [pose, openpose_json, depth, normal, seg, rgb]
    filters: {project: null, azimuth_deg: [0, 90], elevation_deg: ~, rig: null, pose_set: null,
              tags: [], sample_ids: []}
    naming: {prefix: '', digits: 6}   # prefix "pose_" gives pose_000000.png
    link_mode: 'hardlink'
    note: "double quoted"
    empty:
# final comment, no newline at the end"""


def untouched(before: str, after: str, changed: set[str]) -> list[str]:
    """Lines of `before` missing from `after`, other than those naming a changed entry."""
    kept = after.splitlines()
    return [line for line in before.splitlines() if line not in kept and not any(c in line for c in changed)]


@pytest.fixture
def heavy(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "params.yaml").write_text(HEAVY)
    return load_settings(root=root)


def test_register_rewrites_only_the_batch_lists(heavy):
    params.register(heavy, add=["2026-11-03_new", "2026-10-01_older"])
    after = heavy.params_file.read_text()
    assert untouched(HEAVY, after, set()) == []  # every line the user wrote is still there, verbatim
    assert after.splitlines()[3:10] == [
        "batches:   # pulled by pose-sync",
        "- 2026-10-01_older",
        "# the reference render, keep it first",
        "- 2026-11-01_run-cycle   # keep: reference set",
        '- "2026-11-02_walk"',
        "- 2026-11-03_new",
        "  # a comment inside the list, after its last item"]
    safe = YAML(typ="safe").load(after)
    assert safe["batches"] == ["2026-10-01_older", "2026-11-01_run-cycle", "2026-11-02_walk", "2026-11-03_new"]
    assert safe["working"]["filters"]["elevation_deg"] is None and safe["working"]["empty"] is None

    params.register(heavy, archive=["2026-11-01_run-cycle"])
    archived = heavy.params_file.read_text()
    assert untouched(HEAVY, archived, {"2026-11-01_run-cycle"}) == []
    assert "archived:\n  - 2026-11-01_run-cycle\n" in archived
    assert "# the reference render, keep it first" in archived  # a removed item's comment is not lost
    params.register(heavy, remove=["2026-10-01_older", "2026-11-02_walk", "2026-11-03_new"],
                    unarchive=["2026-11-01_run-cycle"])
    params.register(heavy, remove=["2026-11-01_run-cycle"])
    emptied = heavy.params_file.read_text()
    assert "batches: []   # pulled by pose-sync\n" in emptied and "archived: []\n" in emptied
    assert untouched(HEAVY, emptied, {"2026-11-0", "batches:"}) == []


def test_changing_a_nested_entry_touches_that_line_only(heavy):
    document = params.read_params(heavy)
    document["working"]["batches"] = ["2026-11-02_walk"]  # what prepare-batch does
    params.write_params(heavy, document)
    after = heavy.params_file.read_text()
    changed = [(a, b) for a, b in zip(HEAVY.splitlines(), after.splitlines()) if a != b]
    assert changed == [("    batches: latest            # or a list of batch ids",
                        "    batches: [2026-11-02_walk]            # or a list of batch ids")]
    assert len(after.splitlines()) == len(HEAVY.splitlines())


def test_fresh_file_and_flow_lists(tmp_path):
    settings = load_settings(root=tmp_path)
    params.register(settings, add=["2026-11-01_a"])
    assert settings.params_file.read_text() == "batches:\n  - 2026-11-01_a\n"
    settings.params_file.write_text("batches: [2026-11-01_a, '2026-11-05_b']  # flow stays flow\nworking: {}\n")
    params.register(settings, add=["2026-11-03_c"])
    assert settings.params_file.read_text() == (
        "batches: [2026-11-01_a, 2026-11-03_c, 2026-11-05_b]  # flow stays flow\nworking: {}\n")


@pytest.mark.integration
def test_pull_commit_leaves_an_unrelated_edit_of_params_uncommitted(project, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    repo = make_repository(project, cli, pipeline=False)
    root: Path = repo.root
    (root / "params.yaml").write_text(HEAVY.replace("batches:   # pulled", "batches: []  # pulled").replace(
        '- 2026-11-01_run-cycle   # keep: reference set\n- "2026-11-02_walk"\n', ""))
    git(root, "commit", "-qam", "commented params")
    committed_before = (root / "params.yaml").read_text()
    # The user is half-way through an edit of the working set when they pull.
    edited = committed_before.replace("link_mode: 'hardlink'", "link_mode: 'copy'   # trying copies")
    (root / "params.yaml").write_text(edited)
    (root / "notes.txt").write_text("staged, not mine to commit")
    git(root, "add", "notes.txt")

    publish_generated(tmp_path, cli, "2026-11-20_run-cycle", samples=1)
    result = cli("pull", "2026-11-20_run-cycle", "--commit", "-q")
    assert result.code == 0, result.err
    head = git(root, "show", "HEAD:params.yaml")
    assert "2026-11-20_run-cycle" in head and "link_mode: 'hardlink'" in head and "trying copies" not in head
    assert untouched(committed_before, head, {"batches: []"}) == []
    workspace = (root / "params.yaml").read_text()
    assert "2026-11-20_run-cycle" in workspace and "link_mode: 'copy'   # trying copies" in workspace
    diff = [line for line in git(root, "diff", "HEAD", "--", "params.yaml").splitlines()
            if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    assert diff == ["-    link_mode: 'hardlink'", "+    link_mode: 'copy'   # trying copies"]
    assert git(root, "show", "--name-only", "--format=", "HEAD").split() == [
        "data/raw/pose-factory/.gitignore", "data/raw/pose-factory/2026-11-20_run-cycle.dvc", "params.yaml"]
    assert git(root, "status", "--porcelain").splitlines() == ["A  notes.txt", " M params.yaml"]
