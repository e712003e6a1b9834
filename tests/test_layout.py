"""The project's folders come from one place (core/layout.py): dvc.yaml, the CLI's defaults, .gitignore and the
settings agree with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from pose_factory.cli import build_parser
from pose_factory.core import layout
from pose_factory.core.layout import Layout
from pose_factory.core.settings import load_settings
from pose_factory.dataset.validate import PLOT_FILES

REPO = Path(__file__).resolve().parents[1]
ITEM = "${item}"


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def command_options(cmd: str) -> dict[str, str]:
    """`--flag value` pairs of a stage's command line."""
    words = cmd.split()
    return {word: words[i + 1] for i, word in enumerate(words) if word.startswith("--") and i + 1 < len(words)}


def test_the_validate_stage_uses_the_layout_paths():
    stage = stages()["validate"]["do"]
    batch, reports = f"{layout.MIRROR.as_posix()}/{ITEM}", f"{layout.VALIDATION_REPORTS.as_posix()}/{ITEM}"
    assert batch in stage["cmd"].split() and command_options(stage["cmd"])["--report"] == reports
    assert batch in stage["deps"]
    outputs = [next(iter(entry)) for key in ("outs", "metrics", "plots") for entry in stage[key]]
    assert {Path(path).parent.as_posix() for path in outputs} == {reports}
    assert {Path(path).name for path in outputs} == {"report.json", "metrics.json", *PLOT_FILES.values()}


def test_the_materialize_stage_uses_the_layout_paths():
    stage = stages()["materialize"]
    options = command_options(stage["cmd"])
    expected = {"--params": layout.PARAMS_FILE, "--raw": layout.MIRROR, "--reports": layout.VALIDATION_REPORTS,
                "--curation": layout.CURATION, "--out": layout.WORKING_SET}
    assert {flag: options[flag] for flag in expected} == {flag: path.as_posix() for flag, path in expected.items()}
    for path in (layout.MIRROR, layout.VALIDATION_REPORTS, layout.CURATION):
        assert path.as_posix() in stage["deps"]
    assert [next(iter(entry)) for entry in stage["outs"]] == [layout.WORKING_SET.as_posix()]


def test_the_materialize_command_defaults_are_the_stage_paths():
    args = build_parser().parse_args(["materialize"])
    assert (Path(args.params), Path(args.raw), Path(args.reports), Path(args.curation), Path(args.out)) == (
        layout.PARAMS_FILE, layout.MIRROR, layout.VALIDATION_REPORTS, layout.CURATION, layout.WORKING_SET)


def test_what_is_made_on_demand_is_git_ignored():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    for folder in (layout.LOCAL_BUCKET, layout.POD_OUTBOX, layout.JOBS, layout.CACHE, layout.DEMO,
                   layout.REVIEW_PAGES, layout.CONTACT_SHEET_PAGES):
        assert f"/{folder.as_posix()}/" in ignored, folder
    assert f"/{layout.WORKING.as_posix()}/*" in ignored  # the working set and ComfyUI's outputs


@pytest.mark.integration
def test_what_a_write_killed_half_way_leaves_is_never_committed():
    # atomic_write_path's temporary file beside params.yaml or a .dvc file, asked of git itself
    mirror = layout.MIRROR.as_posix()
    for leftover in (".params.yaml.k2x9_q1a.partial", f"{mirror}/.2026-11-02_run.dvc.abcd1234.partial"):
        assert subprocess.run(["git", "check-ignore", "--no-index", "-q", leftover], cwd=REPO).returncode == 0
    assert subprocess.run(["git", "check-ignore", "--no-index", "-q", "params.yaml"], cwd=REPO).returncode == 1


def test_settings_give_the_layout_of_their_project(project):
    settings = load_settings()
    assert settings.layout == Layout.of(project.root)
    assert settings.mirror_dir == project.root / "data" / "raw" / "pose-factory"
    assert settings.staging_dir.parent == settings.transaction_dir == project.root / "data" / "raw" / ".pose-sync"
    assert settings.layout.working_set == project.root / "data" / "working" / "current_batch"


def test_every_folder_is_inside_the_project(tmp_path):
    place = Layout.of(tmp_path)
    folders = [getattr(place, name) for name in dir(Layout) if isinstance(getattr(Layout, name), property)]
    assert len(folders) > 10
    assert all(folder.is_relative_to(tmp_path) for folder in folders)
