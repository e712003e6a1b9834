"""The TypedDicts of core/models.py say what the JSON Schemas say: the same keys, the same required keys and the
same simple types, all the way down where the model goes down. A schema change without the model's (or the other
way round) fails here. Unit tier: no process, no server."""

# No `from __future__ import annotations`: the models made inside a test are read with get_type_hints.
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, NotRequired, Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest

from pose_factory.core import models, schemas
from pose_factory.core.layout import SCHEMA_DIR

# model -> (schema file, JSON pointer inside it)
MODELS = {
    models.Job: ("job.schema.json", ""),
    models.Manifest: ("manifest.schema.json", ""),
    models.CompletionMarker: ("complete.schema.json", ""),
    models.Annotation: ("sample.schema.json", ""),
    models.WorkingIndex: ("index.schema.json", ""),
    models.IndexRow: ("index.schema.json", "/$defs/row"),
}

PYTHON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def load(file_name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / file_name).read_text())


def resolve(schema: dict[str, Any], file_name: str) -> tuple[dict[str, Any], str]:
    """Follow $ref (to this file or another in schemas/) until a schema that says something itself."""
    while "$ref" in schema:
        target, _, pointer = schema["$ref"].partition("#")
        file_name = target or file_name
        schema = load(file_name)
        for part in [p for p in pointer.split("/") if p]:
            schema = schema[part]
    return schema, file_name


def json_types(schema: dict[str, Any], file_name: str) -> set[str] | None:
    """The JSON types a schema allows, or None when it does not say (no type, const, enum or oneOf)."""
    schema, file_name = resolve(schema, file_name)
    if "type" in schema:
        declared = schema["type"]
        return set(declared if isinstance(declared, list) else [declared])
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if values is not None:
        return {PYTHON_TYPES[type(v)] if not isinstance(v, str) else "string" for v in values}
    if "oneOf" in schema:
        found = [json_types(branch, file_name) for branch in schema["oneOf"]]
        return None if None in found else set().union(*found)
    if "properties" in schema:
        return {"object"}
    return None


def annotation_types(annotation: Any) -> set[str] | None:
    """The JSON types a Python annotation allows; None for Any."""
    if annotation is Any:
        return None
    origin = get_origin(annotation)
    if origin is NotRequired:
        return annotation_types(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        found = [annotation_types(arg) for arg in get_args(annotation)]
        return None if None in found else set().union(*found)
    if origin is Literal:
        return {PYTHON_TYPES[type(v)] for v in get_args(annotation)}
    if origin is list:
        return {"array"}
    if origin is dict or is_typeddict(annotation):
        return {"object"}
    return {PYTHON_TYPES[annotation]}


def literal_values(annotation: Any) -> set[Any] | None:
    if get_origin(annotation) is NotRequired:
        return literal_values(get_args(annotation)[0])
    return set(get_args(annotation)) if get_origin(annotation) is Literal else None


def branches(annotation: Any) -> list[Any]:
    """The non-None parts of an annotation (X | None -> [X])."""
    if get_origin(annotation) is NotRequired:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def disagreements(model: Any, schema: dict[str, Any], file_name: str, where: str) -> list[str]:
    """Every way a TypedDict and an object schema differ, recursing into nested models, lists and maps."""
    schema, file_name = resolve(schema, file_name)
    found = []
    hints = get_type_hints(model, include_extras=True)
    properties = schema.get("properties", {})
    if set(hints) != set(properties):
        found.append(f"{where}: keys only in the model {sorted(set(hints) - set(properties))}, only in the schema "
                     f"{sorted(set(properties) - set(hints))}")
    if set(model.__required_keys__) != set(schema.get("required", [])):
        found.append(f"{where}: required in the model {sorted(model.__required_keys__)}, in the schema "
                     f"{sorted(schema.get('required', []))}")
    for key in sorted(set(hints) & set(properties)):
        found += compare(hints[key], properties[key], file_name, f"{where}.{key}")
    return found


def compare(annotation: Any, schema: dict[str, Any], file_name: str, where: str) -> list[str]:
    schema, file_name = resolve(schema, file_name)
    wanted, have = json_types(schema, file_name), annotation_types(annotation)
    if wanted is not None and have is not None and wanted != have:
        return [f"{where}: the schema allows {sorted(wanted)}, the model {sorted(have)}"]
    values = literal_values(annotation)
    allowed = [schema["const"]] if "const" in schema else schema.get("enum")
    if values is not None and allowed is not None and values != set(allowed):
        return [f"{where}: the schema allows the values {allowed}, the model {sorted(values)}"]
    found = []
    for part in branches(annotation):
        if is_typeddict(part):
            found += disagreements(part, schema, file_name, where)
        elif get_origin(part) is list and isinstance(schema.get("items"), dict):
            found += compare(get_args(part)[0], schema["items"], file_name, f"{where}[]")
        elif get_origin(part) is dict and isinstance(schema.get("additionalProperties"), dict):
            found += compare(get_args(part)[1], schema["additionalProperties"], file_name, f"{where}{{}}")
    return found


@pytest.mark.parametrize("model", list(MODELS), ids=lambda m: m.__name__)
def test_each_model_has_its_schemas_keys_required_keys_and_types(model):
    file_name, pointer = MODELS[model]
    assert disagreements(model, {"$ref": f"{file_name}#{pointer}"}, file_name, "$") == []


def test_the_comparison_sees_a_missing_key_a_wrong_type_and_a_wrong_requirement():
    class Image(typing.TypedDict):
        width: str
        depth: int

    class Broken(typing.TypedDict):
        image: Image
        samples: NotRequired[int]
        render: NotRequired[dict[str, Any]]

    schema = {"type": "object", "required": ["image", "samples"],
              "properties": {"image": {"$ref": "job.schema.json#/$defs/image_size"}, "samples": {"type": "integer"},
                             "seed": {"type": "integer"}}}
    found = disagreements(Broken, schema, "job.schema.json", "$")
    assert any("only in the model ['render']" in f and "only in the schema ['seed']" in f for f in found)
    assert any("required in the model ['image']" in f for f in found)
    assert any(f.startswith("$.image: keys only in the model ['depth']") for f in found)
    assert "$.image.width: the schema allows ['integer'], the model ['string']" in found


def test_every_schema_in_the_folder_is_compiled_and_every_model_names_one():
    on_disk = {p.name for p in Path(SCHEMA_DIR).glob("*.schema.json")}
    assert set(schemas.SCHEMA_FILES.values()) == on_disk
    assert {file_name for file_name, _ in MODELS.values()} <= on_disk


def test_a_working_set_built_from_a_generated_batch_matches_the_index_schema(tmp_path):
    """The documents the code writes are what the models say: a generated batch's manifest and annotations, and
    the index.json materialize builds from it (in-process, 3 samples of 48x48)."""
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset.materialize import materialize
    from pose_factory.dataset.validate import validate_batch, write_report
    from pose_factory.producer.generate import default_job, generate_batch

    batch_id = "2026-11-20_run-cycle"
    raw, reports, out = tmp_path / "raw", tmp_path / "reports", tmp_path / "working" / "current_batch"
    made = generate_batch(default_job("run-cycle", 3, (48, 48), seed=3), raw, load_settings(root=tmp_path),
                          batch_id=batch_id, workers=1)
    write_report(validate_batch(made.batch_dir), reports / batch_id)
    manifest = json.loads((made.batch_dir / "manifest.json").read_text())
    schemas.check(manifest, "manifest", "manifest.json")
    for sample in manifest["samples"]:
        schemas.check(json.loads((made.batch_dir / sample["annotation"]).read_text()), "sample", sample["annotation"])
    params = tmp_path / "params.yaml"
    params.write_text(f"batches:\n- {batch_id}\nworking:\n  link_mode: copy\n")
    out.parent.mkdir(parents=True)
    materialize(params, raw, reports, out, curation_dir=tmp_path / "curation")
    index = json.loads((out / "index.json").read_text())
    schemas.check(index, "index", "index.json")
    assert len(index["samples"]) == 3 and index["samples"][0]["batch_id"] == batch_id


def test_the_settings_sections_have_the_config_schemas_keys_and_take_the_config_file(tmp_path):
    """settings.comfyui / runpod / curation are dataclasses with one field per key of their config section, so a
    key added to the schema without its field (or the other way round) fails here, not at a user's start-up."""
    from dataclasses import fields

    from pose_factory.core.errors import ConfigError
    from pose_factory.core.settings import ComfyUISettings, CurationSettings, RunPodSettings, load_settings

    config = load("config.schema.json")["properties"]
    for section, dataclass in (("comfyui", ComfyUISettings), ("runpod", RunPodSettings),
                               ("curation", CurationSettings)):
        assert {f.name for f in fields(dataclass)} == set(config[section]["properties"]), section
    config_file = tmp_path / "local.yaml"
    config_file.write_text("runpod:\n  poll_s: 3\n  secrets: {CLOUDFLARE_R2_ACCESS_KEY_ID: r2_key}\n"
                           "comfyui:\n  websocket: false\n")
    settings = load_settings(root=tmp_path, config_file=config_file)
    assert (settings.runpod.poll_s, settings.runpod.max_pods) == (3, 16)
    assert settings.runpod.secrets == {"CLOUDFLARE_R2_ACCESS_KEY_ID": "r2_key"}
    assert settings.comfyui.websocket is False and settings.comfyui.queue_depth == 2
    assert settings.curation.reasons[-1] == "other"
    config_file.write_text("runpod:\n  pol_s: 3\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(root=tmp_path, config_file=config_file)
    assert "runpod.pol_s" in raised.value.message and "poll_s" in raised.value.message
