"""The kill-point mechanism itself: a process dies at the named step, and only there."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.integration  # each test runs a real Python process

PROGRAM = """
import sys
sys.path.insert(0, {scripts!r})
from pose_factory.core import killpoint
for step in range(3):
    killpoint.reached("demo:step")
    print("passed", step, flush=True)
killpoint.reached("demo:other")
print("end", flush=True)
"""


def run(kill_at: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"} | ({"POSE_FACTORY_KILL_AT": kill_at} if kill_at else {})
    code = PROGRAM.format(scripts=str(REPO / "scripts"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)


def test_no_kill_point_runs_to_the_end():
    result = run(None)
    assert result.returncode == 0 and result.stdout.split("\n")[-2] == "end"


def test_kill_at_the_nth_pass_of_a_named_point():
    result = run("demo:step:2")
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.splitlines() == ["passed 0"]


def test_kill_at_first_pass_and_other_names_untouched():
    assert run("demo:step").stdout == ""
    assert run("demo:other").stdout.splitlines()[-1] == "passed 2"
    assert run("elsewhere:step").returncode == 0
