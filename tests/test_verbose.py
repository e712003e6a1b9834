"""-v / --verbose shows what runs (the git, dvc and rclone commands, their whole output, DVC's own log) instead
of the six-line tail an error keeps."""

from __future__ import annotations

import json

import pytest

from helpers import publish_generated
from pose_factory.core.console import verbose_log
from pose_factory.core.errors import ToolError
from pose_factory.dataset import dvcrepo

pytestmark = pytest.mark.integration

BATCH = "2026-11-20_run-cycle"


def command_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("$ ")]


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_pull_with_verbose_shows_the_commands_it_runs(repo, cli, tmp_path):
    publish_generated(tmp_path, cli, BATCH)
    result = cli("pull", BATCH, "-v", "--commit", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["commit"]  # the log goes to stderr: stdout is still the JSON result alone
    shown = command_lines(result.err)
    # `dvc add`'s work is done by pose-sync itself (dataset/dvccache.py), and -v says so
    assert f"dvc add data/raw/pose-factory/{BATCH}: written by pose-sync" in result.err
    assert any(line.startswith("$ git commit ") for line in shown)
    quiet = cli("pull", BATCH)
    assert quiet.code == 0 and command_lines(quiet.err) == []


def test_a_failing_command_shows_its_whole_output_with_verbose(project, capsys):
    dvcrepo.git(project.root, "init", "-q")
    with pytest.raises(ToolError) as plain:
        dvcrepo.git(project.root, "status", "--no-such-option")
    assert "-v" in plain.value.hint
    assert capsys.readouterr().err == ""
    with verbose_log(True), pytest.raises(ToolError) as verbose:
        dvcrepo.git(project.root, "status", "--no-such-option")
    shown = capsys.readouterr().err.splitlines()
    assert shown[0] == "$ git status --no-such-option"
    kept = verbose.value.message.splitlines()[1:]
    assert len(kept) <= 6 < len(shown) - 1  # the error keeps a tail; -v showed all of git's output
    assert all(line in shown for line in kept)
