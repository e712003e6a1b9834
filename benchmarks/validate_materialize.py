#!/usr/bin/env python3
"""Benchmark: `pose-sync validate` against `sha256sum`, and `materialize` (hardlinks) against `cp -al`.

The issue's targets, at two scales (by default 1,000 samples at 512x512 = 7,001 files and 10,000 samples at
32x32 = 70,001 files; six modality files per sample go into the working set, so 6,000 and 60,000 links):
validate within 1.3x of sha256sum over the same files, materialize within 2x of `cp -al` of the same six folders.
Each ratio is measured side by side: every round runs each command once, in turn, and the medians are compared.
It prints peak RSS (wait4) and the load average; it is not a test and never fails on a missed target.

    scripts/.venv/bin/python benchmarks/validate_materialize.py [--scale 1000:512x512 --scale 10000:32x32]
        [--repeat 7] [--batch-cache DIR] [--json-out FILE] [--baseline CHECKOUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSE_SYNC = [sys.executable, str(REPO / "scripts" / "pose_sync.py")]
MODALITY_FOLDERS = ["pose", "openpose_json", "depth", "normal", "seg", "rgb"]
VALIDATE_TARGET = 1.3
MATERIALIZE_TARGET = 2.0
JSON_VERSION = 1


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Commands are started by this small helper process, not by the benchmark itself: Linux counts the memory of
# the process a command was forked from in the command's peak RSS (wait4 reports the larger of the two), and
# the benchmark holds the file lists. The helper holds about 10 MB, the floor of every RSS figure here.
LAUNCHER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    request = json.loads(line)
    with open(request["stderr"], "wb") as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(request["command"], env=request["env"], stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    print(json.dumps([seconds, usage.ru_maxrss, os.waitstatus_to_exitcode(status), cpu]), flush=True)
"""


class Launcher:
    def __init__(self, work: Path) -> None:
        self.errors = work / "stderr.txt"
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, command: list[str], env: dict[str, str] | None = None) -> tuple[float, int, float]:
        """(wall seconds, peak RSS in bytes of the process or any descendant it waited for, CPU seconds of the
        process and its descendants) of one command."""
        request = {"command": command, "env": env or dict(os.environ), "stderr": str(self.errors)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        seconds, maxrss, code, cpu = json.loads(self.proc.stdout.readline())
        if code != 0:
            raise SystemExit(f"failed ({code}): {' '.join(command)}\n{self.errors.read_text(errors='replace')}")
        # ru_maxrss is in KiB on Linux, in bytes on macOS
        return seconds, maxrss * (1 if sys.platform == "darwin" else 1024), cpu

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


@dataclass
class Timings:
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, measured: tuple[float, int, float]) -> None:
        self.seconds.append(measured[0])
        self.rss.append(measured[1])
        self.cpu.append(measured[2])

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prepare_batch(cache: Path, samples: int, size: str, env: dict[str, str]) -> Path:
    batch_id = f"2026-11-28_bench-{samples}-{size}"
    batch = cache / batch_id
    if not (batch / "manifest.json").is_file():
        log(f"generating {samples} samples at {size} (not timed) ...")
        subprocess.run([*POSE_SYNC, "generate", "--out", str(cache), "--samples", str(samples), "--size", size,
                        "--batch-id", batch_id, "--seed", "1", "-q", "--force"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return batch


def measure_scale(batch: Path, work: Path, repeat: int, env: dict[str, str], baseline: Path | None,
                  run) -> dict:
    """All rows of one scale, interleaved round by round."""
    files = [p for p in batch.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    linked = sum(1 for folder in MODALITY_FOLDERS for p in (batch / folder).iterdir())
    log(f"batch {batch.name}: {len(files)} files, {size / 1e6:.1f} MB; {linked} files in the six folders")

    listing = work / "files.txt"
    listing.write_text("\0".join(str(p) for p in files))
    sha256sum = ["sh", "-c", f"xargs -0 sha256sum < '{listing}' > /dev/null"]
    validate = [*POSE_SYNC, "validate", str(batch), "-q"]

    raw = work / "raw"
    raw.mkdir()
    os.symlink(batch, raw / batch.name)
    reports = work / "reports" / batch.name
    reports.mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps({"errors": 0}))
    params = work / "params.yaml"
    params.write_text(f"batches: [{batch.name}]\nworking:\n  batches: latest\n  link_mode: hardlink\n")
    out = work / "working" / "current_batch"
    materialize = [*POSE_SYNC, "materialize", "--params", str(params), "--raw", str(raw), "--reports",
                   str(work / "reports"), "--curation", str(work / "curation"), "--out", str(out), "-q"]
    folders = [str(batch / f) for f in MODALITY_FOLDERS]
    # The same commands from another checkout (--baseline), for before/after figures taken side by side. The
    # venv's start-up hook (a .pth file) would import this checkout's package first, so it is off for those.
    before = [sys.executable, str(baseline / "scripts" / "pose_sync.py")] if baseline else None
    before_env = {**env, "POSE_FACTORY_ENVHOOK": "off"}
    copy_a, copy_b = work / "cp-a", work / "cp-b"

    def cp_al(dest: Path) -> list[str]:
        return ["cp", "-al", *folders, str(dest)]

    def fresh(path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)

    # Warm-up, untimed: page cache, dentries, bytecode caches.
    run(sha256sum)
    run(validate, env)
    fresh(copy_a)
    run(cp_al(copy_a), env)
    run(materialize, env)
    names = ["sha256sum", "validate", "cp -al", "materialize", "cp -al + rm -rf old", "materialize (replacing a set)",
             "start-up"]
    if before:
        run([*before, *validate[2:]], before_env)
        run([*before, *materialize[2:]], before_env)
        names[2:2] = ["validate (baseline)"]
        names[5:5] = ["materialize (baseline)"]
    rows = {name: Timings() for name in names}
    load_start = loadavg()
    for round_number in range(repeat):
        rows["start-up"].add(run([*POSE_SYNC, "--version"], env))
        rows["sha256sum"].add(run(sha256sum))
        rows["validate"].add(run(validate, env))
        if before:
            rows["validate (baseline)"].add(run([*before, *validate[2:]], before_env))
        # A first build: nothing in the destination, like cp -al into an empty folder.
        fresh(copy_a)
        rows["cp -al"].add(run(cp_al(copy_a)))
        shutil.rmtree(out, ignore_errors=True)
        rows["materialize"].add(run(materialize, env))
        if before:
            shutil.rmtree(out, ignore_errors=True)
            rows["materialize (baseline)"].add(run([*before, *materialize[2:]], before_env))
        # A rebuild: the previous set is removed once the new one is in place; the shell's equivalent is a
        # second cp -al beside the first and rm -rf of the first.
        fresh(copy_b)
        rows["cp -al + rm -rf old"].add(run(["sh", "-c", f"cp -al {' '.join(folders)} '{copy_b}' && rm -rf "
                                                         f"'{copy_a}'"]))
        rows["materialize (replacing a set)"].add(run(materialize, env))
        log(f"  round {round_number + 1}/{repeat}: validate {rows['validate'].seconds[-1]:.3f} s, sha256sum "
            f"{rows['sha256sum'].seconds[-1]:.3f} s, materialize {rows['materialize'].seconds[-1]:.3f} s, "
            f"cp -al {rows['cp -al'].seconds[-1]:.3f} s (load {os.getloadavg()[0]:.2f})")
    load_end = loadavg()
    shutil.rmtree(out, ignore_errors=True)
    for path in (copy_a, copy_b, raw, work / "reports", work / "working"):
        shutil.rmtree(path, ignore_errors=True)

    references = {"validate": ("sha256sum", VALIDATE_TARGET), "materialize": ("cp -al", MATERIALIZE_TARGET),
                  "materialize (replacing a set)": ("cp -al + rm -rf old", MATERIALIZE_TARGET),
                  "validate (baseline)": ("sha256sum", VALIDATE_TARGET),
                  "materialize (baseline)": ("cp -al", MATERIALIZE_TARGET)}
    table = []
    for name, timings in rows.items():
        reference, target = references.get(name, (None, None))
        ratio = timings.median / rows[reference].median if reference else None
        table.append({"command": name, "median_s": round(timings.median, 4), "min_s": round(min(timings.seconds), 4),
                      "runs_s": [round(s, 4) for s in timings.seconds],
                      "peak_rss_mb": round(max(timings.rss) / 1e6, 1), "reference": reference,
                      "cpu_s": round(statistics.median(timings.cpu), 4),
                      "ratio": round(ratio, 3) if ratio else None, "target": target,
                      "met": (ratio <= target) if ratio else None})
    return {"batch": batch.name, "files": len(files), "linked_files": linked, "bytes": size, "repeat": repeat,
            "load_average_start": load_start, "load_average_end": load_end, "rows": table}


def print_scale(result: dict) -> None:
    print(f"\n{result['batch']}: validate reads {result['files']:,} files ({result['bytes'] / 1e6:.1f} MB); "
          f"materialize links {result['linked_files']:,}; {result['repeat']} interleaved rounds; "
          f"load average {result['load_average_start'][0]:.2f} -> {result['load_average_end'][0]:.2f} (1 min)")
    print(f"{'command':<32} {'median s':>9} {'min s':>8} {'ratio':>7} {'CPU s':>6} {'peak RSS MB':>12}  target")
    for row in result["rows"]:
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else ""
        target = ""
        if row["target"]:
            target = f"<= {row['target']}x {row['reference']}: {'met' if row['met'] else 'MISSED'}"
        print(f"{row['command']:<32} {row['median_s']:9.3f} {row['min_s']:8.3f} {ratio:>7} {row['cpu_s']:6.2f} "
              f"{row['peak_rss_mb']:12.1f}  {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="append", metavar="SAMPLES:WxH",
                        help="a batch to measure (repeatable); default 1000:512x512 and 10000:32x32")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved rounds per scale (default 7)")
    parser.add_argument("--batch-cache", type=Path, help="keep / reuse the generated batches here")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also time validate and materialize from this checkout of the repository (e.g. "
                             "`git worktree add /tmp/before main`), in the same rounds")
    args = parser.parse_args()
    scales = args.scale or ["1000:512x512", "10000:32x32"]

    work = Path(tempfile.mkdtemp(prefix="pf-bench-vm-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSE_FACTORY_")}
    # As a user runs it: compiled bytecode cached (kept out of the repository), the local backend.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(POSE_FACTORY_ROOT=str(work), POSE_FACTORY_BACKEND="local", PYTHONPYCACHEPREFIX=str(work / "pycache"))
    cache = args.batch_cache or work / "generated"
    results = []
    load_start = loadavg()
    started = datetime.now(UTC)
    launcher = Launcher(work)
    try:
        for scale in scales:
            samples, _, size = scale.partition(":")
            batch = prepare_batch(cache, int(samples), size or "512x512", env)
            scale_work = work / f"scale-{samples}"
            scale_work.mkdir()
            results.append(measure_scale(batch, scale_work, args.repeat, env, args.baseline, launcher.run))
            print_scale(results[-1])
    finally:
        launcher.close()
        shutil.rmtree(work, ignore_errors=True)
    load_end = loadavg()
    print("\nratio: median / the reference's median, from the same rounds. CPU s: user + system of the command and "
          "its processes (median). Peak RSS: wait4; about 10 MB is the floor (the launcher that starts commands).")
    print(f"load average (1, 5, 15 min): {load_start} at the start, {load_end} at the end; "
          f"{os.cpu_count()} CPUs. Other jobs on the machine inflate the figures: compare ratios, repeat when noisy.")
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "version": JSON_VERSION, "benchmark": "validate_materialize", "started": started.isoformat(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "baseline": str(args.baseline) if args.baseline else None, "load_average_start": load_start,
            "load_average_end": load_end, "scales": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
