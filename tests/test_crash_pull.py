"""`pull`, `archive` / `restore` and `publish` as transactions.

Kill-point tests SIGKILL each command at each step. After every kill: nothing in data/raw looks pulled
without being tracked (and git ignores it), `status` names the state and the command that fixes it, no
rclone is left running, nothing appeared outside data/. Then the same command, run again, must converge
to what an uninterrupted run produces. Then: checks before the first byte, staging that never traps, the
repository lock, Ctrl-C, a mirror on another filesystem, and the way back from a file edited in place.
One published repository per module is built once and copied for each case (48x48 batches, local bucket).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import ENV_NAMES, REPO, Project, Result, git, make_repository, publish_generated, run_script
from pose_factory.cli import main as cli_main

pytestmark = pytest.mark.integration

BATCH = "2026-11-20_run-cycle"
KILLED = -signal.SIGKILL


def run_cli(*args: str) -> Result:
    """The CLI in-process (cheaper than a subprocess when nothing is to be killed)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return Result(code, out.getvalue(), err.getvalue())


def environment(root: Path, base: Path) -> dict[str, str]:
    return {"POSE_FACTORY_ROOT": str(root), "POSE_FACTORY_BACKEND": "local",
            "DVC_SITE_CACHE_DIR": str(base / "dvc-site-cache"), "DVC_NO_ANALYTICS": "1",
            "POSE_FACTORY_DVC_LOCAL_REMOTE": str(base / "dvc-remote")}


@dataclass
class Template:
    """A repository built once per module, plus what an uninterrupted run of each command leaves."""

    root: Path
    base: Path
    expected: dict[str, dict[str, str]]


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def record(root: Path) -> dict[str, str]:
    """What a dataset version consists of: the .dvc files, .gitignores, params.yaml, git status, batch bytes."""
    mirror, archive = root / "data" / "raw" / "pose-factory", root / "data" / "archive" / "pose-factory"
    state = {"git status": git(root, "status", "--porcelain", "-uall"),
             "params.yaml": (root / "params.yaml").read_text()}
    for folder in (mirror, archive):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.is_file():
                    state[path.relative_to(root).as_posix()] = path.read_text()
                elif not path.name.startswith("."):
                    state[path.relative_to(root).as_posix() + "/"] = str(sorted(tree(path).items()))
    return state


@contextlib.contextmanager
def pointed_at(root: Path, base: Path):
    """The process environment of a user working in root (outside any test's monkeypatch)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_NAMES:
            mp.delenv(name, raising=False)
        for key, value in environment(root, base).items():
            mp.setenv(key, value)
        yield mp


def references(root: Path, base: Path, commands: list[str]) -> dict[str, dict[str, str]]:
    """What uninterrupted runs of these commands leave, each on its own copy of root."""
    expected = {}
    for name in commands:
        copy = base / f"reference-{name}-{os.getpid()}"
        shutil.copytree(root, copy, symlinks=True)
        with pointed_at(copy, base):
            if name == "restore":
                assert run_cli("archive", BATCH, "-q").code == 0
            result = run_cli(name, BATCH, "-q")
            assert result.code == 0, result.err
            expected[name] = record(copy)
        shutil.rmtree(copy)
    return expected


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Template:
    """A git + DVC repository whose local bucket holds BATCH; nothing pulled yet."""
    base = tmp_path_factory.mktemp("fresh")
    root = base / "project"
    with pointed_at(root, base):
        for folder in ("config", ".dvc", "data/raw", "data/working", "data/archive"):
            (root / folder).mkdir(parents=True)
        make_repository(Project(root), run_cli, pipeline=False)
        publish_generated(base, run_cli, BATCH, seed=1)
    return Template(root, base, references(root, base, ["pull"]))


def derive(template: Template, base: Path, *commands: list[str], expect: list[str]) -> Template:
    """A copy of a template with more commands run in it."""
    root = base / "project"
    shutil.copytree(template.root, root, symlinks=True)
    with pointed_at(root, template.base):
        for command in commands:
            if command[0] == "publish-rerender":
                publish_generated(base, run_cli, BATCH, seed=2)
            else:
                result = run_cli(*command)
                assert result.code == 0, result.err
    return Template(root, template.base, references(root, template.base, expect) if expect else {})


@pytest.fixture(scope="module")
def pulled(fresh, tmp_path_factory) -> Template:
    """BATCH pulled and committed, the bucket unchanged."""
    return derive(fresh, tmp_path_factory.mktemp("pulled"), ["pull", BATCH, "--commit", "-q"],
                  expect=["archive", "restore"])


@pytest.fixture(scope="module")
def rerendered(pulled, tmp_path_factory) -> Template:
    """BATCH pulled and committed; the bucket has a re-render of it since."""
    return derive(pulled, tmp_path_factory.mktemp("rerendered"), ["publish-rerender"], expect=["pull"])


@dataclass
class Case:
    project: Project
    env: dict[str, str]
    expected: dict[str, dict[str, str]]

    @property
    def root(self) -> Path:
        return self.project.root

    def killed(self, *args: str, at: str) -> None:
        result = run_script([*args, "-q"], cwd=self.root, env={**self.env, "POSE_FACTORY_KILL_AT": at})
        assert result.returncode == KILLED, (at, result.returncode, result.stdout, result.stderr)

    def states(self) -> dict[str, dict]:
        result = run_cli("status", "--json")
        assert result.code == 0, result.err
        return {b["batch_id"]: b for b in json.loads(result.out)["batches"]}


def use(template: Template, tmp_path: Path, monkeypatch) -> Case:
    root = tmp_path / "project"
    shutil.copytree(template.root, root, symlinks=True)
    env = environment(root, template.base)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    project = Project(root)
    project.snapshot()
    return Case(project, env, template.expected)


def rclone_processes(root: Path) -> list[int]:
    """Live rclone processes working for this project (an orphan would have the staging path in its args)."""
    found = []
    if not Path("/proc").is_dir():
        return found  # macOS: no /proc; there the next pull's stop_orphan is what stops a left-over rclone
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and args and b"rclone" in args[0] and any(str(root).encode() in a for a in args):
            found.append(int(entry.name))
    return found


def wait_for_no_rclone(root: Path, timeout_s: float = 30) -> list[int]:
    """Poll until no rclone works for root (a SIGKILLed one needs a moment to be gone); return what is left."""
    import time

    deadline = time.monotonic() + timeout_s
    while (left := rclone_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def assert_invariants(case: Case) -> dict[str, dict]:
    """What must hold after any kill; returns the status it read."""
    root = case.root
    mirror = root / "data" / "raw" / "pose-factory"
    before = record(root), tree(root / "data" / "raw" / ".pose-sync")
    states = case.states()
    assert (record(root), tree(root / "data" / "raw" / ".pose-sync")) == before, "status must not change anything"
    for folder in (mirror.iterdir() if mirror.is_dir() else []):
        if folder.is_dir() and not folder.name.startswith("."):
            if not folder.with_name(folder.name + ".dvc").exists():
                assert states[folder.name]["state"].startswith("interrupted-"), states[folder.name]
                git(root, "check-ignore", "-q", folder.relative_to(root).as_posix())  # never committed as images
    for line in git(root, "status", "--porcelain", "-uall").splitlines():  # `git add -A` would take only these
        assert line[3:].endswith((".dvc", ".gitignore")) or line[3:] == "params.yaml", line
    for batch_id, s in states.items():
        if s["state"] in ("up-to-date", "not-pushed", "changed-in-bucket", "archived"):
            assert s["tracked"] and s["registered"] and s["workspace"] is None, s
            assert run_cli("verify", batch_id).code == 0
        if s["state"].startswith("interrupted-"):
            assert s["next"] == f"pose-sync {s['state'].removeprefix('interrupted-')} {batch_id}"
    left = wait_for_no_rclone(root)
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # do not leave it running for the rest of the suite
    assert left == [], "an rclone outlived the pose-sync that started it"
    assert case.project.files_outside_data() == []
    return states


# --- pull -------------------------------------------------------------------------------------------------

PULL_POINTS = [
    # (kill point, engine, state status must report right after the kill)
    ("pull:after-listing", "boto3", "in-bucket-only"),
    ("pull:transfer:5", "boto3", "interrupted-pull"),
    ("pull:rclone-started", "rclone", "interrupted-pull"),
    ("pull:after-verify", "boto3", "interrupted-pull"),
    ("pull:mid-swap", "boto3", "interrupted-pull"),
    ("pull:swapped", "boto3", "interrupted-pull"),
    ("pull:after-swap", "boto3", "interrupted-pull"),
    ("pull:cache-object:5", "boto3", "interrupted-pull"),  # DVC's cache half filled (dvccache)
    ("pull:after-cache", "boto3", "interrupted-pull"),  # objects and .dir there, no .dvc file yet
    ("pull:after-dvc-add", "boto3", "interrupted-pull"),
    ("pull:after-params", "boto3", "interrupted-pull"),
]


@pytest.mark.parametrize(("point", "engine", "state"), PULL_POINTS, ids=[p[0] for p in PULL_POINTS])
def test_killed_pull_is_named_by_status_and_converges(fresh, tmp_path, monkeypatch, point, engine, state):
    case = use(fresh, tmp_path, monkeypatch)
    case.killed("pull", BATCH, "--engine", engine, at=point)
    states = assert_invariants(case)
    assert states[BATCH]["state"] == state
    again = run_cli("pull", BATCH, "--engine", engine, "--json")
    assert again.code == 0, again.err
    assert record(case.root) == case.expected["pull"]
    staging = case.root / "data" / "raw" / ".pose-sync" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []


@pytest.mark.parametrize(("point", "after"), [("pull:mid-swap", "changed-in-bucket"),
                                              ("pull:swapped", "not-pushed"), ("pull:after-swap", "not-pushed")])
def test_killed_update_rolls_back_before_the_swap_and_forward_after_it(rerendered, tmp_path, monkeypatch, point, after):
    case = use(rerendered, tmp_path, monkeypatch)
    case.killed("pull", BATCH, at=point)
    assert assert_invariants(case)[BATCH]["state"] == "interrupted-pull"
    table = run_cli("status").out  # people see the state and the command that fixes it
    row = next(line for line in table.splitlines() if line.startswith(BATCH)).split()
    assert row[1] == "interrupted-pull" and " ".join(row[-3:]) == f"pose-sync pull {BATCH}", row
    # Any later pull settles it first: another batch's pull (here: one that does not exist) is enough.
    settled = run_cli("pull", "2020-01-01_nothing", "--json")
    assert settled.code == 8
    assert case.states()[BATCH]["state"] == after
    assert run_cli("pull", BATCH, "-q").code == 0
    assert record(case.root) == case.expected["pull"]
    staging = case.root / "data" / "raw" / ".pose-sync" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []  # not even the version an exchange replaced


def test_killed_before_commit_is_committed_by_the_rerun(fresh, tmp_path, monkeypatch):
    case = use(fresh, tmp_path, monkeypatch)
    case.killed("pull", BATCH, "--commit", at="pull:before-commit")
    assert assert_invariants(case)[BATCH]["state"] == "not-pushed"
    result = json.loads(run_cli("pull", BATCH, "--commit", "--json").out)
    assert result["batches"][0]["action"] == "up-to-date" and result["commit"]
    assert git(case.root, "status", "--porcelain") == ""


# --- archive / restore ---------------------------------------------------------------------------------------

MOVE_POINTS = [("archive", "archive:after-move"), ("archive", "archive:after-dvc-file"),
               ("archive", "archive:after-params"), ("restore", "restore:after-move")]


@pytest.mark.parametrize(("command", "point"), MOVE_POINTS, ids=[p[1] for p in MOVE_POINTS])
def test_killed_archive_or_restore_is_completed_by_rerunning_it(pulled, tmp_path, monkeypatch, command, point):
    case = use(pulled, tmp_path, monkeypatch)
    if command == "restore":
        assert run_cli("archive", BATCH, "-q").code == 0
    case.killed(command, BATCH, at=point)
    assert assert_invariants(case)[BATCH]["state"] == f"interrupted-{command}"
    again = run_cli(command, BATCH)
    assert again.code == 0, again.err
    assert record(case.root) == case.expected[command]
    nested = [p for p in case.root.joinpath("data").rglob(BATCH) if p.parent.name == BATCH]
    assert nested == [], "a batch must never end up inside itself"
    changed = again.out.split(" -- ", 1)[1].split(" && ")[0].split()  # what it lists: only what it changed
    assert sorted(changed) == sorted(line[3:] for line in case.expected[command]["git status"].splitlines())


# --- publish (the pod side) ----------------------------------------------------------------------------------

def bucket_state(root: Path) -> dict[str, bytes]:
    """The bucket as readers see it (atomic-write temp files are invisible to them), marker time left out."""
    folder = root / "data" / "local-bucket" / "pose-factory" / "batches" / BATCH
    state = {rel: data for rel, data in tree(folder).items() if not rel.endswith(".partial")}
    if "_complete.json" in state:
        marker = json.loads(state["_complete.json"])
        marker.pop("completed_at")
        state["_complete.json"] = json.dumps(marker, sort_keys=True).encode()
    return state


@pytest.mark.parametrize("point", ["publish:after-manifest", "publish:upload:4", "publish:before-marker",
                                   "publish:after-unmark"])
def test_killed_publish_is_never_pulled_and_converges(fresh, tmp_path, monkeypatch, point):
    from pose_factory.core.settings import load_settings
    from pose_factory.producer.generate import default_job, generate_batch

    case = use(fresh, tmp_path, monkeypatch)
    seed = 3 if point == "publish:after-unmark" else 1  # unmarking happens only when a new render replaces one
    if seed == 1:
        shutil.rmtree(case.root / "data" / "local-bucket" / "pose-factory" / "batches" / BATCH)
    made = generate_batch(default_job("run-cycle", 3, (48, 48), seed=seed), tmp_path / "pod",
                          load_settings(root=tmp_path), batch_id=BATCH, replace=True, workers=1)
    case.killed("publish", str(made.batch_dir), at=point)
    listing = json.loads(run_cli("list", "--json").out)["batches"]
    assert [(b["batch_id"], b["status"]) for b in listing] == [(BATCH, "uploading")]
    refused = run_cli("pull", BATCH)
    assert refused.code == 7 and "_complete.json" in refused.err
    assert not (case.root / "data" / "raw" / "pose-factory" / BATCH).exists()
    assert case.states()[BATCH]["state"] == "uploading"
    assert run_cli("publish", str(made.batch_dir), "-q").code == 0
    converged = bucket_state(case.root)
    reference = tmp_path / "reference"
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(reference))
    (reference / "data").mkdir(parents=True)
    assert run_cli("publish", str(made.batch_dir), "-q").code == 0
    assert converged == bucket_state(reference)
    monkeypatch.setenv("POSE_FACTORY_ROOT", str(case.root))
    assert run_cli("pull", BATCH, "-q").code == 0


# --- rclone never outlives pose-sync ---------------------------------------------------------------------------

ORPHAN_PROGRAM = """
import os, signal, sys, tempfile
from pathlib import Path
sys.path.insert(0, {scripts!r})
from pose_factory.bucket import rclone
pid_file = Path({pid_file!r})
process = rclone.start([rclone.binary(), "rcd", "--rc-addr", "127.0.0.1:0", "--rc-no-auth", {marker!r}],
                       env=dict(os.environ), stderr=None, pid_file=pid_file)
print(process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc (Linux); macOS relies on stop_orphan")
def test_rclone_dies_with_a_killed_pose_sync(tmp_path):
    """A long-running rclone started by a process that is then SIGKILLed must not survive it."""
    marker = str(tmp_path / "marker-dir")
    Path(marker).mkdir()
    code = ORPHAN_PROGRAM.format(scripts=str(REPO / "scripts"), pid_file=str(tmp_path / "rclone.pid"), marker=marker)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == KILLED, result.stderr
    rclone_pid = int(result.stdout.split()[0])
    leftover = wait_for_no_rclone(tmp_path, timeout_s=10)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert leftover == [], f"rclone {rclone_pid} outlived the process that started it"


MIRROR = Path("data/raw/pose-factory")
STAGING = Path("data/raw/.pose-sync/staging")


def bucket_batch(case: Case) -> Path:
    return case.root / "data" / "local-bucket" / "pose-factory" / "batches" / BATCH


# --- checks before downloading -----------------------------------------------------------------------------

@pytest.mark.parametrize("params_text", ["batches: 3\n", "batches: [unclosed\n", "- a list\n", b"\xff\xfe\x00binary"],
                         ids=["batches-not-a-list", "malformed", "not-a-mapping", "binary"])
def test_unusable_params_yaml_is_refused_before_a_byte_is_downloaded(fresh, tmp_path, monkeypatch, params_text):
    case = use(fresh, tmp_path, monkeypatch)
    path = case.root / "params.yaml"
    path.write_bytes(params_text if isinstance(params_text, bytes) else params_text.encode())
    result = run_cli("pull", BATCH)
    assert result.code == 2, result.err
    assert "params.yaml" in result.err and "hint:" in result.err and "Traceback" not in result.err
    assert not (case.root / STAGING / BATCH).exists() and not (case.root / MIRROR / BATCH).exists()
    assert path.read_bytes() == (params_text if isinstance(params_text, bytes) else params_text.encode())


def test_a_batch_that_cannot_fit_on_the_disk_is_refused_before_downloading(fresh, tmp_path, monkeypatch):
    case = use(fresh, tmp_path, monkeypatch)
    # The bucket's manifest claims a file far larger than any disk (and a marker that matches it).
    folder = bucket_batch(case)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["size"] = 10**15
    manifest["totals"]["bytes"] += 10**15
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    (folder / "manifest.json").write_bytes(data)
    marker = json.loads((folder / "_complete.json").read_text())
    marker.update(manifest_sha256=hashlib.sha256(data).hexdigest(), bytes=manifest["totals"]["bytes"])
    (folder / "_complete.json").write_text(json.dumps(marker))
    result = run_cli("pull", BATCH)
    assert result.code == 18 and "hint:" in result.err, result.err
    staged = case.root / STAGING / BATCH
    assert not staged.exists() or not any(p.is_file() for p in staged.rglob("*"))
    assert assert_invariants(case)[BATCH]["state"] == "in-bucket-only"


# --- staging is never a trap -------------------------------------------------------------------------------

def test_leftovers_of_killed_transfers_and_older_renders_never_block_a_pull(fresh, tmp_path, monkeypatch):
    case = use(fresh, tmp_path, monkeypatch)
    # A pull of the first render (3 samples) died after verifying it ...
    case.killed("pull", BATCH, at="pull:after-verify")
    staged = case.root / STAGING / BATCH
    # ... with debris of transfers killed mid-file around it ...
    (staged / "rgb" / ".000001.png.x1y2.partial").write_bytes(b"half")
    (staged / "depth" / "000000.png.d41d8cd9.partial").write_bytes(b"rclone's")
    (staged / "pose" / "000000.png").chmod(0o644)
    (staged / "pose" / "000000.png").write_bytes(b"damaged")
    (staged / "seg" / "000000.png").unlink()
    (staged / "seg" / "000000.png").mkdir()  # a folder where a file belongs
    os.mkfifo(staged / "annotations" / "pipe")
    # ... and the pod re-rendered the batch since, with fewer samples.
    publish_generated(tmp_path / "again", run_cli, BATCH, samples=2, seed=5)
    result = run_cli("pull", BATCH, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["recovered"] == [{"batch_id": BATCH, "command": "pull", "outcome": "rolled back"}]
    assert run_cli("verify", BATCH).code == 0
    assert sorted(p.name for p in (case.root / MIRROR / BATCH / "rgb").iterdir()) == ["000000.png", "000001.png"]
    assert not staged.exists()
    assert assert_invariants(case)[BATCH]["state"] == "not-pushed"


# --- one pull at a time --------------------------------------------------------------------------------------

HOLDER = """
import sys
sys.path.insert(0, {scripts!r})
from pose_factory.core.settings import load_settings
from pose_factory.dataset import journal
with journal.locked(load_settings(), "pull"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_pull_is_refused_while_one_runs_and_a_dead_ones_lock_is_taken_over(fresh, tmp_path, monkeypatch):
    case = use(fresh, tmp_path, monkeypatch)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(scripts=str(REPO / "scripts"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "locked"
        busy = run_cli("pull", BATCH)
        assert busy.code == 17, busy.err
        assert f"pid {holder.pid}" in busy.err and "Traceback" not in busy.err
        assert run_cli("status", "--json").code == 0  # reading never waits for the lock
    finally:
        holder.kill()  # SIGKILL: the lock file stays, naming a dead process
        holder.wait()
    assert str(holder.pid) in (case.root / "data" / "raw" / ".pose-sync" / "lock").read_text()
    result = run_cli("pull", BATCH)
    assert result.code == 0, result.err


def test_ctrl_c_cancels_the_downloads_still_queued(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from pose_factory.bucket.backends import run_parallel

    ran = []
    queued, interrupted, cancelled = threading.Event(), threading.Event(), threading.Event()
    deadline = time.monotonic() + 20  # were nothing ever cancelled, the held calls below would not wait forever
    real_shutdown = ThreadPoolExecutor.shutdown

    def shutdown(self, wait=True, *, cancel_futures=False):
        real_shutdown(self, wait=False, cancel_futures=cancel_futures)
        cancelled.set()  # what was queued is cancelled by now
        real_shutdown(self, wait=wait)

    monkeypatch.setattr(ThreadPoolExecutor, "shutdown", shutdown)

    def items():
        yield from range(400)
        queued.set()  # run_parallel has handed every item to its pool

    def on_ctrl_c(signum, frame):
        interrupted.set()
        raise KeyboardInterrupt

    def work(item: int) -> None:
        ran.append(item)
        if item == 2:
            queued.wait(10)
            os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C reaches the process
        if item >= 2:
            interrupted.wait(10)  # later calls cannot finish before the waiting thread has seen Ctrl-C
        if item >= 4:  # started after Ctrl-C: held until the queue is cancelled, however slowly the machine runs
            cancelled.wait(max(0.0, deadline - time.monotonic()))

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_parallel(work, items(), 2)
    finally:
        signal.signal(signal.SIGINT, previous)
    # 0 to 3, then at most the one call each of the two threads took after Ctrl-C: the other 394 never ran.
    assert len(ran) <= 6, f"{len(ran)} of 400 calls ran after Ctrl-C"


# --- a mirror on another filesystem --------------------------------------------------------------------------

CROSS_FS_DRIVER = """
import json, os, subprocess, sys
sys.path.insert(0, {scripts!r})
from pose_factory.cli import main
out = {{}}
out["devices"] = [os.stat("data/raw").st_dev, os.stat("data/archive").st_dev]
out["pull"] = main(["pull", {batch!r}, "-q"])
out["verify"] = main(["verify", {batch!r}])
killed = subprocess.run([sys.executable, {script!r}, "archive", {batch!r}, "-q"],
                        env={{**os.environ, "POSE_FACTORY_KILL_AT": "archive:after-copy"}})
out["killed"] = killed.returncode
out["archive"] = main(["archive", {batch!r}, "-q"])
out["verify_archived"] = main(["verify", {batch!r}])
out["restore"] = main(["restore", {batch!r}, "-q"])
out["verify_restored"] = main(["verify", {batch!r}])
print("RESULT " + json.dumps(out))
"""


def test_mirror_on_another_filesystem_pulls_archives_and_restores(fresh, tmp_path, monkeypatch):
    """data/raw on its own filesystem (a tmpfs mounted in a private mount namespace) and data/archive on another."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("needs `unshare --mount` (Linux, root) to mount a second filesystem privately")
    case = use(fresh, tmp_path, monkeypatch)
    raw = case.root / "data" / "raw"
    driver = CROSS_FS_DRIVER.format(scripts=str(REPO / "scripts"), batch=BATCH,
                                    script=str(REPO / "scripts" / "pose_sync.py"))
    shell = f"mount -t tmpfs tmpfs {raw} && exec {sys.executable} -c \"$DRIVER\""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell], cwd=case.root,
                            env={**os.environ, "DRIVER": driver}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert out["devices"][0] != out["devices"][1]
    assert out["killed"] == -signal.SIGKILL
    assert {k: v for k, v in out.items() if k not in ("devices", "killed")} == {
        "pull": 0, "verify": 0, "archive": 0, "verify_archived": 0, "restore": 0, "verify_restored": 0}


# --- a raw file edited in place ------------------------------------------------------------------------------

def edit_in_place(path: Path) -> None:
    """What root (or a chmod) can do despite the read-only bit: write into the very file."""
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.seek(10)
        handle.write(b"EDITED")


def test_a_file_edited_in_place_is_detected_and_repaired_from_the_bucket_or_the_dvc_remote(
        pulled, tmp_path, monkeypatch):
    case = use(pulled, tmp_path, monkeypatch)
    root = case.root
    # Its own DVC remote (init writes a local folder remote into the git-ignored .dvc/config.local).
    local_config = root / ".dvc" / "config.local"
    text = local_config.read_text()
    assert str(pulled.base / "dvc-remote") in text
    local_config.write_text(text.replace(str(pulled.base / "dvc-remote"), str(tmp_path / "private-dvc-remote")))
    folder = root / MIRROR / BATCH
    pristine = record(root)

    # 1. The bucket still holds the pulled version: the damaged file comes back from there.
    edit_in_place(folder / "rgb" / "000001.png")
    checked = run_cli("verify", BATCH)
    assert checked.code == 7 and "rgb/000001.png" in checked.err and "--repair" in checked.err
    # --deep: its folders did not change, a file was written in place (status alone looks at folders only)
    state = {b["batch_id"]: b for b in json.loads(run_cli("status", "--json", "--deep").out)["batches"]}[BATCH]
    assert state["state"] == "modified" and state["next"] == f"pose-sync pull {BATCH} --repair"
    refused = run_cli("pull", BATCH)
    assert refused.code == 7 and "--repair" in refused.err
    repaired = run_cli("pull", BATCH, "--repair", "--json")
    assert repaired.code == 0, repaired.err
    assert json.loads(repaired.out)["batches"][0]["action"] == "repaired"
    assert run_cli("verify", BATCH).code == 0 and record(root) == pristine
    assert case.states()[BATCH]["state"] == "not-pushed"

    # 2. The bucket holds a new render now, but the version was pushed: it comes back from the DVC remote.
    from pose_factory.dataset import dvcrepo

    with dvcrepo.open_repo(root) as repo:
        repo.push()
    publish_generated(tmp_path / "again", run_cli, BATCH, seed=9)
    edit_in_place(folder / "depth" / "000002.png")
    (folder / "stray.txt").write_text("not part of the batch")
    assert run_cli("verify", folder).code == 7
    repaired = run_cli("pull", BATCH, "--repair")
    assert repaired.code == 0, repaired.err
    assert run_cli("verify", BATCH).code == 0 and record(root) == pristine
    assert case.states()[BATCH]["state"] == "changed-in-bucket"
