"""One error taxonomy: every error class and exit code lives in core/errors.py, and README's table is its ExitCode."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import pose_factory
from helpers import make_repository, publish_generated
from pose_factory.bucket.backends import open_storage
from pose_factory.core import errors
from pose_factory.core.errors import BatchesFailedError, BatchNotFoundError, ExitCode, IntegrityError, PoseFactoryError
from pose_factory.core.settings import load_settings
from pose_factory.dataset.pull import pull

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "scripts" / "pose_factory"


def all_modules() -> list[str]:
    return [info.name for info in pkgutil.walk_packages(pose_factory.__path__, "pose_factory.")
            if not info.name.endswith("__main__")]  # that one runs the CLI


def subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= subclasses(sub)
    return found


def test_every_error_class_is_defined_in_errors_py():
    for name in all_modules():
        importlib.import_module(name)
    elsewhere = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in subclasses(PoseFactoryError)
                       if cls.__module__.startswith("pose_factory") and cls.__module__ != errors.__name__)
    assert elsewhere == []


def test_every_error_has_a_documented_exit_code():
    for cls in {PoseFactoryError, *subclasses(PoseFactoryError)}:
        assert isinstance(cls.exit_code, ExitCode), cls
    used = {cls.exit_code for cls in {PoseFactoryError, *subclasses(PoseFactoryError)}}
    # Codes no error carries are returned by the CLI itself: success, interrupted, and a report's verdict.
    assert set(ExitCode) - used == {ExitCode.OK, ExitCode.INTERRUPTED}


def test_no_module_subclasses_an_error_outside_errors_py():
    """Also inside functions, and private ones: they would escape the taxonomy (and README's table)."""
    taxonomy = {name for name in dir(errors) if isinstance(getattr(errors, name), type)
                and issubclass(getattr(errors, name), PoseFactoryError)}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "core" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(base, "id", None) or getattr(base, "attr", None) for base in node.bases}
                if bases & taxonomy:
                    found.append(f"{path.relative_to(PACKAGE)}: {node.name}")
    assert found == []


def test_the_cli_returns_exit_codes_by_name():
    """No literal exit code in cli.py but 0: every other one is an ExitCode member."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    literals = [node.lineno for node in ast.walk(tree)
                if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int) and node.value.value != 0]
    conditional = [node.lineno for node in ast.walk(tree)
                   if isinstance(node, ast.IfExp) and any(isinstance(part, ast.Constant) and isinstance(part.value, int)
                                                          and part.value != 0 for part in (node.body, node.orelse))]
    assert literals == [] and conditional == []


def test_readme_exit_code_table_is_the_enum():
    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \|$", text, flags=re.M)
    assert [(int(code), meaning) for code, meaning in rows] == [(code.value, code.meaning) for code in ExitCode]


def test_an_error_reports_its_code_as_an_int():
    error = errors.DiskFullError("cannot write", where="x")
    assert error.exit_code == 18 and int(error.exit_code) == 18 and error.exit_code is ExitCode.DISK


@pytest.mark.integration
def test_a_pull_of_several_batches_keeps_every_failure(project, cli, tmp_path, monkeypatch):
    """One batch pulled, one still uploading (7), one not in the bucket (8): both failures are reported, each
    with its batch, and the exit code is the first one's."""
    monkeypatch.setenv("POSE_FACTORY_BACKEND", "local")
    make_repository(project, cli, pipeline=False)
    good, uploading, absent = "2026-11-20_run-cycle", "2026-11-21_run-cycle", "2026-11-22_run-cycle"
    publish_generated(tmp_path, cli, good)
    publish_generated(tmp_path, cli, uploading, seed=2)
    settings = load_settings()
    storage = open_storage(settings)
    storage.delete(f"batches/{uploading}/_complete.json")
    with pytest.raises(BatchesFailedError) as caught:
        pull(storage, settings, [good, uploading, absent])
    assert {batch: type(exc) for batch, exc in caught.value.failures.items()} == {
        uploading: IntegrityError, absent: BatchNotFoundError}
    assert caught.value.exit_code == IntegrityError.exit_code
    assert (settings.mirror_dir / good / "manifest.json").is_file()  # the others are done

    result = cli("pull", good, uploading, absent)
    assert result.code == IntegrityError.exit_code
    listed = [line for line in result.err.splitlines() if line.startswith("  - ")]
    assert [line.split(":")[0].removeprefix("  - ") for line in listed] == [uploading, absent]
    assert result.err.count("hint: ") == 3  # each batch's, and the one of the whole
