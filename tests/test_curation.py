"""Curation: `pose-sync curate` in a real browser (headless Chromium driven over the DevTools protocol), the
decisions file on disk, the working set `dvc repro` rebuilds from it, and what `diff` / `review` say about it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import REPO, build_pipeline_repository, copy_repository, ctrl_c_reaches_it, dvc, git, quiet_cli
from pose_factory.core import contract

pytestmark = pytest.mark.integration

B = "2026-11-02_walk"
SAMPLES = 6
REASONS = ["limb through the floor", "skeleton does not match the render", "ugly camera angle",
           "figure cut off by the frame", "other"]
ARTEFACTS = Path(os.environ.get("POSE_FACTORY_TEST_ARTEFACTS", Path(__file__).resolve().parent / "artefacts"))


@pytest.fixture(scope="module")
def built_repo(tmp_path_factory) -> Path:
    """One pulled batch of 6 samples (48x48), `dvc repro` run and committed: made once for the module."""
    return build_pipeline_repository(tmp_path_factory.mktemp("curation"), [(B, 2, SAMPLES)])


@pytest.fixture
def repo(built_repo, tmp_path, monkeypatch) -> Path:
    return copy_repository(built_repo, tmp_path / "project", monkeypatch).root


def decisions(root: Path) -> dict[str, tuple[str, str]]:
    """The decisions file as {sample id: (decision, reason)}, checking its shape on the way."""
    lines = (root / "data" / "curation" / f"{B}.tsv").read_text().splitlines()
    assert lines[0] == "sample_id\tdecision\treason\tfiles"
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(row) == 4 and len(row[3]) == 16 for row in rows)
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)  # sorted: stable, readable git diffs
    return {row[0]: (row[1], row[2]) for row in rows}


def working_ids(root: Path) -> list[str]:
    index = json.loads((root / "data" / "working" / "current_batch" / "index.json").read_text())
    return [s["sample_id"] for s in index["samples"]]


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- a headless Chromium driven over the DevTools protocol (--remote-debugging-pipe: no extra package) -------

def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class ProtocolError(Exception):
    """Chromium answered a DevTools command with an error."""


class Browser:
    """Chromium with the DevTools protocol on fds 3 (commands in) and 4 (answers out), one page attached."""

    KEYS = {"ArrowRight": 39, "ArrowLeft": 37, "ArrowDown": 40, "ArrowUp": 38, "Enter": 13, "Escape": 27,
            "PageDown": 34, "PageUp": 33}

    def __init__(self, profile: Path):
        import fcntl

        def high(fd: int) -> int:  # numbers above 4, so that moving them to 3 and 4 cannot clobber one another
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
            os.close(fd)
            return moved

        to_browser_r, self._to_browser = map(high, os.pipe())
        self._from_browser, from_browser_w = map(high, os.pipe())
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        # The protocol's pipe is fds 3 and 4 of the browser: a small exec wrapper puts ours there.
        wrapper = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                   "os.execv(sys.argv[3], sys.argv[3:])")
        self.process = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(to_browser_r), str(from_browser_w), chromium(), *flags],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next += 1
        message = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next:
                    if "error" in answer:
                        raise ProtocolError(f"{method}: {answer['error']}")
                    return answer["result"]
            chunk = os.read(self._from_browser, 1 << 20)
            assert chunk, "Chromium closed the DevTools pipe"
            self._buffer += chunk

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.call(method, params, self.session)

    def js(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def press(self, key: str) -> None:
        if key in self.KEYS:
            events = [{"type": "rawKeyDown", "key": key, "code": key, "windowsVirtualKeyCode": self.KEYS[key]}]
        else:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            events = [{"type": "keyDown", "key": key, "code": code, "text": key,
                       "windowsVirtualKeyCode": ord(key.upper())}]
        for event in events + [{**events[0], "type": "keyUp"}]:
            self.page("Input.dispatchKeyEvent", {k: v for k, v in event.items() if k != "text" or
                                                 event["type"] != "keyUp"})

    def body(self, name: str) -> str | None:
        """A data-* attribute of the page's body (None while a navigation has not made the body yet)."""
        try:
            result = self.page("Runtime.evaluate", {"expression": f"document.body?.dataset[{name!r}] ?? null",
                                                    "returnByValue": True})
        except ProtocolError:  # the page's context is being replaced by the navigation
            return None
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (AssertionError, OSError, ProtocolError):
            pass
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def start_curate(root: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`pose-sync curate` as a user runs it, in a real process; returns it and the address it printed."""
    env = {**os.environ, "POSE_FACTORY_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "pose_sync.py"), "curate", *args,
                                "--no-browser"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=ctrl_c_reaches_it)
    for line in process.stdout:
        if line.startswith("open http://127.0.0.1:"):
            return process, line.split()[1]
    raise AssertionError(f"curate printed no address: {process.stderr.read()}")


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed: `make test` installs it on Debian")
def test_curate_in_a_real_browser_then_repro_diff_and_review(repo, tmp_path):
    server, url = start_curate(repo)
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.page("Page.navigate", {"url": url})
        wait_for(lambda: browser.body("ready") == "1", "the page to load its samples")
        assert browser.js("location.href") == url  # the page itself, not about:blank before the navigation
        assert browser.body("visible") == str(SAMPLES) and browser.body("selected") == "000000"
        wait_for(lambda: browser.js("Array.from(document.querySelectorAll('.card img'))"
                                    ".every(i => i.complete && i.naturalWidth > 0)"), "every thumbnail to load")
        assert len(list((repo / "data" / "cache" / "thumbs").rglob("*-overlay-*.png"))) == SAMPLES  # made once
        assert "data/cache" not in git(repo, "status", "--porcelain")  # outside git

        # k keeps 000000; 2 rejects 000001 for reason 2; skip 000002; r rejects 000003, u undoes it, 1 rejects it
        # for reason 1. Each decision moves to the next sample.
        for key in ("k", "2", "ArrowRight", "r", "u", "1"):
            browser.press(key)
        wait_for(lambda: browser.body("pending") == "0" and browser.body("saved") == "5", "5 decisions saved")
        assert browser.body("failed") == "0"
        assert decisions(repo) == {"000000": ("keep", ""), "000001": ("reject", REASONS[1]),
                                   "000003": ("reject", REASONS[0])}

        # Filters: by decision, by camera (every sample of this batch has its own azimuth).
        browser.js("(() => { const s = document.getElementById('f-decision'); s.value = 'reject';"
                   " s.dispatchEvent(new Event('change')); })()")
        assert browser.body("visible") == "2" and browser.body("selected") == "000001"
        browser.js("(() => { const s = document.getElementById('f-decision'); s.value = '';"
                   " s.dispatchEvent(new Event('change'));"
                   " const c = document.getElementById('f-camera'); c.value = c.options[1].value;"
                   " c.dispatchEvent(new Event('change')); })()")
        assert browser.body("visible") == "1"
        assert browser.js("document.getElementById('f-pose-set').options.length") == 2  # all + this batch's set

        # Enter shows every modality of the selected sample at full size, served from the batch.
        browser.press("Enter")
        wait_for(lambda: browser.js("Array.from(document.querySelectorAll('#detail img'))"
                                    ".every(i => i.complete && i.naturalWidth > 0)"), "the modalities to load")
        assert browser.js("document.querySelectorAll('#detail img').length") == 6  # overlay + 5 image modalities
        browser.press("Escape")
        shot = browser.page("Page.captureScreenshot", {"format": "png"})["data"]
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        import base64

        (ARTEFACTS / "curate.png").write_bytes(base64.b64decode(shot))

        # Killing the server loses nothing already saved; a decision the dead server cannot save says so.
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        assert decisions(repo) == {"000000": ("keep", ""), "000001": ("reject", REASONS[1]),
                                   "000003": ("reject", REASONS[0])}
        browser.press("k")
        wait_for(lambda: browser.body("failed") == "1", "the page to report the failed save")
        assert "NOT SAVED" in browser.js("document.getElementById('status').textContent")
    finally:
        browser.close()
        if server.poll() is None:
            server.kill()
            server.wait()
        server.stdout.close()
        server.stderr.close()

    # The pipeline respects the decisions: data/curation is a dependency of materialize.
    assert "data/curation" in dvc(repo, "status").stdout
    dvc(repo, "repro")
    assert working_ids(repo) == ["000000", "000002", "000004", "000005"]
    assert json.loads(dvc(repo, "status", "--json").stdout) == {}, "nothing is stale"

    # diff and review report the curation change (HEAD has none; the workspace has two rejections).
    result = quiet_cli("diff", "--json")
    assert result.code == 0, result.err
    [entry] = json.loads(result.out)["curation"]
    assert entry["batch_id"] == B and entry["newly_rejected"] == ["000001", "000003"]
    assert entry["after"]["reasons"] == {REASONS[0]: 1, REASONS[1]: 1} and entry["before"]["reject"] == 0
    assert json.loads(result.out)["summary"]["curation"] == {"rejected_before": 0, "rejected_after": 2,
                                                             "newly_rejected": 2, "no_longer_rejected": 0}
    assert f"curation {B}: rejected 0 -> 2" in quiet_cli("diff").out
    markdown = quiet_cli("diff", "--format", "markdown").out
    assert "#### Curation" in markdown and f"| `{B}` | {REASONS[0]} 1, " in markdown and "| 0 | 2 | 2 | 0 |" in markdown
    review = quiet_cli("review", "--out", tmp_path / "review")
    assert review.code == 0, review.err
    page = (tmp_path / "review" / "index.html").read_text()
    assert f'data-count="curation-rejected-{B}">2<' in page and REASONS[1] in page


class InProcess:
    """The curation server in a thread of the test process, and a raw HTTP client for it."""

    def __init__(self, root: Path):
        from pose_factory.core.settings import load_settings
        from pose_factory.dataset.curation_server import make_server

        self.server = make_server(load_settings(root=root), B)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.token = self.server.app.token

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: bool = True) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        all_headers = {"Host": f"127.0.0.1:{self.server.port}"}
        if token:
            all_headers["X-Curate-Token"] = self.token
        all_headers.update(headers or {})
        connection.request(method, path, body=body, headers=all_headers)
        answer = connection.getresponse()
        data = answer.read()
        connection.close()
        return answer.status, data

    def decide(self, sample_id: str, decision: str, reason: str = "", headers: dict | None = None) -> int:
        body = json.dumps({"sample_id": sample_id, "decision": decision, "reason": reason}).encode()
        return self.request("POST", "/api/decision", body, {"Content-Type": "application/json", **(headers or {})})[0]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_server_is_for_this_user_and_this_batch_only(repo):
    served = InProcess(repo)
    try:
        assert served.server.server_address[0] == "127.0.0.1"
        assert served.request("GET", "/api/state", token=False)[0] == 403
        assert served.request("GET", "/api/state", headers={"X-Curate-Token": "guess"})[0] == 403
        assert served.request("GET", "/", token=False)[0] == 403
        assert served.request("GET", f"/?token={served.token}", token=False)[0] == 200
        assert served.request("GET", "/api/state", headers={"Host": "attacker.example:80"})[0] == 403  # rebinding
        status, state = served.request("GET", "/api/state")
        assert status == 200 and len(json.loads(state)["samples"]) == SAMPLES
        assert json.loads(state)["reasons"] == REASONS

        # A page on another site cannot post a decision, with or without the token.
        assert served.decide("000000", "reject", headers={"Origin": "http://attacker.example"}) == 403
        assert served.decide("000000", "reject", headers={"Sec-Fetch-Site": "cross-site"}) == 403
        form = served.request("POST", "/api/decision", b"sample_id=000000&decision=reject",
                              {"Content-Type": "application/x-www-form-urlencoded"})
        assert form[0] == 415
        assert served.request("OPTIONS", "/api/decision")[0] == 403  # no CORS preflight is ever granted
        assert not (repo / "data" / "curation" / f"{B}.tsv").exists()

        # Nonsense is refused and writes nothing; a good decision is on disk when the answer comes.
        assert served.decide("../../etc/passwd", "reject") == 400
        assert served.decide("000000", "maybe") == 400
        assert served.decide("000000", "reject", reason="not a configured reason") == 400
        assert served.decide("000000", "reject", reason=REASONS[2]) == 200
        assert decisions(repo) == {"000000": ("reject", REASONS[2])}

        # Only files the manifest lists, inside the batch folder, and thumbnails.
        assert served.request("GET", "/image/000000/rgb")[0] == 200
        for path in ("/image/..%2Fmanifest.json/rgb", "/image/000000/manifest", "/image/000000/../../../etc/passwd",
                     "/thumb/000000/annotation", "/thumb/..%2F..%2F/rgb", "/assets/..%2Fcuration.py",
                     "/data/raw/pose-factory/" + B + "/manifest.json"):
            assert served.request("GET", path)[0] in (403, 404), path
    finally:
        served.stop()


def reseal(batch: Path) -> None:
    manifest = json.loads((batch / "manifest.json").read_text())
    paths = sorted(p.relative_to(batch).as_posix() for p in batch.rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    manifest["files"] = contract.file_entries(batch, paths)
    manifest["totals"]["bytes"] = sum(f["size"] for f in manifest["files"])
    (batch / "manifest.json").write_bytes(contract.dumps(manifest))


def test_a_rerendered_batch_keeps_decisions_of_unchanged_samples_and_asks_again_for_the_others(repo, tmp_path):
    from ruamel.yaml import YAML

    served = InProcess(repo)
    try:
        assert served.decide("000001", "reject", REASONS[0]) == 200
        assert served.decide("000002", "reject", REASONS[1]) == 200
        assert served.decide("000003", "keep") == 200
    finally:
        served.stop()
    # The pod re-renders sample 000002 (its RGB changes) and publishes the batch again; it is pulled.
    pod = tmp_path / "pod" / B
    shutil.copytree(repo / "data" / "raw" / "pose-factory" / B, pod)
    for path in pod.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    from PIL import Image

    with Image.open(pod / "rgb" / "000002.png") as image:
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(pod / "rgb" / "000002.png")
    reseal(pod)
    assert quiet_cli("publish", pod, "-q").code == 0
    assert quiet_cli("pull", B, "-q").code == 0

    result = quiet_cli("curation", B, "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["version"] == 1 and summary["rejected"] == ["000001"]
    assert summary["fresh_look_samples"] == ["000002"] and summary["keep"] == 1
    assert summary["undecided"] == SAMPLES - 3 and summary["reasons"] == {REASONS[0]: 1}

    validated = quiet_cli("validate", repo / "data" / "raw" / "pose-factory" / B, "--report",
                          repo / "data" / "reports" / "validate" / B, "-q")
    assert validated.code == 0, validated.err
    built = quiet_cli("materialize")
    assert built.code == 0, built.err
    assert "1 rejected in curation left out" in built.out and "1 curation decision(s) not applied" in built.out
    assert working_ids(repo) == ["000000", "000002", "000003", "000004", "000005"]

    yaml = YAML()
    params = yaml.load((repo / "params.yaml").read_text())
    params["working"]["curation"] = "ignore"
    with (repo / "params.yaml").open("w") as handle:
        yaml.dump(params, handle)
    assert quiet_cli("materialize").code == 0 and len(working_ids(repo)) == SAMPLES

    # A decisions file broken by hand is an error naming its line, never a traceback nor a silent skip.
    path = repo / "data" / "curation" / f"{B}.tsv"
    path.write_text(path.read_text() + "000004\tmaybe\t\t\n")
    broken = quiet_cli("curation", B)
    assert broken.code == 2 and f"{B}.tsv:5" in broken.err and "hint:" in broken.err


def test_curate_stops_cleanly_on_ctrl_c_and_names_a_missing_batch(repo):
    server, url = start_curate(repo, B)
    assert url.startswith("http://127.0.0.1:") and "token=" in url
    server.send_signal(signal.SIGINT)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 0 and "stopped: 0 decision(s) saved" in out and "Traceback" not in err
    missing = quiet_cli("curate", "2020-01-01_none", "--no-browser")
    assert missing.code == 8 and "pose-sync status" in missing.err
    (repo / "config" / "local.yaml").write_text("curation:\n  reasons: [" + ", ".join(["x"] * 10) + "]\n")
    too_many = quiet_cli("curation", B)
    assert too_many.code == 2 and "curation.reasons" in too_many.err


def test_the_thumbnail_cache_keeps_the_ones_used_last_within_its_limit(repo, tmp_path):
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset.curation import open_batch
    from pose_factory.dataset.curation_server import TRIM_TO, Thumbnails

    settings = load_settings(root=repo)
    assert settings.curation.thumbnail_cache_mb == 512, "the default the README names"
    batch = open_batch(settings, B)
    ids = sorted(batch.samples)
    cache = tmp_path / "cache"
    thumbs = Thumbnails(cache)
    files = {}
    for age, sid in enumerate(reversed(ids)):  # ids[0] made longest ago
        assert thumbs.get(batch, sid, "overlay")
        [files[sid]] = [p for p in (cache / "thumbs").rglob("*-overlay-*.png") if p not in files.values()]
        os.utime(files[sid], (1_000_000 - age * 100, 1_000_000 - age * 100))
    assert thumbs.get(batch, ids[0], "overlay"), "a cached thumbnail is served"  # and is now the last used
    stale = files[ids[0]].with_name(f".{files[ids[0]].name}.abc.partial")
    fresh = stale.with_name(stale.name.replace("abc", "def"))
    stale.write_bytes(b"x")
    os.utime(stale, (1_000_000, 1_000_000))
    fresh.write_bytes(b"x")
    size = {sid: path.stat().st_size for sid, path in files.items()}
    # Room for three: the one just used and the two made last.
    keep = [ids[0], ids[-1], ids[-2]]
    limit = int(sum(size[sid] for sid in keep) / TRIM_TO) + 1
    assert sum(size.values()) > limit
    trimmed = Thumbnails(cache, limit_bytes=limit)
    assert {sid for sid, path in files.items() if path.exists()} == set(keep)
    assert not stale.exists() and fresh.exists(), "a partial file is deleted once it is old, never while written"
    # A new thumbnail that takes the cache over its limit trims it again; the new one stays.
    assert trimmed.get(batch, ids[1], "overlay")
    remaining = list((cache / "thumbs").rglob("*.png"))
    assert files[ids[1]].exists() and files[ids[0]].exists()
    assert sum(p.stat().st_size for p in remaining) <= limit
