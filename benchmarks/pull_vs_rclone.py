#!/usr/bin/env python3
"""Benchmark: `pose-sync pull` against rclone and `dvc pull` on one batch in a local S3 server.

    scripts/.venv/bin/python benchmarks/pull_vs_rclone.py [--samples 286] [--size 1280x1280] [--repeat 3]
                                                          [--memory-files 20000]

Everything happens in a temporary folder (removed at the end unless --keep): a SeaweedFS server
(`pose_factory.devtools.s3local.LocalS3Server`) stands in for R2, the batches are generated and published to a
fresh bucket, and every timed run gets a fresh destination. See benchmarks/README.md.

It exits non-zero only when something fails (a command errors, the server does not start); a missed
target is reported, not failed: a benchmark is not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from pose_factory.devtools.s3local import LocalS3Server  # noqa: E402

VENV_BIN = Path(sys.executable).parent
POSE_SYNC = [sys.executable, str(REPO / "scripts" / "pose_sync.py")]
PHASES = [sys.executable, str(Path(__file__).resolve().parent / "_pull_phases.py")]
DVC = str(VENV_BIN / "dvc")
RCLONE = str(VENV_BIN / "rclone") if (VENV_BIN / "rclone").exists() else (shutil.which("rclone") or "rclone")
REMOTE = "r2_pose_factory"
BUCKET = "pose-bench"
PULL_BATCH = "2026-11-20_bench-pull"
MEMORY_BATCH = "2026-11-20_bench-memory"
FILES_PER_SAMPLE = 7
RATIO_TARGET = 1.5
MEMORY_TARGET_MB = 300
# Variables that would point the tool, dvc or rclone at something other than the benchmark's server.
SCRUB_PREFIXES = ("AWS_", "RCLONE_", "CLOUDFLARE_", "POSE_FACTORY_", "DVC_")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --- running and measuring one command ----------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    maxrss: int  # bytes: the largest single process in the tree (wait4 rusage, exact)
    tree_peak: int  # bytes: the largest sampled sum of RSS over the process and its descendants
    stdout: str
    stderr: str


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _tree_rss(root: int) -> int:
    children = _children_map()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss(pid)
        stack.extend(children.get(pid, ()))
    return total


def run(cmd: list[str], *, env: dict[str, str], cwd: Path, what: str, sample_tree: bool = False) -> Run:
    """Run cmd; wall time, exact peak RSS (wait4) and, if asked, the sampled peak RSS of its process tree."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True)
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True) if sample_tree else None
        if sampler:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        if sampler:
            sampler.join()
        out.seek(0)
        err.seek(0)
        result = Run(seconds, usage.ru_maxrss * 1024, peak[0], out.read(), err.read())
    if proc.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return result


# --- the test bed ----------------------------------------------------------------------------------------

class Bed:
    """The server, the credentials, the environment and the template repository."""

    def __init__(self, work: Path, server: LocalS3Server, access_key: str, secret_key: str):
        self.work = work
        self.server = server
        base = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB_PREFIXES)}
        base.update({
            "POSE_FACTORY_BACKEND": "r2",
            "POSE_FACTORY_R2_ENDPOINT": server.endpoint_url,
            "CLOUDFLARE_R2_ACCESS_KEY_ID": access_key,
            "CLOUDFLARE_R2_SECRET_ACCESS_KEY": secret_key,
            "POSE_FACTORY_R2_BUCKET": BUCKET,
            "DVC_SITE_CACHE_DIR": str(work / "dvc-site-cache"),
            "DVC_NO_ANALYTICS": "1",
            "POSE_FACTORY_DVC_LOCAL_REMOTE": str(work / "dvc-local-remote"),
            # What the venv's start-up hook would set from the variables above; explicit for plain dvc.
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "Bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
        })
        self.base_env = base
        self.template = work / "template-repo"
        self._counter = 0

    def env(self, root: Path | None = None, **extra: str) -> dict[str, str]:
        env = dict(self.base_env)
        if root is not None:
            env["POSE_FACTORY_ROOT"] = str(root)
        env.update(extra)
        return env

    def fresh(self, name: str) -> Path:
        self._counter += 1
        path = self.work / "runs" / f"{self._counter:03d}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def make_template_repo(self) -> None:
        """git + DVC + `pose-sync init`, as tests/conftest.py's `repo` fixture makes it."""
        root = self.template
        for folder in ("config", "data/raw", "data/working", "data/archive"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / ".gitignore", root / ".gitignore")
        (root / "params.yaml").write_text("# Parameters the DVC pipeline reads.\nbatches: []\n")
        env = self.env(root)
        for what, cmd in (("git init", ["git", "init", "-q", "-b", "main"]),
                          ("dvc init", [DVC, "init", "-q"]),
                          ("pose-sync init", POSE_SYNC + ["init"]),
                          ("git add", ["git", "add", "-A"]),
                          ("git commit", ["git", "commit", "-q", "-m", "dataset repository"])):
            run(cmd, env=env, cwd=root, what=what)

    def new_repo(self, name: str) -> Path:
        """A copy of the template repository (empty DVC cache, nothing pulled)."""
        dest = self.fresh(name)
        shutil.copytree(self.template, dest, symlinks=True)
        return dest


def generate_batch(bed: Bed, batch_id: str, samples: int, size: str, seed: int, cache: Path | None) -> Path:
    """Generate (or take from --batch-cache) a batch folder; return it."""
    key = f"{batch_id}-{samples}-{size}-{seed}"
    if cache is not None:
        cached = cache / key / batch_id
        if (cached / "manifest.json").is_file():
            log(f"using cached batch {cached}")
            return cached
        out = cache / key
    else:
        out = bed.work / "pod" / key
    out.mkdir(parents=True, exist_ok=True)
    log(f"generating {batch_id}: {samples} samples at {size} (slow for large images) ...")
    started = time.perf_counter()
    run(POSE_SYNC + ["generate", "--out", str(out), "--samples", str(samples), "--size", size, "--seed", str(seed),
                     "--batch-id", batch_id, "-q"], env=bed.env(bed.work / "pod-project"), cwd=bed.work,
        what="pose-sync generate")
    log(f"generated in {time.perf_counter() - started:.0f} s")
    return out / batch_id


def batch_totals(batch_dir: Path) -> tuple[int, int]:
    """(files, bytes) of a batch folder as pulled: manifest.json plus every listed file."""
    manifest = json.loads((batch_dir / "manifest.json").read_text())
    files = len(manifest["files"]) + 1
    size = sum(e["size"] for e in manifest["files"]) + (batch_dir / "manifest.json").stat().st_size
    return files, size


def publish(bed: Bed, batch_dir: Path) -> float:
    log(f"publishing {batch_dir.name} ...")
    result = run(POSE_SYNC + ["publish", str(batch_dir), "-q"], env=bed.env(bed.work / "pod-project"), cwd=bed.work,
                 what="pose-sync publish")
    log(f"published in {result.seconds:.1f} s")
    return result.seconds


# --- the measured commands ---------------------------------------------------------------------------------

def pose_sync_pull(bed: Bed, batch_id: str, engine: str, *, sample_tree: bool = False) -> Run:
    root = bed.new_repo(f"pull-{engine}")
    cmd = POSE_SYNC + ["pull", batch_id, "--json", "-q", "--engine", engine]
    result = run(cmd, env=bed.env(root), cwd=root, what=f"pose-sync pull --engine {engine}", sample_tree=sample_tree)
    report = json.loads(result.stdout)
    if report["batches"][0]["action"] != "pulled":
        raise BenchError(f"pose-sync pull did not pull: {report}")
    shutil.rmtree(root, ignore_errors=True)
    return result


def pose_sync_phases(bed: Bed, batch_id: str, engine: str) -> dict[str, float]:
    root = bed.new_repo(f"phases-{engine}")
    out = bed.work / f"phases-{engine}.json"
    cmd = PHASES + ["pull", batch_id, "--json", "-q", "--engine", engine]
    result = run(cmd, env=bed.env(root, POSE_BENCH_PHASES_OUT=str(out), POSE_BENCH_LAUNCH=repr(time.time())),
                 cwd=root, what=f"phased pull ({engine})")
    phases = json.loads(out.read_text())
    phases["wall"] = result.seconds
    phases["finalization"] = (result.seconds - phases.get("startup", 0.0) - phases["in_process_total"]
                              - phases.get("atexit", 0.0))
    shutil.rmtree(root, ignore_errors=True)
    return phases


def profile_pull(bed: Bed, batch_id: str, engine: str, top: int) -> str:
    root = bed.new_repo(f"profile-{engine}")
    cmd = [sys.executable, "-m", "cProfile", "-s", "cumtime"] + POSE_SYNC[1:] + ["pull", batch_id, "-q",
                                                                                 "--engine", engine]
    result = run(cmd, env=bed.env(root), cwd=root, what=f"profiled pull ({engine})")
    shutil.rmtree(root, ignore_errors=True)
    lines = result.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[max(0, start - 3):start + 1 + top])


def rclone_sync(bed: Bed, conf: Path, batch_id: str, transfers: int) -> Run:
    dest = bed.fresh("rclone-sync")
    dest.mkdir()
    cmd = [RCLONE, "--config", str(conf), "sync", f"{REMOTE}:{BUCKET}/batches/{batch_id}", str(dest),
           "--transfers", str(transfers)]
    result = run(cmd, env=bed.env(), cwd=bed.work, what="rclone sync")
    shutil.rmtree(dest, ignore_errors=True)
    return result


def prepare_dvc_source(bed: Bed, batch_id: str) -> tuple[Path, float]:
    """A repository where the batch was pulled, `dvc push`ed and committed; returns it and the push time."""
    root = bed.new_repo("dvc-source")
    env = bed.env(root)
    run(POSE_SYNC + ["pull", batch_id, "-q", "--commit"], env=env, cwd=root, what="pose-sync pull --commit")
    push = run([DVC, "push", "-q"], env=env, cwd=root, what="dvc push")
    return root, push.seconds


def dvc_pull(bed: Bed, source: Path) -> Run:
    dest = bed.fresh("dvc-clone")
    run(["git", "clone", "-q", str(source), str(dest)], env=bed.env(), cwd=bed.work, what="git clone")
    result = run([DVC, "pull", "-q"], env=bed.env(dest), cwd=dest, what="dvc pull")
    pulled = sum(1 for p in (dest / "data").rglob("*") if p.is_file() or p.is_symlink())
    if pulled < 2:
        raise BenchError(f"dvc pull left no data in {dest}")
    shutil.rmtree(dest, ignore_errors=True)
    return result


# --- report ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def times(self) -> list[float]:
        return [r.seconds for r in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def mb(n: float) -> float:
    return n / 1e6


def mib(n: float) -> float:
    return n / (1024 * 1024)


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=286, help="samples in the timed batch, 7 files each "
                        "(default: %(default)s -> 2,002 files + manifest)")
    parser.add_argument("--size", default="1280x1280", help="image size of the timed batch (default: %(default)s, "
                        "about 80 MB for 286 samples)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per command (default: %(default)s)")
    parser.add_argument("--memory-files", type=int, default=20000, help="files in the memory batch (default: "
                        "%(default)s; 0 skips the memory part)")
    parser.add_argument("--memory-size", default="32x32", help="image size of the memory batch (default: %(default)s)")
    parser.add_argument("--transfers", type=int, default=16, help="rclone sync --transfers (default: %(default)s)")
    parser.add_argument("--profile", type=int, metavar="N", default=0,
                        help="also run one boto3 pull under cProfile and print the top N entries by cumtime")
    parser.add_argument("--batch-cache", type=Path, metavar="DIR",
                        help="keep generated batches in DIR and reuse them next time (generation is slow)")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.samples < 1:
        parser.error("--repeat and --samples must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="pose-bench-"))
    access_key, secret_key = "BENCH" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30)
    server = LocalS3Server(work / "s3", access_key, secret_key)
    try:
        log(f"work folder {work}; starting SeaweedFS ...")
        server.start()
        server.create_bucket(BUCKET)
        log(f"S3 server at {server.endpoint_url} (pid {server.pid}, ready in {server.start_seconds:.1f} s)")
        return bench(args, Bed(work, server, access_key, secret_key))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, bed: Bed) -> int:
    work = bed.work
    (work / "pod-project" / "config").mkdir(parents=True)
    (work / "pod-project" / ".dvc").mkdir()
    bed.make_template_repo()
    conf = work / "rclone.conf"
    conf.write_text(run(POSE_SYNC + ["rclone-config", "--show-secrets"], env=bed.env(bed.template), cwd=work,
                        what="pose-sync rclone-config").stdout)
    conf.chmod(0o600)

    # 1. the timed batch
    batch_dir = generate_batch(bed, PULL_BATCH, args.samples, args.size, 1, args.batch_cache)
    files, size = batch_totals(batch_dir)
    publish_s = publish(bed, batch_dir)
    print(f"\nbatch {PULL_BATCH}: {args.samples} samples at {args.size}: {files} files (incl. manifest.json), "
          f"{mb(size):.1f} MB ({mib(size):.1f} MiB); published in {publish_s:.1f} s", flush=True)

    # 2. timings, interleaved so that drift (page cache, server compaction) hits every command alike
    rows = {key: Row(label) for key, label in (
        ("boto3", "pose-sync pull --engine boto3"),
        ("rclone-engine", "pose-sync pull (default engine: rclone)"),
        ("rclone", f"rclone sync --transfers {args.transfers}"),
        ("dvc", "dvc pull (fresh git clone)"),
    )}
    log("preparing the dvc pull source (pull, commit, dvc push) ...")
    source, push_s = prepare_dvc_source(bed, PULL_BATCH)
    log(f"dvc push took {push_s:.1f} s")
    # One untimed warm-up of each, so the first timed run does not pay for cold caches alone.
    log("warm-up runs ...")
    rclone_sync(bed, conf, PULL_BATCH, args.transfers)
    pose_sync_pull(bed, PULL_BATCH, "boto3")
    for i in range(args.repeat):
        for key, do in (("rclone", lambda: rclone_sync(bed, conf, PULL_BATCH, args.transfers)),
                        ("boto3", lambda: pose_sync_pull(bed, PULL_BATCH, "boto3")),
                        ("rclone-engine", lambda: pose_sync_pull(bed, PULL_BATCH, "rclone")),
                        ("dvc", lambda: dvc_pull(bed, source))):
            r = do()
            rows[key].runs.append(r)
            log(f"run {i + 1}/{args.repeat} {rows[key].label}: {r.seconds:.2f} s, peak RSS {mb(r.maxrss):.0f} MB")

    log("phase breakdown runs (one per engine, not part of the medians) ...")
    phases = {engine: pose_sync_phases(bed, PULL_BATCH, engine) for engine in ("boto3", "rclone")}
    profile_text = profile_pull(bed, PULL_BATCH, "boto3", args.profile) if args.profile else ""

    # 3. memory
    memory: dict[str, dict[str, float]] = {}
    mem_files = mem_size = 0
    if args.memory_files > 0:
        samples = max(1, round(args.memory_files / FILES_PER_SAMPLE))
        mem_dir = generate_batch(bed, MEMORY_BATCH, samples, args.memory_size, 2, args.batch_cache)
        mem_files, mem_size = batch_totals(mem_dir)
        publish(bed, mem_dir)
        for engine in ("boto3", "rclone"):
            log(f"memory run, engine {engine} ({mem_files} files) ...")
            r = pose_sync_pull(bed, MEMORY_BATCH, engine, sample_tree=True)
            memory[engine] = {"seconds": r.seconds, "maxrss_mb": mb(r.maxrss), "tree_peak_mb": mb(r.tree_peak)}
            log(f"  {r.seconds:.1f} s, largest process {mb(r.maxrss):.0f} MB, tree {mb(r.tree_peak):.0f} MB")

    # 4. report
    rclone_median = rows["rclone"].median
    lines = [f"\n== pull of one batch: {files} files, {mb(size):.1f} MB; {args.repeat} run(s) each, fresh destination "
             f"each time =="]
    body = []
    for row in rows.values():
        body.append([row.label, f"{row.median:.2f}", f"{row.best:.2f}", f"{row.median / rclone_median:.2f}x",
                     f"{files / row.median:.0f}", f"{mb(size) / row.median:.1f}",
                     f"{mb(max(r.maxrss for r in row.runs)):.0f}"])
    lines.append(table(["command", "median s", "min s", "vs rclone", "files/s", "MB/s", "peak RSS MB"], body))
    lines.append(f"(dvc pull source prepared with `dvc push` in {push_s:.1f} s; MB/s and files/s use the median)")

    lines.append("\n== where pose-sync pull spends its time (one extra run per engine, seconds) ==")
    order = [("startup", 0), ("import_cli", 0), ("import_pull_and_dvc", 0), ("main", 0), ("fetch_batch", 1),
             ("remote_manifest", 2), ("verify_staged", 2), ("transfer", 2), ("check_downloaded", 2),
             ("verify_batch", 2), ("swap", 2), ("dvc_track", 1), ("dvc_cache_fill", 2), ("dvc_state", 2),
             ("seal", 2), ("dvc_add", 2), ("dvc_checkout", 2), ("register", 1), ("atexit", 0),
             ("finalization", 0), ("wall", 0)]
    body = []
    for name, depth in order:
        cells = [phases[e].get(name) for e in ("boto3", "rclone")]
        if all(c is None for c in cells):
            continue
        body.append(["  " * depth + name] + ["-" if c is None else f"{c:.2f}" for c in cells])
    lines.append(table(["phase", "boto3", "rclone"], body))
    dl_verify = {e: phases[e].get("fetch_batch", 0.0) for e in phases}
    lines.append("download + verify (fetch_batch) = " + ", ".join(
        f"{e}: {s:.2f} s ({s / rclone_median:.2f}x rclone sync)" for e, s in dl_verify.items()))

    if memory:
        lines.append(f"\n== memory: pull of {mem_files} files ({mb(mem_size):.1f} MB), "
                     f"target < {MEMORY_TARGET_MB} MB ==")
        body = [[f"pose-sync pull --engine {e}", f"{m['seconds']:.1f}", f"{mem_files / m['seconds']:.0f}",
                 f"{m['maxrss_mb']:.0f}", f"{m['tree_peak_mb']:.0f}",
                 "met" if m["maxrss_mb"] < MEMORY_TARGET_MB else "MISSED"] for e, m in memory.items()]
        lines.append(table(["command", "wall s", "files/s", "largest process MB", "tree sum MB (sampled)",
                            "< 300 MB"], body))
        lines.append("largest process = exact peak RSS from wait4(): the largest single process among pose-sync and "
                     "the children it waited for (rclone for --engine rclone), not their sum; tree sum = pose-sync + "
                     "rclone sampled together every 50 ms (may miss short peaks).")

    ratio_boto3 = rows["boto3"].median / rclone_median
    ratio_rclone = rows["rclone-engine"].median / rclone_median
    lines.append("\n== targets from the issue ==")
    lines.append(f"pose-sync pull within {RATIO_TARGET}x of rclone --transfers {args.transfers}: "
                 f"boto3 {ratio_boto3:.2f}x {'met' if ratio_boto3 <= RATIO_TARGET else 'MISSED'}, "
                 f"--engine rclone {ratio_rclone:.2f}x {'met' if ratio_rclone <= RATIO_TARGET else 'MISSED'}")
    if memory:
        verdicts = ", ".join(f"{e} {m['maxrss_mb']:.0f} MB "
                             f"{'met' if m['maxrss_mb'] < MEMORY_TARGET_MB else 'MISSED'}"
                             for e, m in memory.items())
        lines.append(f"{args.memory_files:,}-file pull under {MEMORY_TARGET_MB} MB peak: {verdicts}")
    else:
        lines.append(f"{args.memory_files:,}-file pull under {MEMORY_TARGET_MB} MB peak: "
                     "not measured (--memory-files 0)")
    lines.append(f"\nmachine: {platform.node()}, {os.cpu_count()} cores, {platform.platform()}, Python "
                 f"{platform.python_version()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print("\n".join(lines), flush=True)
    if profile_text:
        print(f"\n== cProfile of one boto3 pull (top {args.profile} by cumtime) ==\n{profile_text}", flush=True)

    if args.json_out:
        args.json_out.write_text(json.dumps({
            "batch": {"files": files, "bytes": size, "samples": args.samples, "size": args.size},
            "repeat": args.repeat,
            "timings": {k: {"label": r.label, "seconds": r.times, "median": r.median, "min": r.best,
                            "ratio_to_rclone": r.median / rclone_median,
                            "peak_rss_mb": mb(max(x.maxrss for x in r.runs))} for k, r in rows.items()},
            "dvc_push_seconds": push_s,
            "phases": phases,
            "memory": {"files": mem_files, "bytes": mem_size, "engines": memory},
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
