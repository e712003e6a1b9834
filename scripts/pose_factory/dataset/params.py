"""params.yaml: the pipeline's batch list (`batches:`, `archived:`) and the working set (`working:`).

The file is the user's as much as the tool's: it is edited in place, never re-dumped. Only the lines of
the entries whose value changes are rewritten; every other byte (comments, blank lines, key order,
quoting, flow or block style, `null` / `~`, indentation) stays as written. A block list of batch ids
keeps each existing item's line as it was, comment included, and new ids go where they sort. ruamel.yaml's
round-trip loader says where each key and list item is; after an edit the text is parsed again and must
hold exactly the intended values, else the edit falls back to ruamel.yaml's round-trip dump (comments kept,
layout normalised) rather than write something wrong.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

from pose_factory.core.errors import ConfigError, PoseFactoryError
from pose_factory.core.settings import Settings

BATCH_LISTS = ("batches", "archived")  # the top-level lists the tool keeps; everything else is the user's
_KEY_SEPARATOR = re.compile(r"""(?:"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^#'"\s][^:#]*?)\s*:(?=\s|$)""")
_PLAIN_SAFE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    # Round-trip dumps write None as an empty value by default; keep the `null` users write.
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def _plain(text: str) -> Any:
    """The values of a YAML text as plain Python (what a reader such as DVC sees)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


_FIX_HINT = "fix params.yaml (indentation and colons), or restore it: `git checkout -- params.yaml`"


def read_params(settings: Settings) -> dict[str, Any]:
    """params.yaml as a round-trip mapping (comments kept); binary, malformed or bomb YAML is a ConfigError."""
    from pose_factory.core.settings import load_yaml

    path = settings.params_file
    if not path.exists():
        return {}
    data = load_yaml(_read_text(path), str(path), round_trip=True, hint=_FIX_HINT)
    return data if data is not None else {}


def _read_text(path: Path) -> str:
    """params.yaml's text ("" when there is none), checked by the safe YAML reader first: a binary file, a
    syntax error or an alias bomb is a ConfigError naming it, before anything parses or rewrites it."""
    from pose_factory.core.settings import load_yaml, yaml_text

    if not path.exists():
        return ""
    text = yaml_text(path.read_bytes(), str(path))
    load_yaml(text, str(path), hint=_FIX_HINT)
    return text


def write_params(settings: Settings, params: dict[str, Any]) -> None:
    """Write params.yaml atomically, changing only the entries whose value differs from the file's."""
    old_text = _read_text(settings.params_file)
    _write_text(settings, update_text(old_text, _to_plain(params)))


def _write_text(settings: Settings, text: str) -> None:
    from pose_factory.core.fsutil import atomic_write_path

    with atomic_write_path(settings.params_file) as tmp:
        tmp.write_text(text)


def register(settings: Settings, *, add: Sequence[str] = (), remove: Sequence[str] = (), archive: Sequence[str] = (),
             unarchive: Sequence[str] = ()) -> None:
    """Update the pipeline's batch list (`batches:`) and the archived list (`archived:`).

    Ids already listed keep their place (and their line); new ones are inserted where they sort.
    """
    text = _read_text(settings.params_file)
    current = (_plain(text) if text.strip() else None) or {}
    batches = list(current.get("batches") or [])
    archived = list(current.get("archived") or [])
    drop_batches = set(remove) | set(archive)
    drop_archived = set(unarchive) | set(add)
    new = dict(current)
    new["batches"] = _merged([b for b in batches if b not in drop_batches], [*add, *unarchive])
    new_archived = _merged([b for b in archived if b not in drop_archived], list(archive))
    if new_archived or "archived" in current:
        new["archived"] = new_archived
    _write_text(settings, update_text(text, new))


def _merged(kept: list[str], added: list[str]) -> list[str]:
    """kept in its order, each added id (once) before the first kept id that sorts after it."""
    out = list(kept)
    for item in sorted(set(added) - set(kept)):
        position = next((i for i, existing in enumerate(out) if str(existing) > item), len(out))
        out.insert(position, item)
    return out


def text_to_commit(workspace: str, head_text: str | None) -> str:
    """params.yaml as HEAD has it with only the tool's batch lists (`batches:`, `archived:`) taken from the
    workspace: what `--commit` records, so an unrelated uncommitted edit of yours stays uncommitted."""
    if not head_text or not head_text.strip():
        return workspace
    head = _plain(head_text)
    ours = _plain(workspace) or {}
    if not isinstance(head, dict):
        return workspace
    wanted = dict(head)
    for key in BATCH_LISTS:
        if key in ours:
            wanted[key] = ours[key]
    return update_text(head_text, wanted)


# --- editing YAML text in place --------------------------------------------------------------------------

def _to_plain(value: Any) -> Any:
    """Plain Python values of a (possibly round-trip) structure: ruamel's scalar subclasses become str,
    int, float and bool (its ScalarBoolean is an int)."""
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return bool(value) if type(value).__name__ == "ScalarBoolean" else int(value)
    if isinstance(value, float):
        return float(value)
    return value


def update_text(text: str, wanted: dict[str, Any]) -> str:
    """text with every mapping entry whose value differs from `wanted` rewritten in place, and missing keys
    added; nothing else changes. Falls back to a round-trip dump for a change it cannot make in place."""
    try:
        edited = _edit_all(text, wanted)
        if _plain(edited) == wanted:
            return edited
    except _CannotEditInPlace:
        pass
    data = _yaml().load(text) if text.strip() else None
    if not isinstance(data, dict):
        data = {}
    _assign(data, wanted)
    buffer = StringIO()
    _yaml().dump(data, buffer)
    return buffer.getvalue()


def _assign(target: dict, wanted: dict) -> None:
    for key in [k for k in target if k not in wanted]:
        del target[key]
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _assign(target[key], value)
        elif target.get(key) != value or key not in target:
            target[key] = value


class _CannotEditInPlace(Exception):
    pass


def _changes(old: dict, new: dict, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(key path, new value) for every entry to rewrite; recursing into mappings present in both."""
    if any(key not in new for key in old):
        raise _CannotEditInPlace("a key was removed")
    out = []
    for key, value in new.items():
        if key in old and isinstance(old[key], dict) and isinstance(value, dict):
            out += _changes(old[key], value, (*path, key))
        elif key not in old or old[key] != value or isinstance(old[key], bool) != isinstance(value, bool):
            out.append(((*path, key), value))
    return out


def _edit_all(text: str, wanted: dict[str, Any]) -> str:
    old = (_plain(text) if text.strip() else None) or {}
    if not isinstance(old, dict):
        raise _CannotEditInPlace("not a mapping")
    for path, value in _changes(old, wanted):
        text = _edit_one(text, path, value)
    return text


def _edit_one(text: str, path: tuple, value: Any) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    root = _yaml().load(text) if text.strip() else None
    parent: Any = root
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if parent is None or key not in parent:
        return "".join(_insert_key(lines, parent, path, value))
    line_no, col = parent.lc.key(key)
    head = lines[line_no]
    separator = _KEY_SEPARATOR.match(head, col)
    if not separator:
        raise _CannotEditInPlace(f"cannot find the ':' after {key!r}")
    prefix, rest = head[:separator.end()], head[separator.end():].rstrip("\n")
    inline, comment = _split_comment(rest)
    end = _value_end(lines, line_no, col)
    body = lines[line_no + 1:end + 1]
    old = parent[key]
    if inline.strip() and end > line_no:
        # A flow collection or scalar continued on the next lines: it is replaced whole, by one line.
        comment = _split_comment(lines[end].rstrip("\n"))[1] if "#" in lines[end] else comment
        body = []
    scalar_list = isinstance(value, list) and bool(value) and all(_is_scalar(v) for v in value)
    if scalar_list and not inline.strip() and _is_block_list(old):
        new_lines = [head, *_edit_block_list(lines, line_no, old, value)]
    elif scalar_list and (old is None or old == []):
        # An empty list fills up as a block list (this project's style for the batch lists); a scalar or a
        # flow list that was written on one line stays on one line.
        key_line = prefix.rstrip() + (_gap(rest, inline) + comment if comment else "") + "\n"
        items = [f"{' ' * (col + 2)}- {_render(v)}\n" for v in value]
        new_lines = [key_line, *[line for line in body if _is_comment_or_blank(line)], *items]
    else:
        rendered = _render(value)
        key_line = f"{prefix} {rendered}" + (_gap(rest, inline) + comment if comment else "") + "\n"
        new_lines = [key_line, *[line for line in body if _is_comment_or_blank(line)]]
    return "".join(lines[:line_no] + new_lines + lines[end + 1:])


def _insert_key(lines: list[str], parent: Any, path: tuple, value: Any) -> list[str]:
    """Add `key: value` to its mapping: a batch list right after `batches:`, anything else at the end."""
    if len(path) != 1:
        raise _CannotEditInPlace("a new nested key")
    key = path[0]
    if isinstance(value, list) and value and all(_is_scalar(v) for v in value):
        entry = [f"{key}:\n", *[f"  - {_render(v)}\n" for v in value]]
    else:
        entry = [f"{key}: {_render(value)}\n"]
    if parent is not None and key in BATCH_LISTS and "batches" in parent and key != "batches":
        line_no, col = parent.lc.key("batches")
        end = _value_end(lines, line_no, col)
        return lines[:end + 1] + entry + lines[end + 1:]
    return lines + entry


def _value_end(lines: list[str], line_no: int, col: int) -> int:
    """The last line of the value of the key at (line_no, col): lines indented deeper, or a block list's
    `- ` items at the key's own indentation. Comments and blank lines after it belong to what follows."""
    end = line_no
    for i in range(line_no + 1, len(lines)):
        line = lines[i]
        if _is_comment_or_blank(line):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent > col or (indent == col and (line.lstrip().startswith("- ") or line.strip() == "-")):
            end = i
            continue
        break
    return end


def _edit_block_list(lines: list[str], key_line: int, old: Any, value: list) -> list[str]:
    """The lines of a block list holding `value`: kept items keep their line (and comment), comment lines
    stay with the item after them, new items take the indentation of the existing ones."""
    item_lines = [old.lc.item(i)[0] for i in range(len(old))]
    if len(set(item_lines)) != len(item_lines) or not all(_is_scalar(v) for v in old):
        raise _CannotEditInPlace("list items are not one scalar per line")
    first, last = item_lines[0], item_lines[-1]
    dash = lines[first].index("-")
    first = key_line + 1  # comment lines between the key and its first item belong to that item
    old_ids, new_ids = [str(v) for v in old], [str(v) for v in value]
    by_value: dict[str, tuple[list[str], str]] = {}
    pending: list[str] = []
    for i in range(first, last + 1):
        if i in item_lines:
            by_value[old_ids[item_lines.index(i)]] = (pending, lines[i])
            pending = []
        else:
            pending.append(lines[i])
    in_order = [i for i in old_ids if i in new_ids] == [i for i in new_ids if i in by_value]
    if len(by_value) != len(old_ids) or not in_order:
        # Reordered or duplicated: every item is written anew; no comment line is dropped.
        comments = [line for i in old_ids for line in by_value.get(i, ([], ""))[0]]
        return comments + [f"{' ' * dash}- {_render(v)}\n" for v in value]
    out: list[str] = []
    carried: list[str] = []  # comment lines of removed items: they stay, above the next item
    position = 0
    for item, text in zip(value, new_ids):
        if text in by_value:
            while old_ids[position] != text:
                carried += by_value[old_ids[position]][0]
                position += 1
            position += 1
            before, line = by_value[text]
            out += carried + before + [line]
        else:
            out += carried + [f"{' ' * dash}- {_render(item)}\n"]
        carried = []
    for removed in old_ids[position:]:
        carried += by_value[removed][0]
    return out + carried


def _is_block_list(value: Any) -> bool:
    from ruamel.yaml.comments import CommentedSeq

    return isinstance(value, CommentedSeq) and len(value) > 0 and not value.fa.flow_style()


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _is_comment_or_blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _split_comment(rest: str) -> tuple[str, str]:
    """(the value text, '# comment') of what follows a key's ':' on its line; quotes respected."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i], rest[i:]
    return rest, ""


def _gap(rest: str, inline: str) -> str:
    """The spaces the user put before a trailing comment (at least one)."""
    spaces = len(inline) - len(inline.rstrip()) if inline.strip() else len(inline)
    return " " * max(spaces, 1)


def _render(value: Any) -> str:
    """A value as a one-line YAML text: plain where that reads back the same, else double-quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        if _PLAIN_SAFE.match(value) and _plain(f"v: {value}") == {"v": value}:
            return value
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_render(str(k))}: {_render(v)}" for k, v in value.items()) + "}"
    raise _CannotEditInPlace(f"cannot write a {type(value).__name__}")


def check_readable(settings: Settings) -> dict[str, Any]:
    """params.yaml as read_params returns it, or ConfigError naming what is wrong: unreadable, not YAML, not a
    mapping, or `batches:` / `archived:` that are not lists of batch ids. Changes nothing."""
    from ruamel.yaml.error import YAMLError

    path = settings.params_file
    where = str(path)
    try:
        data = read_params(settings)
    except OSError as exc:
        raise ConfigError(f"cannot read params.yaml: {exc.strerror}", where=where,
                          hint="check its permissions") from None
    except (YAMLError, ValueError) as exc:  # the parser's errors, or a binary file that is not UTF-8
        problem = " ".join(str(exc).split())[:200]
        raise ConfigError(f"params.yaml is not valid YAML: {problem}", where=where,
                          hint="fix it (`git diff params.yaml` shows what changed since the last commit)") from None
    return check_shape(data, where)


def check_shape(data: Any, where: str, error: type[PoseFactoryError] | None = None) -> dict[str, Any]:
    """params.yaml's values (as parsed) when they are a mapping whose `batches:` and `archived:` are lists of
    batch ids, else an error (ConfigError unless another is given) naming the key. Any version's params.yaml
    goes through it before its keys are used (check_readable, diff)."""
    error = error or ConfigError
    if not isinstance(data, dict):
        raise error(f"expected a mapping at the top of params.yaml, found {type(data).__name__}", where=where,
                    hint="it holds `batches:`, `archived:` and `working:`; `git diff params.yaml` shows what changed")
    for key in ("batches", "archived"):
        value = data.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise error(f"key '{key}': expected a list of batch ids, found {type(value).__name__}",
                        where=f"{where}: {key}", hint=f"write it as `{key}:` followed by `  - <batch id>` lines"
                                                      f" (or `{key}: []`)")
    return data


def check_editable(settings: Settings) -> None:
    """Raise ConfigError unless params.yaml passes check_readable and can be rewritten. Read-only: commands
    that change the mirror run it before they download or move anything."""
    import os

    path = settings.params_file
    if not path.exists():
        if not os.access(path.parent, os.W_OK):
            raise ConfigError("params.yaml does not exist and cannot be created", where=str(path),
                              hint="make the project folder writable")
        return
    check_readable(settings)
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise ConfigError("params.yaml cannot be rewritten (no write permission)", where=str(path),
                          hint="make it and the project folder writable")
