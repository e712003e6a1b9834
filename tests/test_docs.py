"""The README is the manual: its set-up commands, command reference and examples must stay true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO, run_script
from pose_factory.cli import build_parser

README = (REPO / "README.md").read_text()


def test_quick_start_has_exactly_the_two_commands_and_ci_runs_the_test_one():
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick_start, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


def test_every_command_is_in_the_reference_and_every_documented_option_exists():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    reference = README.split("## Command reference", 1)[1].split("\n## ", 1)[0]
    for name, sub in subparsers.items():
        assert f"`pose-sync {name}" in reference, f"{name} is not in the README command reference"
        options = {opt for action in sub._actions for opt in action.option_strings}
        for nested in sub._actions:  # a command group such as `comfyui link`
            if isinstance(nested.choices, dict):
                options |= {opt for child in nested.choices.values() for a in child._actions
                            for opt in a.option_strings}
        row = next(line for line in reference.splitlines() if line.startswith(f"| `pose-sync {name}"))
        for documented in re.findall(r"(--[a-z][a-z-]*)", row):
            assert documented in options, f"README documents {documented} for {name}, which does not exist"


def test_the_reference_names_every_option_of_every_command():
    """The other way round: a user reading the table sees every option (the common ones are said once)."""
    common = {"--help", "--config", "--quiet", "--verbose", "--backend"}
    reference = README.split("## Command reference", 1)[1].split("\n## ", 1)[0]

    def commands(parser, prefix=""):
        for action in parser._actions:
            if isinstance(action.choices, dict):
                for name, child in action.choices.items():
                    nested = any(isinstance(a.choices, dict) for a in child._actions)
                    yield from commands(child, f"{prefix}{name} ") if nested else [(f"{prefix}{name}", child)]

    found = dict(commands(build_parser()))
    assert {"pull-latest", "comfyui queue", "job watch", "worker run"} <= set(found)
    for name, sub in found.items():
        rows = " ".join(line for line in reference.splitlines()
                        if re.match(rf"\| `pose-sync {re.escape(name)}[ `]", line))
        assert rows, f"`pose-sync {name}` has no row in the README command reference"
        for action in sub._actions:
            for option in set(action.option_strings) - common:
                if option.startswith("--"):
                    assert option in rows, f"the README row of `pose-sync {name}` does not mention {option}"


@pytest.mark.integration
def test_make_help_lists_the_documented_targets():
    result = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    for target in ("setup", "demo", "test", "test-fast", "s3-local"):
        assert re.search(rf"^\s+{target}\s+\S", plain, re.M), target
        assert f"make {target}" in README or target == "setup"


@pytest.mark.integration
def test_make_setup_says_what_it_does_and_installs_the_hook_without_a_warning(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    plan = subprocess.run(["make", "-n", "-B", "setup", f"VENV={venv}"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.splitlines()
    installs = [i for i, line in enumerate(plan) if "pip install" in line]
    assert len(installs) == 2, "the pinned packages, then pose-sync itself"
    for i in installs:
        assert "--quiet" not in plan[i] and "awk" in plan[i], "pip's progress is shown as a count"
        assert any(line.startswith('echo "==> installing') for line in plan[i - 3:i]), "each step is announced"
    assert any("requirements.lock" in line and "==>" in line for line in plan)
    assert any("1-2 minutes" in line for line in plan), "and how long it takes"
    # The start-up hook is installed by a call, not `python -m` on a module the hook has already imported.
    [hook] = [line for line in plan if "envhook" in line]
    done = subprocess.run(["bash", "-c", hook], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "scripts")})
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr
    assert list(venv.glob("lib/python*/site-packages/pose_factory_r2_env.pth")), done.stdout


@pytest.mark.integration
def test_readme_example_commands_run(project, tmp_path):
    example = README.split("Example:", 1)[1]
    block = re.search(r"```sh\n(.*?)```", example, re.S).group(1)
    lines = [line for line in block.splitlines() if line.startswith("pose-sync ")]
    assert len(lines) == 3
    generate = lines[0].split()[1:]
    generate[generate.index("--samples") + 1] = "2"  # same command, smaller: the suite stays fast
    generate[generate.index("--size") + 1] = "64x64"
    made = run_script([*generate, "-q"], cwd=project.root)
    assert made.returncode == 0, made.stderr
    batch_id = made.stdout.strip()
    publish = [part.replace("2026-11-28_run-cycle", batch_id) for part in lines[1].split()[1:]]
    assert run_script(publish, cwd=project.root).returncode == 0
    listing = run_script(lines[2].split()[1:], cwd=project.root)
    assert listing.returncode == 0
    assert [b["batch_id"] for b in json.loads(listing.stdout)["batches"]] == [batch_id]


@pytest.mark.integration
def test_demo_runs_the_loop_on_the_embedded_default_even_with_r2_credentials_set(project):
    env = {"CLOUDFLARE_R2_ACCESS_KEY_ID": "TESTKEYID-REALISTIC-01", "CLOUDFLARE_R2_SECRET_ACCESS_KEY": "real-secret-x",
           "CLOUDFLARE_R2_ACCOUNT_ID": "deadbeef", "POSE_FACTORY_ROOT": str(project.root)}
    result = subprocess.run([sys.executable, "-m", "pose_factory.devtools.demo", "--samples", "2", "--size", "64x64"],
                            cwd=project.root, env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "2 batch(es) in local folder" in out and "2 complete" in out
    assert "files pushed" in out and "2 up-to-date" in out
    assert "real-secret-x" not in out + result.stderr
    sandbox = project.root / "data" / "demo" / "repo"
    published = sorted(p.name for p in (sandbox / "data" / "local-bucket" / "pose-factory" / "batches").iterdir())
    assert [name.split("_", 1)[1] for name in published] == ["run-cycle", "walk-cycle"]
    log = subprocess.run(["git", "log", "--format=%s"], cwd=sandbox, capture_output=True, text=True).stdout
    assert log.count("Pull pose batches") == 2
    shown = re.findall(r"^\$ git add -A && git commit -m '([^']+)'$", out, re.M)
    assert len(shown) == 2 and all(message in log.splitlines() for message in shown), "the demo commits what it shows"
    assert any((project.root / "data" / "demo" / "dvc-remote").rglob("*")), "dvc push reached the remote"
    index = json.loads((sandbox / "data" / "working" / "current_batch" / "index.json").read_text())
    assert len(index["samples"]) == 2 and "The ComfyUI working set is" in out
    assert project.files_outside_data() == []
