"""Stages re-run when their code changes: each stage's `deps:` in dvc.yaml lists every file of this repository the
stage's command loads or reads (its Python modules, the schemas), so an edit to any of them makes `dvc status` say
the stage changed. Each stage is run here for real, in a subprocess, on a tiny batch, and what it loaded is
compared with its deps: a new import cannot go stale silently."""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pose_factory.core.settings import load_settings
from pose_factory.dataset.curation import record_decision, sample_fingerprints
from pose_factory.producer.generate import default_job, generate_batch

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BATCH = "2026-11-20_run-cycle"

# Runs a stage's script as `python` would, and writes down what it imported and opened when it exits.
PROBE = """
import atexit, json, os, runpy, sys
opened = set()
def watch(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        opened.add(os.path.abspath(os.fsdecode(args[0])))
sys.addaudithook(watch)
def dump():
    files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
    with open(os.environ["STAGE_PROBE_OUT"], "w") as out:
        json.dump({"modules": sorted(f for f in files if f), "opened": sorted(opened)}, out)
atexit.register(dump)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def run_stage(cmd: str, cwd: Path, tmp_path: Path) -> set[str]:
    """Run a stage's command with the probe; return the repository files (relative) it loaded or opened."""
    words = shlex.split(cmd)
    assert words[0] == "python" and words[1].startswith("scripts/"), cmd
    record = tmp_path / f"probe-{len(list(tmp_path.glob('probe-*')))}.json"
    # The start-up hook off: nothing of pose_factory is loaded before the stage's own imports.
    env = {**os.environ, "STAGE_PROBE_OUT": str(record), "POSE_FACTORY_ENVHOOK": "off"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO / words[1]), *words[2:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(record.read_text())
    venv = Path(sys.prefix).resolve()  # scripts/.venv: the pinned dependencies, not this repository's code
    used = set()
    for path in map(Path, seen["modules"] + seen["opened"]):
        if (path.is_relative_to(REPO) and not path.resolve().is_relative_to(venv) and path.is_file()
                and "__pycache__" not in path.parts):
            used.add(path.relative_to(REPO).as_posix())
    return used


def holds_no_code(rel: str) -> bool:
    """A package __init__.py with only a docstring and constants: loading it runs nothing a stage depends on."""
    tree = ast.parse((REPO / rel).read_text())
    return all(isinstance(node, (ast.Expr, ast.Assign)) and not isinstance(getattr(node, "value", None), ast.Call)
               for node in tree.body)


def uncovered(used: set[str], deps: list[str]) -> list[str]:
    return sorted(rel for rel in used
                  if not any(rel == dep or rel.startswith(dep.rstrip("/") + "/") for dep in deps)
                  and not (rel.endswith("/__init__.py") and holds_no_code(rel)))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A batch in the mirror, validated, with one curation decision: what both stages need to run."""
    root = tmp_path_factory.mktemp("stages")
    job = default_job("run-cycle", 2, (48, 48), seed=1)
    made = generate_batch(job, root / "data" / "raw" / "pose-factory", load_settings(root=root), batch_id=BATCH,
                          workers=1)
    manifest = json.loads((made.batch_dir / "manifest.json").read_text())
    sid = manifest["samples"][0]["sample_id"]
    record_decision(root / "data" / "curation", BATCH, sid, "reject", "other", sample_fingerprints(manifest)[sid])
    (root / "params.yaml").write_text(f"batches: [{BATCH}]\nworking: {{batches: latest}}\n")
    return root


def test_the_validate_stage_lists_all_it_loads(project, tmp_path):
    stage = stages()["validate"]["do"]
    used = run_stage(stage["cmd"].replace("${item}", BATCH), project, tmp_path)
    assert "scripts/pose_factory/dataset/validate.py" in used and any(rel.startswith("schemas/") for rel in used)
    assert "scripts/pose_factory/cli.py" not in used  # the lean entry point keeps cli.py out of the deps
    assert uncovered(used, stage["deps"]) == []


def test_the_materialize_stage_lists_all_it_loads(project, tmp_path):
    validate = stages()["validate"]["do"]["cmd"].replace("${item}", BATCH)
    run_stage(validate, project, tmp_path)  # materialize reads the validation metrics
    stage = stages()["materialize"]
    used = run_stage(stage["cmd"], project, tmp_path)
    assert {"scripts/pose_factory/dataset/materialize.py", "scripts/pose_factory/dataset/curation.py"} <= used
    assert (project / "data" / "working" / "current_batch" / "index.json").is_file()
    assert uncovered(used, stage["deps"]) == []


def test_the_deps_list_no_code_a_stage_does_not_load(project, tmp_path):
    """Truthful both ways: a listed file the stage never loads would rerun it for nothing."""
    validate = stages()["validate"]["do"]
    materialize = stages()["materialize"]
    loaded = {"validate": run_stage(validate["cmd"].replace("${item}", BATCH), project, tmp_path),
              "materialize": run_stage(materialize["cmd"], project, tmp_path)}
    for name, deps in (("validate", validate["deps"]), ("materialize", materialize["deps"])):
        code = [dep for dep in deps if dep.startswith("scripts/")]
        assert [dep for dep in code if dep not in loaded[name]] == [], name
