"""Benchmark: `pose-sync validate` against `sha256sum`, and `materialize` (hardlinks) against `cp -al`.

The issue's targets, on a generated batch of 1,000 samples (six modality files each, plus the annotation):
validate within 1.3x of sha256sum over the same files; materialize with hardlinks within 2x of `cp -al`.
This prints the figures side by side; it is not a test and never fails on a missed target.

    scripts/.venv/bin/python benchmarks/validate_materialize.py [--samples 1000] [--size 512x512] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSE_SYNC = [sys.executable, str(REPO / "scripts" / "pose_sync.py")]
MODALITY_FOLDERS = ["pose", "openpose_json", "depth", "normal", "seg", "rgb"]


def timed(command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-cache", type=Path, help="keep / reuse the generated batch here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pf-bench-vm-"))
    env = {**os.environ, "POSE_FACTORY_ROOT": str(work), "POSE_FACTORY_BACKEND": "local"}
    batch_id = f"2026-11-28_bench-{args.samples}-{args.size}"
    cache = args.batch_cache or work / "generated"
    batch = cache / batch_id
    if not (batch / "manifest.json").is_file():
        print(f"generating {args.samples} samples at {args.size} ...", flush=True)
        subprocess.run([*POSE_SYNC, "generate", "--out", str(cache), "--samples", str(args.samples), "--size",
                        args.size, "--batch-id", batch_id, "--seed", "1", "-q", "--force"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    files = [p for p in batch.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"batch: {args.samples} samples, {len(files)} files, {size / 1e6:.1f} MB", flush=True)

    # validate vs sha256sum, warm page cache for both (one untimed run of each first)
    listing = work / "files.txt"
    listing.write_text("\0".join(str(p) for p in files))
    sha256sum = ["sh", "-c", f"xargs -0 sha256sum < {listing} > /dev/null"]
    validate = [*POSE_SYNC, "validate", str(batch), "-q"]
    timed(sha256sum)
    timed(validate, env)
    results: dict[str, list[float]] = {"sha256sum": [], "validate": [], "cp -al": [], "materialize": [],
                                       "start-up": []}
    for _ in range(args.repeat):
        # The fixed cost of any pose-sync command (interpreter, imports): shown so it can be told apart.
        results["start-up"].append(timed([*POSE_SYNC, "--version"], env))
        results["sha256sum"].append(timed(sha256sum))
        results["validate"].append(timed(validate, env))

    # materialize (hardlinks) vs cp -al of the same six folders
    raw = work / "raw"
    raw.mkdir()
    os.symlink(batch, raw / batch_id)
    reports = work / "reports" / batch_id
    reports.mkdir(parents=True)
    (reports / "metrics.json").write_text(json.dumps({"errors": 0}))
    params = work / "params.yaml"
    params.write_text(f"batches: [{batch_id}]\nworking:\n  batches: latest\n  link_mode: hardlink\n")
    out = work / "working" / "current_batch"
    materialize = [*POSE_SYNC, "materialize", "--params", str(params), "--raw", str(raw), "--reports",
                   str(work / "reports"), "--out", str(out), "-q"]
    timed(materialize, env)
    for i in range(args.repeat):
        dest = work / f"cp-al-{i}"
        dest.mkdir()
        results["cp -al"].append(timed(["cp", "-al", *[str(batch / f) for f in MODALITY_FOLDERS], str(dest)]))
        results["materialize"].append(timed(materialize, env))
        shutil.rmtree(dest)

    def row(name: str, reference: str) -> str:
        median = statistics.median(results[name])
        ratio = median / statistics.median(results[reference])
        return (f"{name:<24} {median:8.3f} {min(results[name]):8.3f} {ratio:7.2f}x  "
                f"{len(files) / median:8.0f} files/s")

    print(f"\n{'command':<24} {'median s':>8} {'min s':>8} {'ratio':>8}")
    print(row("sha256sum", "sha256sum"))
    print(row("validate", "sha256sum") + "   (target <= 1.3x sha256sum)")
    print(row("cp -al", "cp -al"))
    print(row("materialize", "cp -al") + "   (target <= 2x cp -al)")
    startup = statistics.median(results["start-up"])
    print(f"{'pose-sync --version':<24} {startup:8.3f}   (start-up of any pose-sync command, included above)")
    v = statistics.median(results["validate"]) / statistics.median(results["sha256sum"])
    m = statistics.median(results["materialize"]) / statistics.median(results["cp -al"])
    print(f"\nvalidate / sha256sum = {v:.2f}x ({'met' if v <= 1.3 else 'MISSED'}); "
          f"materialize / cp -al = {m:.2f}x ({'met' if m <= 2 else 'MISSED'})")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
