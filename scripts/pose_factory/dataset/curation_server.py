"""`pose-sync curate`: the curation page's server (standard library ThreadingHTTPServer) and its thumbnails.

The page (curate_page/) shows one batch as a grid of thumbnails (RGB with the skeleton drawn over it; other
modalities on demand), driven by the keyboard; every decision it sends is written at once by
`curation.record_decision`. Thumbnails are made on request, once, and cached in `data/cache/thumbs/`
(git-ignored), keyed by the sha256 of their source file, so a re-rendered sample gets new ones. The cache is
kept under `curation.thumbnail_cache_mb`: the thumbnails used longest ago go first.

The server is for this user only: bound to 127.0.0.1, every request must carry the random token printed in the
URL, a POST must be same-origin JSON (a web page elsewhere cannot post decisions), the Host header must be the
server's own (no DNS rebinding), and it serves only the files the batch manifest lists, inside the batch folder,
and thumbnails from its cache.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import os
import re
import secrets
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from pose_factory.core.errors import ConfigError, PoseFactoryError, UsageError
from pose_factory.core.fsutil import (
    PARTIAL_SUFFIX,
    STALE_PARTIAL_S,
    atomic_write_path,
    check_relative_path,
    sha256_bytes,
)
from pose_factory.core.settings import Settings
from pose_factory.dataset.curation import (
    CURATION_JSON_VERSION,
    DECISIONS,
    CurationBatch,
    apply_decisions,
    decisions_file,
    open_batch,
    read_decisions,
    record_decision,
)

IMAGE_MODALITIES = ("rgb", "pose", "depth", "normal", "seg")
THUMB_KINDS = ("overlay", *IMAGE_MODALITIES)
THUMB_PX = 192
# A trim goes this far below the limit, so that it runs once every few thousand new thumbnails, not at each.
TRIM_TO = 0.8
PAGE_ASSETS = Path(__file__).with_name("curate_page")
_ASSET_TYPES = {"curate.html": "text/html; charset=utf-8", "curate.js": "text/javascript; charset=utf-8",
                "curate.css": "text/css; charset=utf-8"}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{16}$")


def _sample_rows(batch: CurationBatch) -> list[dict[str, Any]]:
    """What the page filters on, per sample: pose set and camera, from the annotations."""
    rows = []
    for sid, sample in batch.samples.items():
        pose_set, camera, frame = "?", "?", None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, PoseFactoryError):
            annotation = orjson.loads((batch.folder / check_relative_path(sample["annotation"], where=sid))
                                      .read_bytes())
            pose_set, frame = str(annotation["pose"]["set"]), annotation["pose"].get("frame")
            cam = annotation["camera"]
            camera = f"az {cam['azimuth_deg']:g} el {cam['elevation_deg']:g}"
        rows.append({"id": sid, "pose_set": pose_set, "camera": camera, "frame": frame,
                     "modalities": [m for m in IMAGE_MODALITIES if m in sample["files"]],
                     "files": batch.fingerprints[sid]})
    return rows


# --- thumbnails -----------------------------------------------------------------------------------------

class Thumbnails:
    """Small PNGs made on first request and cached by the sha256 of their source (so a re-render gets new ones).

    The cache holds at most `limit_bytes`: each thumbnail served gets its mtime renewed, and once new ones take
    the cache over its limit, the ones used longest ago are deleted (down to TRIM_TO of the limit). Without
    this it grew by every sample of every batch and version ever looked at (about 18 KB a thumbnail, six kinds
    a sample). Deleting is safe at any instant: a thumbnail asked for again is made again.
    """

    def __init__(self, cache_dir: Path, px: int = THUMB_PX, limit_bytes: int = 512 * 1000 * 1000):
        self.folder = cache_dir / "thumbs"
        self.px = px
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._bytes = self.trim()

    def trim(self) -> int:
        """Delete the thumbnails used longest ago while the cache is over its limit, and the partial files a
        killed server left; return the bytes the cache holds now."""
        kept: list[tuple[float, int, str]] = []  # (mtime, size, path)
        now = time.time()
        try:
            folders = [entry.path for entry in os.scandir(self.folder) if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return 0
        for folder in folders:
            with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat(follow_symlinks=False)
                        if entry.name.endswith(PARTIAL_SUFFIX):
                            if now - st.st_mtime > STALE_PARTIAL_S:
                                os.unlink(entry.path)
                            continue
                        kept.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in kept)
        if total > self.limit_bytes:
            kept.sort()
            for _, size, path in kept:
                if total <= self.limit_bytes * TRIM_TO:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                total -= size
        return total

    def source(self, batch: CurationBatch, sample_id: str, modality: str) -> tuple[Path, str] | None:
        """A sample's file of one modality, checked to be inside the batch folder, and its sha256."""
        sample = batch.samples.get(sample_id)
        if sample is None or modality not in sample["files"]:
            return None
        rel = sample["files"][modality]
        try:
            check_relative_path(rel, where=sample_id)
        except PoseFactoryError:
            return None
        base = batch.folder.resolve()
        path = (batch.folder / rel).resolve()
        sha = batch.sha.get(rel, "")
        if not path.is_relative_to(base) or not path.is_file() or not _SHA256.match(sha):
            return None
        return path, sha

    def get(self, batch: CurationBatch, sample_id: str, kind: str) -> bytes | None:
        """The thumbnail's PNG bytes (made now if it is not cached), or None if the sample has no such image."""
        if kind == "overlay":
            rgb, pose = self.source(batch, sample_id, "rgb"), self.source(batch, sample_id, "pose")
            if rgb is None:
                return None
            key = sha256_bytes(f"{rgb[1]}{pose[1] if pose else ''}".encode())
            image_path, skeleton_path = rgb[0], pose[0] if pose else None
        else:
            found = self.source(batch, sample_id, kind)
            if found is None:
                return None
            key = found[1]
            image_path, skeleton_path = found[0], None
        cached = self.folder / key[:2] / f"{key}-{kind}-{self.px}.png"
        try:
            data = cached.read_bytes()
        except FileNotFoundError:
            pass
        else:
            with contextlib.suppress(OSError):  # a thumbnail just trimmed, or a cache we may not write to
                os.utime(cached)  # used now: the last to go when the cache is trimmed
            return data
        data = self._render(image_path, skeleton_path)
        with atomic_write_path(cached) as tmp:
            tmp.write_bytes(data)
        with self._lock:
            self._bytes += len(data)
            if self._bytes > self.limit_bytes:
                self._bytes = self.trim()
        return data

    def _render(self, image_path: Path, skeleton_path: Path | None = None) -> bytes:
        import numpy as np
        from PIL import Image

        with Image.open(image_path) as opened:
            image = opened.convert("RGB")
        image.thumbnail((self.px, self.px))
        if skeleton_path is not None:
            with Image.open(skeleton_path) as opened:
                skeleton = np.asarray(opened.convert("RGB").resize(image.size, Image.Resampling.NEAREST))
            base = np.asarray(image).copy()
            drawn = skeleton.max(axis=2) > 0  # the skeleton map is black where there is no limb
            base[drawn] = skeleton[drawn]
            image = Image.fromarray(base)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


# --- the server -----------------------------------------------------------------------------------------

class CurationApp:
    """What the page can ask for and do; the HTTP handler only checks the request and routes it here."""

    def __init__(self, settings: Settings, batch: CurationBatch):
        self.settings = settings
        self.batch = batch
        self.reasons = list(settings.curation.reasons or [])
        self.token = secrets.token_urlsafe(24)
        self.thumbnails = Thumbnails(settings.cache_dir,
                                     limit_bytes=settings.curation.thumbnail_cache_mb * 1000 * 1000)
        self.rows = _sample_rows(batch)
        self.path = decisions_file(settings.curation_dir, batch.batch_id)
        self.decided = 0
        self._lock = threading.Lock()

    def state(self) -> dict[str, Any]:
        applied = apply_decisions(read_decisions(self.path), self.batch.fingerprints)
        samples = []
        for row in self.rows:
            decision = applied.decisions.get(row["id"])
            samples.append({**row, "decision": decision.decision if decision else "",
                            "reason": decision.reason if decision else "", "stale": row["id"] in applied.stale,
                            "decided_files": decision.files if decision else ""})
        return {"version": CURATION_JSON_VERSION, "batch_id": self.batch.batch_id,
                "file": self.path.relative_to(self.settings.root).as_posix(), "reasons": self.reasons,
                "thumb_kinds": list(THUMB_KINDS), "samples": samples}

    def decide(self, payload: Any) -> dict[str, Any]:
        """Record one decision from the page; raises ValueError for a request that makes no sense."""
        if not isinstance(payload, dict):
            raise ValueError("expected a JSON object")
        sample_id, decision = payload.get("sample_id"), payload.get("decision")
        reason = payload.get("reason") or ""
        if not isinstance(sample_id, str) or sample_id not in self.batch.samples:
            raise ValueError("no such sample in this batch")
        # Undo puts back a decision exactly as it was, including one made on files since re-rendered.
        files = payload.get("files") or self.batch.fingerprints[sample_id]
        if not isinstance(files, str) or not _FINGERPRINT.match(files):
            raise ValueError("files must be 16 hex digits")
        if decision not in (*DECISIONS, "clear"):
            raise ValueError("decision must be keep, reject or clear")
        if not isinstance(reason, str) or reason and (decision != "reject" or reason not in self.reasons):
            raise ValueError("reason must be one of curation.reasons, and only for a rejection")
        with self._lock:
            previous, new = record_decision(self.settings.curation_dir, self.batch.batch_id, sample_id, decision,
                                            reason, files)
            self.decided += 1
        return {"sample_id": sample_id, "decision": new.decision if new else "", "reason": new.reason if new else "",
                "previous": previous.as_dict() if previous else None,
                "stale": bool(new) and files != self.batch.fingerprints[sample_id]}


class CurationServer(ThreadingHTTPServer):
    """The curation page's server, on 127.0.0.1 only."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, app: CurationApp, port: int = 0):
        self.app = app
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request, client_address) -> None:
        """A browser that drops a request (a page changed before its thumbnails came) is normal, not a traceback."""
        import sys

        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            print(f"curate: a request failed: {type(error).__name__}: {error}", file=sys.stderr)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The page's address, token included: whoever has it can curate."""
        return f"{self.origin}/?token={self.app.token}"


class _Handler(BaseHTTPRequestHandler):
    server: CurationServer
    server_version = "pose-factory-curate"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: the terminal shows the address and the summary, not every thumbnail request."""

    def _send(self, status: int, body: bytes, content_type: str, *, cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token is in the URL: never pass it on
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; frame-ancestors 'none'")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _refuse(self, status: int, text: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8")

    def _json(self, document: Any, status: int = 200) -> None:
        self._send(status, orjson.dumps(document), "application/json")

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        """Same host (no DNS rebinding), and the session's token, from the URL or the X-Curate-Token header."""
        allowed_hosts = {f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}"}
        if self.headers.get("Host", "") not in allowed_hosts:
            self._refuse(HTTPStatus.FORBIDDEN, "wrong Host: open the address pose-sync curate printed")
            return False
        token = self.headers.get("X-Curate-Token") or (query.get("token") or [""])[0]
        if not hmac.compare_digest(token.encode(), self.server.app.token.encode()):
            self._refuse(HTTPStatus.FORBIDDEN, "missing or wrong token: open the address pose-sync curate printed "
                                               "(it holds the token)")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if parts[:1] == ["assets"] and len(parts) == 2 and parts[1] in _ASSET_TYPES:
            # The page's code holds no data and needs no token (a <script> tag cannot send one).
            if self.headers.get("Host", "") in {f"127.0.0.1:{self.server.port}", f"localhost:{self.server.port}"}:
                self._send(200, (PAGE_ASSETS / parts[1]).read_bytes(), _ASSET_TYPES[parts[1]], cache="no-cache")
            else:
                self._refuse(HTTPStatus.FORBIDDEN, "wrong Host")
            return
        if not self._authorised(parse_qs(url.query)):
            return
        app = self.server.app
        if parts == [""]:
            self._send(200, (PAGE_ASSETS / "curate.html").read_bytes(), _ASSET_TYPES["curate.html"])
        elif parts == ["api", "state"]:
            self._json(app.state())
        elif len(parts) == 3 and parts[0] == "thumb" and parts[2] in THUMB_KINDS:
            try:
                data = app.thumbnails.get(app.batch, parts[1], parts[2])
            except OSError:
                data = None  # an unreadable or broken image: the page shows the gap
            if data is None:
                self._refuse(HTTPStatus.NOT_FOUND, "no such image")
            else:
                self._send(200, data, "image/png", cache="private, max-age=86400")
        elif len(parts) == 3 and parts[0] == "image" and parts[2] in IMAGE_MODALITIES:
            found = app.thumbnails.source(app.batch, parts[1], parts[2])
            if found is None:
                self._refuse(HTTPStatus.NOT_FOUND, "no such image")
            else:
                self._send(200, found[0].read_bytes(), "image/png", cache="private, max-age=86400")
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "not found")

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if not self._authorised(parse_qs(url.query)):
            return
        # A page on another site could send a "simple" cross-origin POST without reading the answer. JSON only
        # (not a simple request: the browser asks first, and this server never allows it), and a foreign Origin
        # or Sec-Fetch-Site is refused outright.
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (self.server.origin, f"http://localhost:{self.server.port}"):
            self._refuse(HTTPStatus.FORBIDDEN, "cross-origin request refused")
            return
        if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            self._refuse(HTTPStatus.FORBIDDEN, "cross-site request refused")
            return
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send application/json")
            return
        if url.path != "/api/decision":
            self._refuse(HTTPStatus.NOT_FOUND, "not found")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > 4096:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too large")
            return
        try:
            self._json(self.server.app.decide(json.loads(self.rfile.read(length) or b"null")))
        except ValueError as exc:
            self._refuse(HTTPStatus.BAD_REQUEST, str(exc))
        except ConfigError as exc:  # the decisions file was broken by hand: say so, write nothing
            self._refuse(HTTPStatus.CONFLICT, str(exc))

    def do_OPTIONS(self) -> None:  # noqa: N802 - a CORS preflight: never granted
        self._refuse(HTTPStatus.FORBIDDEN, "cross-origin requests are not allowed")


def make_server(settings: Settings, batch_id: str | None, port: int = 0) -> CurationServer:
    """The curation server for a batch, bound to 127.0.0.1 (port 0: a free one); call serve_forever() on it."""
    batch = open_batch(settings, batch_id)
    read_decisions(decisions_file(settings.curation_dir, batch.batch_id))  # a broken file stops us here, not later
    try:
        return CurationServer(CurationApp(settings, batch), port)
    except OSError as exc:
        raise UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", where="--port",
                         hint="leave --port out to take a free port") from None


def open_in_browser(url: str) -> bool:
    """Open the page in the user's browser when there is a graphical one (never an error when there is none)."""
    import sys
    import webbrowser

    # Without a display, webbrowser would start a text browser (lynx, w3m) in the terminal the server talks in.
    if sys.platform != "darwin" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        webbrowser.get()
    except webbrowser.Error:
        return False
    return webbrowser.open(url)
