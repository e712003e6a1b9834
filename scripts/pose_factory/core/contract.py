"""The pose batch contract, version 1: layout, conventions, manifests and their verification.

A batch is a folder named by its id holding `manifest.json`, which lists every other file of the batch
with its size and sha256. In the bucket, `_complete.json` is written after everything else; a batch
without it is still uploading. `docs/batch-contract.md` explains the contract for pod authors.
"""

from __future__ import annotations

import gc
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pose_factory.core import schemas
from pose_factory.core.envnames import ENV_SOURCE_DATE_EPOCH
from pose_factory.core.errors import IntegrityError, UnsafeKeyError
from pose_factory.core.fsutil import check_relative_path, content_digests, sha256_bytes
from pose_factory.core.layout import COMPLETE_MARKER_NAME, MANIFEST_NAME
from pose_factory.core.schemas import Problem

if TYPE_CHECKING:
    from pose_factory.core.models import CompletionMarker, FileEntry, Manifest

T = TypeVar("T")

CONTRACT_VERSION = "1.1.0"

# modality -> (folder, extension, format). One name per sample across folders, so loaders pair by index.
MODALITIES: dict[str, tuple[str, str, str]] = {
    "rgb": ("rgb", ".png", "png-rgb8 shaded preview"),
    "pose": ("pose", ".png", "png-rgb8 openpose skeleton (ControlNet colours)"),
    "openpose_json": ("openpose_json", ".json", "openpose-json (POSE_KEYPOINT)"),
    "depth": ("depth", ".png", "png-rgb8 depth, near white"),
    "normal": ("normal", ".png", "png-rgb8 camera-space normals"),
    "seg": ("seg", ".png", "png-rgb8 ADE20K palette"),
    "depth_metric": ("depth_metric", ".png", "png-gray16 camera z in millimetres"),
}
ALL_MODALITIES = tuple(MODALITIES)
# What a job renders unless it names its modalities: the ControlNet inputs and the preview (1.0's six).
DEFAULT_MODALITIES = ("rgb", "pose", "openpose_json", "depth", "normal", "seg")
SAMPLE_ID_WIDTH = 6
# Files above this size are hashed in several threads (see map_files).
LARGE_FILE = 4 * 1024 * 1024
# With md5 as well as sha256 (a pull, for DVC), files of this average size and more are hashed in two threads:
# md5 has no CPU instructions of its own and costs twice sha256's time, enough to outweigh the threads. Measured
# on 2 cores: 2,003 files of 41 KB 0.163 -> 0.112 s, 7,001 of 12 KB 0.20 -> 0.17 s, 70,001 of 1 KB 0.50 -> 0.73 s.
MD5_THREADED_AVERAGE = 8 * 1024

# Read caps for the documents a pull reads from the bucket before anything else. A manifest takes about
# 1.3 KB per sample, so 64 MiB is about 50,000 samples; a marker is under 1 KB.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_MARKER_BYTES = 64 * 1024
# Longest file or folder name (bytes of UTF-8) a batch may use: file systems allow 255, and downloads are
# written to `.<name>.<8 random>.partial` beside their final name first (18 bytes more; rclone adds a
# similar suffix).
MAX_NAME_BYTES = 200
# Longest path inside a batch: macOS allows 1,024 bytes in all, and the project folder plus
# `data/staging/<batch id>/` come in front of it.
MAX_PATH_BYTES = 600


@cache
def _batch_id_regex() -> re.Pattern[str]:
    document = json.loads((schemas.SCHEMA_DIR / schemas.SCHEMA_FILES["job"]).read_text())
    return re.compile(document["$defs"]["batch_id"]["pattern"])


def is_batch_id(name: str) -> bool:
    """True if name can be a batch id (the contract's pattern: `YYYY-MM-DD_project`, lower-case ASCII)."""
    return bool(_batch_id_regex().fullmatch(name))


def sample_id(index: int) -> str:
    """Zero-padded so that lexicographic order is sample order (ComfyUI batch loaders sort by name)."""
    return f"{index:0{SAMPLE_ID_WIDTH}d}"


def modality_path(modality: str, sid: str) -> str:
    folder, extension, _ = MODALITIES[modality]
    return f"{folder}/{sid}{extension}"


def annotation_path(sid: str) -> str:
    return f"annotations/{sid}.json"


def modalities_block(modalities: list[str]) -> dict[str, Any]:
    return {m: {"folder": MODALITIES[m][0], "extension": MODALITIES[m][1], "format": MODALITIES[m][2]}
            for m in modalities}


def utc_now() -> str:
    """Now in RFC 3339 UTC; SOURCE_DATE_EPOCH pins it for reproducible output."""
    epoch = os.environ.get(ENV_SOURCE_DATE_EPOCH)
    moment = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def utc_now_precise() -> str:
    """Now in RFC 3339 UTC with milliseconds (heartbeats; not pinned by SOURCE_DATE_EPOCH)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_today() -> date:
    """Today's date in UTC (SOURCE_DATE_EPOCH pins it too)."""
    return datetime.fromisoformat(utc_now().replace("Z", "+00:00")).date()


def dumps(document: Any) -> bytes:
    """The one JSON encoding the contract uses: stable key order, UTF-8, trailing newline."""
    return (json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def read_file(path: str, size_hint: int = 65536) -> bytes:
    """A whole file's bytes through plain os calls: about twice as fast as open().read() on small files,
    which matters at 70,000 of them (no file object, no fstat, no seek). `size_hint` is the size expected."""
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        data = os.read(fd, min(max(size_hint, 0), MAX_READ_HINT) + 1)
        if not data:
            return data
        more = os.read(fd, 1)  # b"" confirms the end (a read may return less than it was asked for)
        if not more:
            return data
        parts = [data, more]
        while more := os.read(fd, 1 << 20):
            parts.append(more)
        return b"".join(parts)
    finally:
        os.close(fd)


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A size hint beyond this (a hostile manifest's) is not allocated up front; the rest is read in a loop.
MAX_READ_HINT = 64 * 1024 * 1024


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector during bulk work that keeps what it allocates (an index of 10,000
    samples, a report): each collection would walk every object kept so far, again and again. Reference
    counting still frees everything else at once."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # What the work allocated and kept goes to the oldest generation unscanned, where a few collections
            # would have moved it: otherwise the first collection after this scans all of it at once (0.05 s
            # for an index of 10,000 samples). Cycles among it are still collected by later full collections.
            gc.freeze()
            gc.unfreeze()
            gc.enable()

def map_files(root: Path, relative_paths: list[str], function: Callable[[str, bytes], T],
              workers: int | None = None, sizes: Mapping[str, int] | None = None) -> dict[str, T]:
    """{path: function(path, content)} for files under root, each read once (read_file), in the order given.

    Measured on 7,000 small files (ext4, 2 cores): reading is the cost (hashing with SHA extensions runs
    at over 1 GB/s), and threads make reading slower, not faster. So small files are read in one thread;
    threads are used only for large files, where hashing can outweigh the reads. `sizes` (the sizes the
    files should have, e.g. from a manifest) lets each small file be read in one call.
    """
    prefix = os.path.join(str(root), "")
    sizes = sizes or {}

    def run(chunk: list[str]) -> list[tuple[str, T]]:
        read, hint = read_file, sizes.get
        return [(rel, function(rel, read(prefix + rel, hint(rel, 65536)))) for rel in chunk]

    if workers is None:
        first = relative_paths[0] if relative_paths else None
        large = first is not None and (sizes.get(first) or os.path.getsize(prefix + first)) > LARGE_FILE
        workers = min(4, os.cpu_count() or 1) if large else 1
    if workers == 1 or len(relative_paths) < 8:
        return dict(run(relative_paths))
    from concurrent.futures import ThreadPoolExecutor

    size = max(1, len(relative_paths) // (workers * 4))
    chunks = [relative_paths[i:i + size] for i in range(0, len(relative_paths), size)]
    with ThreadPoolExecutor(workers) as pool:
        return {rel: value for part in pool.map(run, chunks) for rel, value in part}


def hash_files(root: Path, relative_paths: list[str], workers: int | None = None, *, with_md5: bool = False,
               sizes: Mapping[str, int] | None = None) -> dict[str, tuple[int, str, str]]:
    """{path: (size, sha256, md5 or '')} for files under root; md5 only when asked (S3 ETags and DVC need it).
    `sizes`: the sizes the files should have (a manifest's), as for map_files."""
    if workers is None and with_md5 and sizes and relative_paths:
        average = sum(sizes.get(rel, 0) for rel in relative_paths) / len(relative_paths)
        if average >= MD5_THREADED_AVERAGE:
            workers = min(2, os.cpu_count() or 1)
    return map_files(root, relative_paths, lambda _, data: content_digests(data, with_md5=with_md5), workers,
                     sizes)


def file_entries(root: Path, relative_paths: list[str]) -> list[FileEntry]:
    """Manifest `files` entries (path, size, sha256), sorted by path."""
    digests = hash_files(root, sorted(relative_paths))
    return [{"path": p, "size": digests[p][0], "sha256": digests[p][1]} for p in sorted(digests)]


def load_manifest(batch_dir: Path) -> Manifest:
    """Read and schema-check `<batch_dir>/manifest.json`."""
    label = str(batch_dir / MANIFEST_NAME)
    if not (batch_dir / MANIFEST_NAME).is_file():
        raise IntegrityError("no manifest.json in the batch folder", where=str(batch_dir),
                             hint="a batch folder holds manifest.json at its root; was the right folder given?")
    return parse_manifest_bytes((batch_dir / MANIFEST_NAME).read_bytes(), label)


def parse_manifest_bytes(data: bytes, label: str, *, hint: str | None = None) -> Manifest:
    """Parse (bounded, see schemas.parse_json) and schema-check manifest bytes fetched from a bucket, or read from
    a version of the repository."""
    manifest: Manifest = schemas.load_checked(data, label, "manifest", hint=hint)
    return manifest


# One JSON token after optional whitespace: a string, a punctuation mark, or a number / literal.
_JSON_TOKEN = re.compile(rb'[ \t\r\n]*(?:("(?:[^"\\\x00-\x1f]|\\.)*")|([{}\[\]:,])'
                         rb'|(-?[0-9][0-9.eE+-]*|true|false|null))')
HEAD_BYTES = 65536


def head_string(data: bytes, key: str) -> str | None:
    """The string value of a top-level key of a JSON object, from the document's first bytes, or None when the key
    does not come within them (or the document is not an object, or the value is not a string): then the caller
    parses the whole document. Exact, not a search: the bytes are read as JSON tokens from the first, so a key of
    a nested object, or text inside a string, is never taken for it. A key given twice would be answered with its
    first value where a parser keeps the last; the manifests read this way are written by json / orjson, which
    never repeat a key, and keep their keys sorted (created_at comes before files and samples)."""
    wanted = json.dumps(key).encode()
    pos, depth, key_next, current = 0, 0, False, b""
    while True:
        match = _JSON_TOKEN.match(data, pos)
        if match is None:
            return None  # the end of the head (or not JSON): parse it whole
        pos = match.end()
        string, mark, _ = match.groups()
        if mark in (b"{", b"["):
            if depth == 0 and mark != b"{":
                return None
            depth += 1
            key_next = depth == 1
        elif mark in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return None
        elif depth == 1 and mark == b",":
            key_next = True
        elif depth == 1 and string is not None:
            if key_next:
                current, key_next = string, False
            elif current == wanted:
                return json.loads(string)
        elif depth == 1 and mark is None and current == wanted:
            return None  # not a string: the schema check reports it


def _fold(path: str) -> str:
    """What a case-insensitive, normalisation-insensitive file system (macOS APFS, Windows) compares."""
    if path.isascii():  # the usual case, 70,000 times per batch: NFC changes nothing, casefold is lower
        return path.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def path_problems(paths: list[str]) -> list[Problem]:
    """Paths of one batch that cannot all be written as separate files on a laptop's file system.

    Refused: a name longer than MAX_NAME_BYTES or a path longer than MAX_PATH_BYTES; the same path twice;
    a path that is also the folder of another (`rgb` and `rgb/000000.png`); two paths equal but for case or
    Unicode normalisation (one file on macOS), including manifest.json and _complete.json themselves.
    """
    problems: list[Problem] = []
    files: dict[str, str] = {_fold(name): name for name in (MANIFEST_NAME, COMPLETE_MARKER_NAME)}
    folders: dict[str, str] = {}
    # 70,000 paths share a handful of folders: fold each folder once, and check its spelling once.
    folded_folder: dict[str, str] = {}
    spelt_alike: set[str] = set()
    for path in paths:
        # An ASCII path no longer than a name is within both limits (one byte per character).
        if not (path.isascii() and len(path) <= MAX_NAME_BYTES):
            longest = max(path.split("/"), key=lambda seg: len(seg.encode("utf-8", "surrogateescape")))
            if len(longest.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
                problems.append(Problem(path, "name length", f"names of at most {MAX_NAME_BYTES} bytes",
                                        f"a name of {len(longest.encode('utf-8', 'surrogateescape'))} bytes"))
                continue
            if len(path.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
                problems.append(Problem(path, "path length", f"a path of at most {MAX_PATH_BYTES} bytes",
                                        f"{len(path.encode('utf-8', 'surrogateescape'))} bytes"))
                continue
        folded = _fold(path)
        if folded in files:
            same = files[folded] == path
            problems.append(Problem(path, "path", "each path once" if same else "no other path equal but for case",
                                    "listed twice" if same else f"also {files[folded]!r} (one file on macOS)"))
            continue
        if folded in folders:
            problems.append(Problem(path, "path", "a file or a folder, not both",
                                    f"also the folder of {folders[folded]!r}"))
            continue
        parents = []  # every folder above the path: "a", "a/b" for "a/b/c"
        cut = path.find("/")
        while cut != -1:
            parents.append(path[:cut])
            cut = path.find("/", cut + 1)
        for folder in parents:
            key = folded_folder.get(folder)
            if key is None:
                key = folded_folder[folder] = _fold(folder)
            if key in files:
                problems.append(Problem(path, "path", "a file or a folder, not both", f"{files[key]!r} is a file"))
                break
            if folder not in spelt_alike:
                other = folders.get(key)
                if other is not None:
                    if not other.startswith(folder + "/"):
                        problems.append(Problem(path, "path", "one spelling per folder",
                                                f"folder {folder!r} and the folder of {other!r} (one folder on "
                                                "macOS)"))
                        break
                    spelt_alike.add(folder)  # `other` never changes: the answer holds for every later path
        else:
            files[folded] = path
            for folder in parents:
                folders.setdefault(folded_folder[folder], path)
    return problems


def walk_files(folder: Path) -> tuple[set[str], list[str]]:
    """(regular files, symlinks) under folder as relative POSIX paths; symlinks are never followed."""
    files: set[str] = set()
    symlinks: list[str] = []
    pending = [("", str(folder))]
    add = files.add
    while pending:
        prefix, path = pending.pop()
        with os.scandir(path) as entries:
            for entry in entries:
                # A regular file (the usual entry: one test) is neither a symlink nor a folder.
                if entry.is_file(follow_symlinks=False):
                    add(prefix + entry.name)
                elif entry.is_symlink():
                    symlinks.append(prefix + entry.name)
                elif entry.is_dir():
                    pending.append((prefix + entry.name + "/", entry.path))
    return files, sorted(symlinks)


# Paths check_relative_path certainly accepts (segments of letters, digits, '_', '-' and '.', none starting with
# '.'), matched in one step; anything else goes through the full check.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*")
_NOT_PLAIN_CHARACTER = re.compile(r"[^A-Za-z0-9_./\n-]")


def all_plain(paths: list[str]) -> bool:
    """Whether every path matches _PLAIN_PATH, tested on all of them joined by newlines (70,000 paths in a few
    passes in C): only plain characters; no path holding a newline (the count of lines is the count of paths);
    no empty path, empty segment or segment starting with a dot, at the start or end of a line or inside one."""
    joined = "\n".join(paths)
    return (not paths or bool(joined) and joined.count("\n") == len(paths) - 1
            and not joined.startswith(("\n", ".", "/")) and not joined.endswith(("\n", "/"))
            and not any(seam in joined for seam in ("\n\n", "//", "/.", "\n.", "\n/", "/\n"))
            and not _NOT_PLAIN_CHARACTER.search(joined))


def check_listing(batch_dir: Path, manifest: Manifest, walked: tuple[set[str], list[str]] | None = None
                  ) -> tuple[list[Problem], dict[str, FileEntry], list[str]]:
    """How the folder's files differ from the manifest's list, before reading any of them.

    Returns (problems: listed twice, symlinks, missing, not in the manifest; the manifest's entries by path;
    the listed paths present on disk, in the manifest's order). An unsafe listed path raises UnsafeKeyError.
    `walked`: what walk_files(batch_dir) returned, when the caller had it made already.
    """
    problems: list[Problem] = []
    entries = manifest["files"]
    paths = [entry["path"] for entry in entries]
    listed: dict[str, FileEntry] = dict(zip(paths, entries, strict=True))
    # The usual manifest is accepted in a few steps over all its paths at once; anything else is looked at path by
    # path, which names what is wrong.
    if not (len(listed) == len(paths) and MANIFEST_NAME not in listed and COMPLETE_MARKER_NAME not in listed
            and all_plain(paths)):
        listed = {}
        plain = _PLAIN_PATH.fullmatch
        where = f"{batch_dir / MANIFEST_NAME}: files[].path"
        for entry in entries:
            rel = entry["path"]
            if not plain(rel):
                check_relative_path(rel, where=where)
            if rel in (MANIFEST_NAME, COMPLETE_MARKER_NAME):
                raise UnsafeKeyError(f"the manifest lists {rel} as a batch file",
                                     where=str(batch_dir / MANIFEST_NAME),
                                     hint="manifest.json and _complete.json are not listed in files")
            if rel in listed:
                problems.append(Problem(rel, "listed twice", "one entry", "two"))
            listed[rel] = entry
    on_disk, symlinks = walked or walk_files(batch_dir)
    for rel in symlinks:
        problems.append(Problem(rel, "symlink in a batch", "a regular file", "a symlink"))
    on_disk.discard(MANIFEST_NAME)
    on_disk.discard(COMPLETE_MARKER_NAME)
    listed_paths = listed.keys()
    if listed_paths == on_disk:  # the usual batch: nothing missing, nothing more
        return problems, listed, list(listed_paths)
    for rel in sorted(listed_paths - on_disk):
        if not any(p.file == rel for p in problems):
            problems.append(Problem(rel, "missing", "a file", "nothing"))
    for rel in sorted(on_disk - listed_paths):
        problems.append(Problem(rel, "not in the manifest", "no file", f"{(batch_dir / rel).stat().st_size} bytes"))
    return problems, listed, [rel for rel in listed if rel in on_disk]


def compare_digests(listed: dict[str, FileEntry], digests: dict[str, tuple[int, str, str]]) -> list[Problem]:
    """A problem for each file whose (size, sha256, md5) in `digests` differs from its manifest entry."""
    problems = []
    for rel, (size, sha, _) in digests.items():
        entry = listed[rel]
        if size != entry["size"]:
            problems.append(Problem(rel, "size differs", f"{entry['size']} bytes", f"{size} bytes"))
        elif sha != entry["sha256"]:
            problems.append(Problem(rel, "sha256 differs", entry["sha256"][:16] + "...", sha[:16] + "..."))
    return problems


def compare_files(batch_dir: Path, manifest: Manifest,
                  known: dict[str, tuple[int, str, str]] | None = None, *, with_md5: bool = False
                  ) -> tuple[list[Problem], dict[str, tuple[int, str, str]]]:
    """How the folder differs from the manifest's file list, and the digests of the files present.

    Checks: every listed path is safe and listed once, exists with its size and sha256; nothing
    unlisted is there; nothing is a symlink. `known` digests (just computed by the caller) are not
    computed again.
    """
    problems, listed, present = check_listing(batch_dir, manifest)
    known = known or {}
    digests = {**{rel: known[rel] for rel in present if rel in known},
               **hash_files(batch_dir, [rel for rel in present if rel not in known], with_md5=with_md5)}
    problems += compare_digests(listed, {rel: digests[rel] for rel in present})
    problems.sort(key=lambda p: p.file)
    return problems, digests


def verify_batch(batch_dir: Path, manifest: Manifest,
                 known: dict[str, tuple[int, str, str]] | None = None, *, with_md5: bool = False
                 ) -> dict[str, tuple[int, str, str]]:
    """Raise IntegrityError unless the folder holds exactly the manifest's files (see compare_files).

    Returns the digests {path: (size, sha256, md5)} so callers need not hash twice.
    """
    problems, digests = compare_files(batch_dir, manifest, known, with_md5=with_md5)
    if problems:
        raise IntegrityError(
            f"{len(problems)} file(s) do not match manifest.json:\n" + schemas.summarise(problems),
            where=str(batch_dir),
            hint="the batch is damaged or was changed after its manifest was written; regenerate or re-download it",
        )
    return digests


def completion_marker(manifest: Manifest, manifest_bytes: bytes) -> CompletionMarker:
    """The `_complete.json` document for a manifest as uploaded."""
    totals = manifest["totals"]
    return {
        "version": 1,
        "batch_id": manifest["batch_id"],
        "manifest_sha256": sha256_bytes(manifest_bytes),
        "project": manifest["project"],
        "created_at": manifest["created_at"],
        "samples": totals["samples"],
        "files": totals["files"],
        "bytes": totals["bytes"],
        "completed_at": utc_now(),
    }
