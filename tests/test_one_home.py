"""One home for each helper: the .dvc-file reader, the batch statistics, the settings defaults and the names of
the environment variables, each defined once and the other places derived from it or held equal to it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import yaml

from pose_factory.cli import _table
from pose_factory.core import envnames, schemas
from pose_factory.core.settings import DEFAULTS, load_settings
from pose_factory.dataset import dvcrepo
from pose_factory.dataset.diff import Version
from pose_factory.dataset.materialize import DEFAULT_WORKING
from pose_factory.dataset.pages import PLOTS, _plot_rows
from pose_factory.dataset.validate import validate_batch, write_report
from pose_factory.producer.generate import default_job, generate_batch

REPO = Path(__file__).resolve().parents[1]
BATCH = "2026-11-20_run-cycle"


def test_the_dvc_file_reader_gives_the_recorded_folder_or_none(tmp_path):
    good = tmp_path / "b.dvc"
    good.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  size: 10\n  nfiles: 2\n  path: b\n")
    assert dvcrepo.recorded_out(good) == {"md5": "0123456789abcdef0123456789abcdef.dir", "size": 10, "nfiles": 2,
                                         "path": "b"}
    for text in ("outs: []\n", "not: [a, dvc file\n", "outs:\n- path: b\n", "\x00\x01"):
        good.write_text(text)
        assert dvcrepo.recorded_out(good) is None, text
    assert dvcrepo.recorded_out(tmp_path / "missing.dvc") is None


def test_the_review_pages_chart_what_the_validate_stage_plots(tmp_path):
    """Unvalidated, a batch's charts are computed from its annotations by the validate stage's own counting:
    they equal the CSVs the stage writes (dvc plots), value for value."""
    job = default_job("run-cycle", 4, (48, 48), seed=3)
    made = generate_batch(job, tmp_path / "data" / "raw" / "pose-factory", load_settings(root=tmp_path),
                          batch_id=BATCH, workers=1)
    workspace = Version(tmp_path, None)
    computed = _plot_rows(workspace, BATCH, "raw")
    write_report(validate_batch(made.batch_dir), tmp_path / "data" / "reports" / "validate" / BATCH)
    from_csv = _plot_rows(workspace, BATCH, "raw")
    assert set(computed) == set(from_csv) == {plot.file for plot in PLOTS}
    assert {name: [{k: str(v) for k, v in row.items()} for row in rows] for name, rows in computed.items()} == from_csv
    assert sum(int(row["samples"]) for row in from_csv["azimuth.csv"]) == 4


def test_the_defaults_are_written_once_and_the_other_places_agree():
    """core/settings.DEFAULTS and materialize.DEFAULT_WORKING are the defaults; config/local.example.yaml
    (tests/test_config.py), params.yaml's working: section and the schemas must agree with them."""
    assert yaml.safe_load((REPO / "params.yaml").read_text())["working"] == DEFAULT_WORKING
    assert schemas.problems(DEFAULTS, "config", "DEFAULTS") == []
    assert schemas.problems(DEFAULT_WORKING, "working", "DEFAULT_WORKING") == []
    config_schema = json.loads((REPO / "schemas" / "config.schema.json").read_text())
    # Every setting has a default and a schema entry (data_root: only its old value, no longer a setting).
    assert set(config_schema["properties"]) - {"data_root"} == set(DEFAULTS)
    working_schema = json.loads((REPO / "schemas" / "working.schema.json").read_text())
    assert set(working_schema["properties"]) == set(DEFAULT_WORKING)


ENV_NAME = re.compile(r"\b(?:POSE_FACTORY|CLOUDFLARE_R2|RUNPOD|AWS)_[A-Z0-9_]*[A-Z0-9]\b|\bSOURCE_DATE_EPOCH\b")


def test_environment_variables_are_named_in_envnames_only():
    """Every environment variable the code reads or sets is written out once, in core/envnames.py; the code
    (messages and hints included) uses the constants. Docstrings may name them for the reader."""
    package = REPO / "scripts" / "pose_factory"
    written_out = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "core" / "envnames.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                written_out += [f"{path.relative_to(package)}:{node.lineno}: {name}"
                                for name in ENV_NAME.findall(node.value)]
    assert written_out == []
    names = {value for key, value in vars(envnames).items() if key.startswith("ENV_")}
    assert all(ENV_NAME.fullmatch(name) for name in names) and len(names) == len(
        [key for key in vars(envnames) if key.startswith("ENV_")])  # each name once


def test_tables_are_laid_out_by_rich_as_plain_aligned_columns(capsys):
    """The CLI's tables (list, status, config, job list / status, list-jobs) go through rich.table: columns two
    spaces apart, no trailing space, and a cell from the bucket is escaped and never read as markup or emoji."""
    _table([("BATCH", "STATE"), ("2026-11-20_run-cycle", "invalid"), ("[bold]x[/bold] :smile:", "a\x1b[31mb")])
    width = len("[bold]x[/bold] :smile:")
    assert capsys.readouterr().out.splitlines() == [
        "BATCH".ljust(width) + "  STATE",
        "2026-11-20_run-cycle".ljust(width) + "  invalid",
        "[bold]x[/bold] :smile:  a\\x1b[31mb",
    ]
