"""Bucket content is untrusted input: a corpus of hostile and broken batches on both backends.

One bucket per backend per module holds a good batch and every bad one side by side. For each bad batch:
`list` shows it as a row (with its problem when it can be seen without a pull), a pull of it fails with
its exit code and an `error:` line (or is handled, for harmless oddities such as folder markers), nothing
is printed raw that a terminal would act on, no traceback, and nothing outside `data/` changes. Then the
good batch still lists and pulls, through `list`, `status`, a filtered `pull` and `pull-latest`.

Keys that SeaweedFS itself refuses or rewrites but R2 stores as given (`..` segments, backslashes, empty
segments) are injected into its ListObjectsV2 answers by the fault proxy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from faultproxy import FaultProxy
from helpers import ENV_NAMES, REPO, Project, Result, make_repository, s3_env
from pose_factory.cli import main as cli_main
from pose_factory.core import contract

pytestmark = pytest.mark.integration

GOOD = "2026-11-30_run-cycle"
PROJECT = "hostile"


def _epoch(day: str) -> str:
    return str(int(datetime.fromisoformat(day + "T08:00:00+00:00").timestamp()))


@dataclass
class World:
    """One project + bucket holding the good batch and every bad batch of the corpus, on one backend."""

    backend: str
    root: Path
    env: dict[str, str]
    client: object = None  # boto3 client straight to SeaweedFS (s3)
    bucket: str = ""
    proxy: FaultProxy | None = None
    injected: dict[str, list[str]] = field(default_factory=dict)
    skeleton: dict[str, bytes] = field(default_factory=dict)
    skeleton_manifest: dict = field(default_factory=dict)
    project: Project | None = None  # its snapshot of the files outside data/

    @property
    def bucket_dir(self) -> Path:
        return self.root / "data" / "local-bucket" / "pose-factory"

    def put(self, key: str, data: bytes) -> None:
        if self.backend == "local":
            path = self.bucket_dir.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def inject(self, batch_id: str, key: str) -> None:
        """Make the bucket's listing of this batch show a key the server would not store."""
        self.injected.setdefault(f"batches/{batch_id}/", []).append(key)

    def manifest(self, folder: str, **changes) -> dict:
        """The skeleton's manifest for a batch in this folder, with changes."""
        manifest = json.loads(json.dumps(self.skeleton_manifest))
        manifest.update(batch_id=folder, project=PROJECT, created_at="2026-11-02T08:00:00Z")
        manifest.update(changes)
        return manifest

    def publish_raw(self, batch_id: str, *, files: dict[str, bytes] | None = None, manifest: dict | bytes | None = None,
                    marker: dict | bytes | str | None = "auto") -> None:
        """Write a batch the way a broken or hostile uploader might: any files, manifest and marker.

        Data files are written only when given (most cases are refused before any file is read).
        """
        prefix = f"batches/{batch_id}/"
        for rel, data in (files or {}).items():
            self.put(prefix + rel, data)
        manifest = self.manifest(batch_id) if manifest is None else manifest
        manifest_bytes = manifest if isinstance(manifest, bytes) else _encode(manifest)
        self.put(prefix + "manifest.json", manifest_bytes)
        if marker == "auto":
            sha = contract.sha256_bytes(manifest_bytes)
            # Marker fields from a well-formed manifest: the one written may be anything.
            marker = {**contract.completion_marker(self.manifest(batch_id), manifest_bytes), "manifest_sha256": sha}
        if marker is not None:
            self.put(prefix + "_complete.json", marker if isinstance(marker, bytes) else _encode(marker))

    def rewrite(self, xml: str) -> str:
        start = xml.find("<Prefix>") + len("<Prefix>")
        prefix = unquote(xml[start:xml.find("</Prefix>", start)]) if start >= len("<Prefix>") else ""
        extra = "".join(f"<Contents><Key>{quote(key, safe='/')}</Key><LastModified>2026-11-02T08:00:00Z</LastModified>"
                        f"<ETag>&#34;0&#34;</ETag><Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>"
                        for key in self.injected.get(prefix, []))
        return xml.replace("</ListBucketResult>", extra + "</ListBucketResult>")


def _encode(document: dict) -> bytes:
    """JSON bytes; names with undecodable bytes (lone surrogates) are written escaped."""
    return json.dumps(document, indent=1, sort_keys=True).encode()


def _entries(files: dict[str, bytes]) -> list[dict]:
    return [{"path": rel, "size": len(data), "sha256": contract.sha256_bytes(data)}
            for rel, data in sorted(files.items())]


def with_files(world: World, batch_id: str, files: dict[str, bytes], **publish) -> None:
    """A batch whose manifest lists exactly these files (the samples block is kept: pull does not read it)."""
    manifest = world.manifest(batch_id, files=_entries(files))
    manifest["totals"] = {**manifest["totals"], "files": len(files), "bytes": sum(len(d) for d in files.values())}
    world.publish_raw(batch_id, files=files, manifest=manifest, **publish)


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 40


@dataclass(frozen=True)
class Case:
    """One bad batch: how to make it, what `list --json` says, and what `pull <id>` does."""

    name: str
    build: Callable[[World, str], None]
    listed: str | None  # status in `list --json`; None: not listed at all
    pull_code: int
    said: str = ""  # fragment of the problem (list) or of the error (pull)
    backends: tuple[str, ...] = ("local", "s3")
    batch_id: str = ""
    error: str = ""  # fragment of the pull's error, when it differs from `said`

    def id_for(self, index: int) -> str:
        return self.batch_id or f"2026-11-{1 + index % 27:02d}_{self.name}"


def _symlinked_folder(world: World, batch_id: str) -> None:
    target = world.root.parent / "elsewhere"
    shutil.copytree(world.bucket_dir / "batches" / GOOD, target)
    (world.bucket_dir / "batches" / batch_id).symlink_to(target, target_is_directory=True)


def _symlinked_file(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, files=world.skeleton)
    folder = world.bucket_dir / "batches" / batch_id
    rel = sorted(world.skeleton)[0]
    (folder / rel).unlink()
    (folder / rel).symlink_to("/etc/hostname")


def _fifo_listed(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, files=world.skeleton)
    folder = world.bucket_dir / "batches" / batch_id
    rel = sorted(world.skeleton)[0]
    (folder / rel).unlink()
    os.mkfifo(folder / rel)


def _fifo_manifest(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, files=world.skeleton, marker=None)
    (world.bucket_dir / "batches" / batch_id / "manifest.json").unlink()
    os.mkfifo(world.bucket_dir / "batches" / batch_id / "manifest.json")


def _socket_extra(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, files=world.skeleton)
    path = world.bucket_dir / "batches" / batch_id / "listener.sock"
    if len(str(path)) > 100:  # AF_UNIX paths are short: bind from the folder
        cwd = os.getcwd()
        os.chdir(path.parent)
        try:
            socket.socket(socket.AF_UNIX).bind(path.name)
        finally:
            os.chdir(cwd)
    else:
        socket.socket(socket.AF_UNIX).bind(str(path))


def _manifest_is_a_folder(world: World, batch_id: str) -> None:
    for rel, data in world.skeleton.items():
        world.put(f"batches/{batch_id}/{rel}", data)
    (world.bucket_dir / "batches" / batch_id / "manifest.json").mkdir()
    (world.bucket_dir / "batches" / batch_id / "manifest.json" / "x").write_bytes(b"1")


def _folder_markers(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, files=world.skeleton)
    if world.backend == "s3":
        for folder in ("", "rgb/", "pose/", "annotations/"):
            world.put(f"batches/{batch_id}/{folder}", b"")
    else:  # the local-folder equivalent: empty folders
        (world.bucket_dir / "batches" / batch_id / "empty" / "deeper").mkdir(parents=True)


def _only_a_folder_marker(world: World, batch_id: str) -> None:
    if world.backend == "s3":
        world.put(f"batches/{batch_id}/", b"")
    else:
        (world.bucket_dir / "batches" / batch_id).mkdir(parents=True)


def _bad_key(key: str) -> Callable[[World, str], None]:
    def build(world: World, batch_id: str) -> None:
        world.publish_raw(batch_id)
        if world.backend == "s3" and any(part in key for part in ("..", "\\", "//")):
            world.inject(batch_id, f"batches/{batch_id}/{key}")
        else:
            world.put(f"batches/{batch_id}/{key}", b"x")
    return build


def _paths(*paths: str) -> Callable[[World, str], None]:
    def build(world: World, batch_id: str) -> None:
        files = {p: PNG + p.encode() for p in paths}
        if world.backend == "local":  # a folder cannot also be a file here: store what fits
            stored = {p: d for p, d in files.items() if not any(o.startswith(p + "/") for o in files)}
            manifest = world.manifest(batch_id, files=_entries(files))
            world.publish_raw(batch_id, files=stored, manifest=manifest)
        else:
            with_files(world, batch_id, files)
    return build


def _marker(document: dict | bytes, with_files: bool = False) -> Callable[[World, str], None]:
    def build(world: World, batch_id: str) -> None:
        marker = document
        if isinstance(document, dict):
            manifest_bytes = _encode(world.manifest(batch_id))
            marker = {**contract.completion_marker(world.manifest(batch_id), manifest_bytes), **document}
        world.publish_raw(batch_id, files=world.skeleton if with_files else None, marker=marker)
    return build


def _manifest_bytes(data: bytes, marker: bool = True) -> Callable[[World, str], None]:
    def build(world: World, batch_id: str) -> None:
        world.publish_raw(batch_id, manifest=data, marker="auto" if marker else None)
    return build


def _manifest_change(marker: bool = True, **changes) -> Callable[[World, str], None]:
    def build(world: World, batch_id: str) -> None:
        world.publish_raw(batch_id, manifest=world.manifest(batch_id, **changes), marker="auto" if marker else None)
    return build


def _huge_manifest(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, manifest=world.manifest(batch_id, padding="x" * (contract.MAX_MANIFEST_BYTES + 1)))


def _huge_manifest_up(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, manifest=world.manifest(batch_id, padding="x" * (contract.MAX_MANIFEST_BYTES + 1)),
                      marker=None)


def _stale_marker(world: World, batch_id: str) -> None:
    world.publish_raw(batch_id, marker={**contract.completion_marker(world.manifest(batch_id), b"other"),
                                        "batch_id": batch_id})


def _missing_file(world: World, batch_id: str) -> None:
    files = dict(world.skeleton)
    files.pop(sorted(files)[0])
    world.publish_raw(batch_id, files=files)  # the manifest lists them all


def _lists_the_marker(world: World, batch_id: str) -> None:
    files = {**world.skeleton, "_complete.json": b"{}"}
    manifest = world.manifest(batch_id, files=_entries(files))
    world.publish_raw(batch_id, files=world.skeleton, manifest=manifest)


LONG = "n" * 230
UPLOADING = "still uploading"
NOT_AN_ID = "is not a batch id"
CASES = [
    Case("deep-manifest", _manifest_bytes(deep(5000)), "complete", 6, "nested deeper"),
    Case("deep-manifest-up", _manifest_bytes(deep(5000), marker=False), "invalid", 7, "nested deeper",
         error=UPLOADING),
    Case("deep-in-range-manifest", _manifest_bytes(deep(900)), "complete", 6, "nested deeper"),
    Case("deep-marker", _marker(deep(5000)), "invalid", 7, "nested deeper"),
    Case("huge-marker", _marker(b'{"pad": "' + b"x" * (contract.MAX_MARKER_BYTES + 10) + b'"}'), "invalid", 7,
         "cap"),
    Case("huge-manifest", _huge_manifest, "complete", 6, "cap"),
    Case("huge-manifest-up", _huge_manifest_up, "invalid", 6, "cap"),
    Case("binary-manifest", _manifest_bytes(b"\x89PNG\r\n\x1a\n\x00\xff" * 20), "complete", 6, "malformed JSON"),
    Case("empty-manifest", _manifest_bytes(b""), "complete", 6, "malformed JSON"),
    Case("nan-manifest", _manifest_bytes(b'{"batch_id": NaN}'), "complete", 6, "malformed JSON"),
    Case("bigint-marker", _marker(b'{"version": 1, "samples": 1' + b"0" * 400 + b"}"), "invalid", 7, "damaged"),
    Case("marker-not-json", _marker(b"\x00\x01 not json"), "invalid", 7, "damaged"),
    Case("marker-is-a-list", _marker(b"[1, 2, 3]"), "invalid", 7, "damaged"),
    Case("marker-missing-fields", _marker(b'{"version": 1}'), "invalid", 7, "damaged"),
    Case("marker-of-another-batch", _marker({"batch_id": GOOD}), "invalid", 7, "says batch_id"),
    Case("manifest-of-another-batch", _manifest_change(batch_id=GOOD), "complete", 7, "says batch_id"),
    Case("manifest-of-another-batch-up", _manifest_change(marker=False, batch_id=GOOD), "invalid", 7,
         "says batch_id", error=UPLOADING),
    Case("manifest-breaks-schema", _manifest_change(totals="many"), "complete", 6, "totals"),
    Case("stale-marker", _stale_marker, "complete", 7, "another manifest"),
    Case("file-missing", _missing_file, "complete", 7, "not in the bucket"),
    Case("manifest-lists-marker", _lists_the_marker, "complete", 5, "listed twice"),
    Case("manifest-path-escapes", _manifest_change(files=[{"path": "../../etc/x", "size": 1, "sha256": "0" * 64}]),
         "complete", 6, "files"),
    Case("escape-in-key", _bad_key("rgb/\x1b]0;pwned\x07.png"), "complete", 5, "unsafe path"),
    Case("newline-in-key", _bad_key("rgb/x\n2026-11-30_fake.png"), "complete", 5, "unsafe path"),
    Case("dotdot-key", _bad_key("../../../../outside.png"), "complete", 5, "unsafe path", backends=("s3",)),
    Case("backslash-key", _bad_key("rgb\\..\\..\\evil.png"), "complete", 5, "unsafe path"),
    Case("empty-segment-key", _bad_key("rgb//000000.png"), "complete", 5, "unsafe path", backends=("s3",)),
    Case("file-and-folder", _paths("rgb", "rgb/000000.png"), "complete", 5, "a file or a folder"),
    Case("file-and-folder-png", _paths("x.png", "x.png/y"), "complete", 5, "a file or a folder"),
    Case("case-collision", _paths("rgb/A.png", "rgb/a.png"), "complete", 5, "case"),
    Case("case-collision-folders", _paths("RGB/000000.png", "rgb/000001.png"), "complete", 5, "one spelling"),
    Case("long-name", _paths(f"rgb/{LONG}.png"), "complete", 5, "name length"),
    Case("long-path", _paths("/".join(["d" * 120] * 5) + "/x.png"), "complete", 5, "path length"),
    Case("control-chars-folder", _manifest_change(), "invalid", 5, NOT_AN_ID, error="unsafe path",
         batch_id="2026-11-03_evil\x1b[2J\x1b[H"),
    Case("newline-folder", _manifest_change(), "invalid", 5, NOT_AN_ID, error="unsafe path",
         batch_id="2026-11-03_spoof\n2026-11-30_fake  run-cycle"),
    Case("bidi-folder", _manifest_change(), "invalid", 5, NOT_AN_ID, batch_id="2026-11-03_\u202egnp.exe"),
    Case("markup-folder", _manifest_change(), "invalid", 5, NOT_AN_ID, batch_id="2026-11-03_[bold]x[red]"),
    Case("upper-case-folder", _manifest_change(), "invalid", 5, NOT_AN_ID, batch_id="2026-11-03_Run-Cycle"),
    Case("escape-in-project", _marker({"project": "\x1b[31mred\x1b[0m"}, with_files=True), "complete", 0),
    Case("folder-markers", _folder_markers, "complete", 0),
    Case("only-a-folder-marker", _only_a_folder_marker, None, 8, "no batch"),
    Case("symlinked-folder", _symlinked_folder, "invalid", 5, "symlink", backends=("local",)),
    Case("symlinked-file", _symlinked_file, "complete", 5, "symlink", backends=("local",)),
    Case("fifo-manifest", _fifo_manifest, "uploading", 7, "no manifest.json", backends=("local",)),
    Case("socket-beside", _socket_extra, "complete", 0, backends=("local",)),
    Case("manifest-is-a-folder", _manifest_is_a_folder, "uploading", 7, "no manifest.json", backends=("local",)),
    Case("undecodable-folder", _manifest_change(), "invalid", 5, NOT_AN_ID, backends=("local",),
         batch_id=os.fsdecode(b"2026-11-03_\xff\xfe")),
]
FIFO = Case("fifo-listed", _fifo_listed, "complete", 7, "not in the bucket", backends=("local",))
# Manifests of the corpus are small: a low cap lets the over-the-cap case stay small too.
MANIFEST_CAP = 256 * 1024


def _runner(*args: str) -> Result:
    return Result(cli_main([str(a) for a in args]), "", "")


@pytest.fixture(scope="module", autouse=True)
def small_manifest_cap():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(contract, "MAX_MANIFEST_BYTES", MANIFEST_CAP)
        yield


@pytest.fixture(scope="module")
def world(request, tmp_path_factory) -> World:
    """Build the project, publish the good batch and write every bad batch (once per backend)."""
    from pose_factory.core.settings import load_settings
    from pose_factory.producer.generate import default_job, generate_batch

    backend = request.param
    tmp = tmp_path_factory.mktemp(f"hostile-{backend}")
    root = tmp / "project"
    for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
        (root / folder).mkdir(parents=True)
    env = {"POSE_FACTORY_ROOT": str(root), "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site-cache"), "DVC_NO_ANALYTICS": "1",
           "POSE_FACTORY_DVC_LOCAL_REMOTE": str(tmp / "dvc-local-remote"), "POSE_FACTORY_BACKEND": "local"}
    world = World(backend, root, env)
    if backend == "s3":
        server = request.getfixturevalue("s3_server")
        world.bucket = f"h-{uuid.uuid4().hex[:12]}"
        server.create_bucket(world.bucket)
        world.proxy = FaultProxy(server.endpoint_url).start()
        request.addfinalizer(world.proxy.stop)
        world.proxy.rewrite_listings(world.rewrite)
        env.update(s3_env(world.proxy.url, world.bucket))
        from helpers import Backend

        world.client = Backend("s3", s3_env(server.endpoint_url, world.bucket)).client()
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_NAMES:
            patch.delenv(name, raising=False)
        for name, value in env.items():
            patch.setenv(name, value)
        world.project = make_repository(Project(root), _runner, pipeline=False)
        job = default_job("run-cycle", 1, (48, 48), seed=3)
        skeleton = generate_batch(job, tmp / "pod", load_settings(root=tmp), batch_id="2026-11-01_skeleton",
                                  workers=1).batch_dir
        world.skeleton = {p.relative_to(skeleton).as_posix(): p.read_bytes() for p in sorted(skeleton.rglob("*"))
                          if p.is_file() and p.name != "manifest.json"}
        world.skeleton_manifest = json.loads((skeleton / "manifest.json").read_bytes())
        patch.setenv("SOURCE_DATE_EPOCH", _epoch("2026-11-30"))
        good = generate_batch(default_job("run-cycle", 2, (48, 48), seed=4), tmp / "pod", load_settings(root=tmp),
                              batch_id=GOOD, workers=1).batch_dir
        assert cli_main(["publish", str(good), "-q"]) == 0
        for index, case in enumerate([*CASES, FIFO]):
            if backend in case.backends:
                case.build(world, case.id_for(index))
    return world


@pytest.fixture
def hostile(world, monkeypatch, cli):
    """The world's environment for one test, and the CLI in it."""
    for name, value in world.env.items():
        monkeypatch.setenv(name, value)
    return world


@pytest.fixture(scope="module")
def listing(world) -> dict:
    """`list --json` of the whole corpus, run once per backend (each case checks its own row)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ENV_NAMES:
            patch.delenv(name, raising=False)
        for name, value in world.env.items():
            patch.setenv(name, value)
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli_main(["list", "--json"])
            human_code = cli_main(["list"])
    assert code == 0 and human_code == 0, err.getvalue()
    text = out.getvalue()
    document_text, human = text[:text.index("\n}\n") + 3], text[text.index("\n}\n") + 3:]
    return {"document": json.loads(document_text), "json_text": document_text, "human": human,
            "err": err.getvalue()}


def no_traceback(result: Result) -> None:
    assert "Traceback" not in result.out + result.err, result.err


def outside_data_unchanged(world: World, params_before: str) -> None:
    assert world.project.files_outside_data() == []
    assert (world.root / "params.yaml").read_text() == params_before


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case.name for case in CASES])
@pytest.mark.parametrize("world", ["local", "s3"], indirect=True)
def test_bad_batch_is_a_row_and_refused_alone(hostile, listing, cli, index):
    case = CASES[index]
    if hostile.backend not in case.backends:
        pytest.skip(f"{case.name} cannot exist in this backend's bucket")
    batch_id = case.id_for(index)
    rows = {row["batch_id"]: row for row in listing["document"]["batches"]}
    # The good batch lists whatever else the bucket holds.
    assert rows[GOOD]["status"] == "complete"
    if case.listed is None:
        assert batch_id not in rows
    else:
        assert rows[batch_id]["status"] == case.listed, rows[batch_id]
        if case.listed == "invalid":
            assert case.said in rows[batch_id]["problem"]
    for text in (listing["json_text"], listing["human"], listing["err"]):
        assert not any(c in text for c in "\x1b\x07\u202e\r"), "raw control characters reached the output"
        assert "\udcff" not in text
    assert not any(line.startswith("2026-11-30_fake") for line in listing["human"].splitlines())

    params_before = (hostile.root / "params.yaml").read_text()
    result = cli("pull", batch_id, "--engine", "boto3")
    no_traceback(result)
    assert result.code == case.pull_code, result.err
    assert not any(c in result.out + result.err for c in "\x1b\x07\u202e\r")
    if case.pull_code:
        assert result.err.startswith("error: ") and (case.error or case.said) in result.err
        assert not (hostile.root / "data" / "raw" / "pose-factory" / batch_id).exists()
        outside_data_unchanged(hostile, params_before)
    else:
        assert (hostile.root / "data" / "raw" / "pose-factory" / batch_id / "manifest.json").is_file()


@pytest.mark.parametrize("world", ["local"], indirect=True)
def test_a_fifo_in_the_local_bucket_never_hangs_a_pull(world):
    batch_id = FIFO.id_for(len(CASES))
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(world.env)
    # A real process with a timeout: the old listing opened the FIFO to hash it and blocked for ever.
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "pose_sync.py"), "pull", batch_id],
                            cwd=world.root, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == FIFO.pull_code, result.stderr
    assert "Traceback" not in result.stderr and FIFO.said in result.stderr


@pytest.mark.parametrize("world", ["local", "s3"], indirect=True)
def test_good_batches_still_list_pull_and_show_in_status(hostile, listing, cli):
    rows = {row["batch_id"]: row for row in listing["document"]["batches"]}
    invalid = [r for r in rows.values() if r["status"] == "invalid"]
    assert invalid and all(r["problem"] for r in invalid)
    assert f"{len(invalid)} invalid" in listing["human"]
    assert "\\x1b[2J" in listing["human"]  # shown escaped, not acted on

    result = cli("pull-latest", "--json", "--engine", "boto3")
    no_traceback(result)
    assert result.code == 0, result.err
    assert [b["batch_id"] for b in json.loads(result.out)["batches"]] == [GOOD]

    filtered = cli("pull", "--project", "run-cycle", "--json", "--engine", "boto3")
    assert filtered.code == 0, filtered.err
    assert [b["action"] for b in json.loads(filtered.out)["batches"]] == ["up-to-date"]

    status = cli("status", "--json")
    no_traceback(status)
    assert status.code == 0, status.err
    states = {s["batch_id"]: s for s in json.loads(status.out)["batches"]}
    assert states[GOOD]["state"] in ("not-pushed", "up-to-date")
    bad = [s for s in states.values() if s["remote"] == "invalid"]
    assert bad and all(s["state"] == "invalid-in-bucket" and s["problem"] and s["next"] for s in bad)
    human = cli("status")
    assert human.code == 0 and not any(c in human.out for c in "\x1b\x07\u202e")
    assert not any(line.startswith("2026-11-30_fake") for line in human.out.splitlines())


def test_validate_flags_paths_a_mac_cannot_hold_and_hostile_json(batch, cli):
    manifest = json.loads((batch / "manifest.json").read_bytes())
    twin = batch / "rgb" / "000000.PNG"  # one file with rgb/000000.png on macOS
    twin.write_bytes((batch / "rgb" / "000000.png").read_bytes())
    long_name = f"rgb/{'n' * 230}.png"
    (batch / long_name).write_bytes(b"x")
    manifest["files"] += [{"path": rel, "size": (batch / rel).stat().st_size,
                           "sha256": contract.sha256_bytes((batch / rel).read_bytes())}
                          for rel in ("rgb/000000.PNG", long_name)]
    (batch / "manifest.json").write_bytes(contract.dumps(manifest))
    annotation = batch / "annotations" / "000001.json"
    annotation.write_bytes(deep(5000))
    result = cli("validate", batch, "--json")
    assert result.code == 11 and "Traceback" not in result.err
    problems = {(p["file"], p["field"]): p for p in json.loads(result.out)["problems"]}
    assert "one file on macOS" in problems[("rgb/000000.PNG", "path")]["found"]
    assert (long_name, "name length") in problems
    assert "nested deeper" in problems[("annotations/000001.json", "$")]["found"]
