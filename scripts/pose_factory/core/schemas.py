"""The JSON Schemas of the batch contract, compiled once, and schema errors a person can act on.

A violation is reported as file + JSON path + what was expected + what was found, e.g.
``manifest.json: $.files[3].sha256: expected a string matching ^[0-9a-f]{64}$, found 'abc'``.

JSON that comes from outside (the bucket, a batch folder) is parsed by `parse_json`: bounded nesting,
64-bit integers, no NaN, strict UTF-8, so a hostile document is a SchemaError, never a RecursionError.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pose_factory.core.errors import SchemaError
from pose_factory.core.layout import SCHEMA_DIR

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

SCHEMA_FILES = {
    "config": "config.schema.json",
    "job": "job.schema.json",
    "job-record": "job-record.schema.json",
    "manifest": "manifest.schema.json",
    "sample": "sample.schema.json",
    "openpose": "openpose.schema.json",
    "complete": "complete.schema.json",
    "pruned": "pruned.schema.json",
    "working": "working.schema.json",
    "index": "index.schema.json",
}

# How many violations one error message spells out in full before it only counts the rest.
SHOWN_PROBLEMS = 5
# Deepest nesting of objects and lists accepted in a JSON document. Contract documents nest 6 levels at
# most; the bound keeps schema checks and error messages (which recurse) far from Python's limit.
MAX_JSON_DEPTH = 32


@dataclass(frozen=True)
class Problem:
    """One problem with a batch or a document, in words: which file, which field (a JSON path, or what
    about the file is wrong), what was expected and what was found. Every check reports these."""

    file: str
    field: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: expected {self.expected}, found {self.found}"

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "field": self.field, "expected": self.expected, "found": self.found}


@lru_cache(maxsize=1)
def _registry() -> Registry:
    # jsonschema is imported only to explain a failure: valid documents never need it (see fast_validator).
    from referencing import Registry, Resource

    resources = []
    for file_name in SCHEMA_FILES.values():
        contents = json.loads((SCHEMA_DIR / file_name).read_text())
        resource = Resource.from_contents(contents)
        resources.append((contents["$id"], resource))
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator for one schema (compiled once per process)."""
    from jsonschema import Draft202012Validator, FormatChecker

    contents = json.loads((SCHEMA_DIR / SCHEMA_FILES[name]).read_text())
    return Draft202012Validator(contents, registry=_registry(), format_checker=FormatChecker())


@cache
def fast_validator(name: str):
    """A Rust (jsonschema-rs) validator for the same schema: ~500x faster, used to accept valid documents.

    Only a document it rejects goes through `jsonschema` again, to explain the failure in words.
    Formats are asserted so it is never more lenient than the explaining validator.
    """
    import jsonschema_rs

    documents = [json.loads((SCHEMA_DIR / f).read_text()) for f in SCHEMA_FILES.values()]
    registry = jsonschema_rs.Registry([(d["$id"], d) for d in documents])
    contents = json.loads((SCHEMA_DIR / SCHEMA_FILES[name]).read_text())
    return jsonschema_rs.validator_for(contents, registry=registry, validate_formats=True)


def json_path(parts: Iterable[Any]) -> str:
    """``$.files[3].sha256`` from jsonschema's path deque."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_WORDS = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def _describe(error: ValidationError) -> tuple[str, str, str]:
    """(path, expected, found) for one jsonschema error, in words."""
    path = json_path(error.absolute_path)
    # The stubs allow "unset" for these; an error from a validation run always has them, as JSON values.
    kind: Any = error.validator
    rule: Any = error.validator_value
    found: Any = error.instance
    if kind == "additionalProperties":
        schema: Any = error.schema
        allowed = sorted((schema.get("properties") or {}).keys())
        extra = sorted(set(found) - set(allowed)) if isinstance(found, dict) else []
        unknown = extra[0] if extra else "?"
        close = difflib.get_close_matches(unknown, allowed, n=1)
        expected = f"one of the known keys ({', '.join(allowed)})" if allowed else "no extra keys"
        if close:
            expected += f"; did you mean '{close[0]}'?"
        return json_path([*error.absolute_path, unknown]), expected, f"unknown key '{unknown}'"
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(rule)
        return json_path([*error.absolute_path, missing]), "this key to be present", "it missing"
    if kind == "type":
        types: list[str] = rule if isinstance(rule, list) else [rule]
        return path, " or ".join(_TYPE_WORDS.get(t, t) for t in types), _short(found)
    if kind == "enum":
        return path, "one of " + ", ".join(_short(v) for v in rule), _short(found)
    if kind == "const":
        return path, f"exactly {_short(rule)}", _short(found)
    if kind == "pattern":
        return path, f"a string matching {rule}", _short(found)
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return path, f"a number {words} {rule}", _short(found)
    if kind in ("minItems", "maxItems"):
        count = len(found) if isinstance(found, list) else "?"
        return path, f"{'at least' if kind == 'minItems' else 'at most'} {rule} items", f"{count} items"
    if kind == "propertyNames":
        return path, "keys that are " + error.message.split(" is not ")[-1], _short(found)
    return path, error.message.split(" is not ")[-1] if " is not " in error.message else error.message, _short(found)


def problems(document: Any, schema_name: str, file_label: str) -> list[Problem]:
    """Every violation of a schema, deepest first within each location, ordered by JSON path."""
    if fast_validator(schema_name).is_valid(document):
        return []
    found: list[Problem] = []
    for error in validator(schema_name).iter_errors(document):
        # oneOf/anyOf wrap the useful cause; report the best leaf instead of "is not valid under any".
        if error.context:
            error = min(error.context, key=lambda e: (-len(e.absolute_path), e.validator != "type"))
        path, expected, got = _describe(error)
        found.append(Problem(file_label, path, expected, got))
    return sorted(found, key=lambda p: p.field)


def summarise(items: list[Any], shown: int = SHOWN_PROBLEMS) -> str:
    """The first few problems in full, then a count of the rest."""
    lines = [f"  - {p}" for p in items[:shown]]
    if len(items) > shown:
        lines.append(f"  ... and {len(items) - shown} more")
    return "\n".join(lines)


def check(document: Any, schema_name: str, file_label: str, *, hint: str | None = None) -> None:
    """Raise SchemaError listing the violations, if any."""
    _raise_for(problems(document, schema_name, file_label), schema_name, file_label, hint)


def load_checked(data: bytes, label: str, schema_name: str, *, hint: str | None = None) -> Any:
    """Untrusted JSON parsed and checked against its schema (parse_and_check), or SchemaError naming the file,
    the field and the fix."""
    document, found = parse_and_check(data, label, schema_name, hint=hint)
    _raise_for(found, schema_name, label, hint)
    return document


def _raise_for(found: list[Problem], schema_name: str, file_label: str, hint: str | None) -> None:
    if not found:
        return
    first = found[0]
    if len(found) == 1:
        message = f"{first.field}: expected {first.expected}, found {first.found}"
    else:
        message = f"{len(found)} schema violations:\n" + summarise(found)
    raise SchemaError(message, where=file_label,
                      hint=hint or f"fix the document to match schemas/{SCHEMA_FILES[schema_name]}")


def json_depth(document: Any) -> int:
    """How deeply objects and lists nest in a parsed document (a scalar is 0), without recursion."""
    deepest = 0
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json(data: bytes | str, label: str, *, max_depth: int = MAX_JSON_DEPTH, hint: str | None = None) -> Any:
    """Parse untrusted JSON; anything a strict, bounded parser refuses is a SchemaError naming the file.

    orjson stops at 1,024 levels without recursing in Python, refuses integers beyond 64 bits, NaN and
    invalid UTF-8; the depth is then bounded again at max_depth.
    """
    import orjson

    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg or "recursion" in exc.msg.lower():
            raise _too_deep(label, max_depth) from None
        where = f" at line {exc.lineno}, column {exc.colno}" if exc.doc else ""
        raise SchemaError(f"malformed JSON{where}: {exc.msg}", where=label,
                          hint=hint or "fix the JSON syntax (a trailing comma or a missing quote is common), or the "
                                       "file is binary or corrupt") from None
    if json_depth(document) > max_depth:
        raise _too_deep(label, max_depth)
    return document


def parse_and_check(data: bytes, label: str, schema_name: str, *, hint: str | None = None
                    ) -> tuple[Any, list[Problem]]:
    """(document, its schema violations) of untrusted JSON, as parse_json then problems() would give them.

    The depth is not walked when the text has too few brackets to nest that deep, or when the document is
    valid and the schema itself bounds how deeply a valid document can nest (depth_bound): at 20,000
    documents per batch the walk cost more than parsing them.
    """
    import orjson

    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        document = parse_json(data, label, hint=hint)  # raises the SchemaError that names the problem
    if fast_validator(schema_name).is_valid(document):
        bound = depth_bound(schema_name)
        if (bound is not None and bound <= MAX_JSON_DEPTH) or _shallow(data) or json_depth(document) <= MAX_JSON_DEPTH:
            return document, []
        raise _too_deep(label, MAX_JSON_DEPTH)
    if not _shallow(data) and json_depth(document) > MAX_JSON_DEPTH:
        raise _too_deep(label, MAX_JSON_DEPTH)
    return document, problems(document, schema_name, label)


def _shallow(data: bytes) -> bool:
    """A document cannot nest deeper than it has [ and { in its text; counting them is much cheaper than a walk."""
    return data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH


@cache
def depth_bound(schema_name: str) -> int | None:
    """The deepest a document valid against the schema can nest, or None when the schema does not bound it
    (an object open to any extra key, an array of anything) or uses what this reading does not follow."""
    documents = {name: json.loads((SCHEMA_DIR / name).read_text()) for name in SCHEMA_FILES.values()}

    def resolve(ref: str, document: str) -> tuple[Any, str]:
        file, _, pointer = ref.partition("#")
        name = file.rsplit("/", 1)[-1] or document
        node = documents[name]
        for part in filter(None, pointer.split("/")):
            node = node[part]
        return node, name

    def deepest(limits: list[int | None]) -> int | None:
        """The deepest of several bounds; None when any of them is unbounded."""
        known = [limit for limit in limits if limit is not None]
        return max(known, default=0) if len(known) == len(limits) else None

    def bound(schema: Any, document: str, following: frozenset[tuple[str, str]]) -> int | None:
        if schema is False:
            return 0
        if not isinstance(schema, dict):
            return None  # true: anything
        limits: list[int | None] = []  # the document meets every one of these, so the smallest known one holds
        if "$ref" in schema:
            key = (document, schema["$ref"])
            try:
                target, name = resolve(schema["$ref"], document)
            except (KeyError, TypeError):
                return None
            limits.append(None if key in following else bound(target, name, following | {key}))
        for any_of in ("oneOf", "anyOf"):
            if any_of in schema:
                limits.append(deepest([bound(sub, document, following) for sub in schema[any_of]]))
        limits += [bound(sub, document, following) for sub in schema.get("allOf", [])]
        if "const" in schema:
            limits.append(json_depth(schema["const"]))
        if "enum" in schema:
            limits.append(max((json_depth(value) for value in schema["enum"]), default=0))
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            children: list[int | None] = []
            if "object" in types:
                children += [bound(sub, document, following) for sub in schema.get("properties", {}).values()]
                children += [bound(sub, document, following) for sub in schema.get("patternProperties", {}).values()]
                children.append(bound(schema.get("additionalProperties", True), document, following))
            if "array" in types:
                prefix = schema.get("prefixItems", [])
                closed = isinstance(schema.get("maxItems"), int) and schema["maxItems"] <= len(prefix)
                children += [bound(sub, document, following) for sub in prefix]
                children.append(bound(schema.get("items", not closed), document, following))
            nested = "object" in types or "array" in types
            below = deepest(children)
            limits.append(None if below is None else (1 + below if nested else 0))
        known = [limit for limit in limits if limit is not None]
        return min(known) if known else None

    file_name = SCHEMA_FILES[schema_name]
    return bound(documents[file_name], file_name, frozenset())


def _too_deep(label: str, max_depth: int) -> SchemaError:
    return SchemaError(f"JSON nested deeper than {max_depth} levels", where=label,
                       hint="no contract document nests that deep: the file was written by a broken or hostile "
                            "program")


def load_json(path: Path, label: str | None = None) -> Any:
    """Parse a JSON file (see parse_json), turning syntax errors into a SchemaError naming the line and column."""
    label = label or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SchemaError("file not found", where=label) from None
    return parse_json(data, label)
