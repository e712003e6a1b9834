"""Every third-party package the code imports directly is declared in pyproject.toml's dependencies, so an
upgrade of whatever used to bring it in (dvc brought orjson and ruamel.yaml) cannot silently drop it; and every
declared dependency is pinned in requirements.lock, which is what `make setup` installs."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "scripts" / "pose_factory"


def top_level_imports(folder: Path) -> dict[str, set[str]]:
    """{top-level module name: files importing it} for every absolute import under folder, function-level ones
    too (the code imports heavy modules where it needs them)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}


def test_every_third_party_import_of_the_package_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    third_party = {name: files for name, files in top_level_imports(PACKAGE).items()
                   if name not in sys.stdlib_module_names and name not in ("pose_factory", "__future__")}
    assert {"orjson", "ruamel", "yaml", "boto3"} <= set(third_party)  # the scan sees function-level imports
    wanted = declared()
    undeclared = {}
    for name, files in sorted(third_party.items()):
        owners = {canonicalize_name(d) for d in distributions.get(name, [])}
        assert owners, f"{name} (imported by {sorted(files)}) is not installed: no distribution provides it"
        if not owners & wanted:
            undeclared[name] = (sorted(owners), sorted(files))
    assert undeclared == {}, "declare these in pyproject.toml's dependencies (and pin them in requirements.lock)"


def test_every_declared_dependency_is_pinned_in_the_lock():
    pinned = {canonicalize_name(line.split("==")[0]) for line in (REPO / "requirements.lock").read_text().splitlines()
              if line and line[0].isalnum()}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *[s for group in project["optional-dependencies"].values() for s in group]]
    assert {canonicalize_name(Requirement(s).name) for s in specs} - pinned == set()
