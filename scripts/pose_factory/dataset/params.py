"""params.yaml: the pipeline's batch list (`batches:`, `archived:`) and the working set (`working:`)."""

from __future__ import annotations

from typing import Any

from pose_factory.core.settings import Settings


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def read_params(settings: Settings) -> dict[str, Any]:
    """params.yaml as a round-trip mapping (comments kept)."""
    path = settings.params_file
    if not path.exists():
        return {}
    data = _yaml().load(path.read_text())
    return data if data is not None else {}


def write_params(settings: Settings, params: dict[str, Any]) -> None:
    """Write params.yaml atomically."""
    from io import StringIO

    from pose_factory.core.fsutil import atomic_write_path

    buffer = StringIO()
    _yaml().dump(params, buffer)
    with atomic_write_path(settings.params_file) as tmp:
        tmp.write_text(buffer.getvalue())


def register(settings: Settings, *, add: list[str] = (), remove: list[str] = (), archive: list[str] = (),
             unarchive: list[str] = ()) -> None:
    """Update the pipeline's batch list (`batches:`) and the archived list (`archived:`), sorted."""
    params = read_params(settings)
    batches = set(params.get("batches") or []) | set(add) | set(unarchive)
    batches -= set(remove) | set(archive)
    archived = (set(params.get("archived") or []) | set(archive)) - set(unarchive) - set(add)
    params["batches"] = sorted(batches)
    if archived or "archived" in params:
        params["archived"] = sorted(archived)
    write_params(settings, params)

