"""Benchmark: `pose-sync diff` of two versions of a 10,000-sample batch that differ in 1% of samples.

The issue's target: it completes in seconds, from manifests alone, without reading unchanged images.
Builds a real git + DVC repository in a temporary folder: pulls the batch (version 1), changes 1% of
the samples on the pod side (keypoints moved, skeleton redrawn), publishes and pulls again (version 2),
then times `pose-sync diff v1 v2` and counts the files it read. Not a test: prints figures only.

    scripts/.venv/bin/python benchmarks/diff_scale.py [--samples 10000] [--changed 0.01] [--size 32x32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
POSE_SYNC = [sys.executable, str(REPO / "scripts" / "pose_sync.py")]


def run(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--size", default="32x32")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from pose_factory.core import contract
    from pose_factory.producer import figure

    work = Path(tempfile.mkdtemp(prefix="pf-bench-diff-"))
    root = work / "repo"
    (root / "config").mkdir(parents=True)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text("batches: []\n")
    env = {**os.environ, "POSE_FACTORY_ROOT": str(root), "POSE_FACTORY_BACKEND": "local",
           "POSE_FACTORY_DVC_LOCAL_REMOTE": str(work / "remote"), "DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "b@example.invalid"],
                    ["git", "config", "user.name", "bench"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, env=env)
    run([*POSE_SYNC, "init"], env, root)
    subprocess.run(["sh", "-c", "git add -A && git commit -q -m 'dataset repository'"], cwd=root, check=True, env=env)
    batch_id = "2026-11-28_scale"
    print(f"generating {args.samples} samples at {args.size} ...", flush=True)
    t = run([*POSE_SYNC, "generate", "--out", str(work / "pod"), "--samples", str(args.samples), "--size", args.size,
             "--batch-id", batch_id, "-q"], env, root)
    pod = work / "pod" / batch_id
    files = sum(1 for p in pod.rglob("*") if p.is_file())
    print(f"  {files} files in {t:.0f} s; publishing and pulling version 1 ...", flush=True)
    run([*POSE_SYNC, "publish", str(pod), "-q"], env, root)
    t_pull = run([*POSE_SYNC, "pull", batch_id, "--commit", "-q"], env, root)
    v1 = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()

    manifest = json.loads((pod / "manifest.json").read_text())
    width, height = manifest["image"]["width"], manifest["image"]["height"]
    step = max(1, round(1 / args.changed))
    changed = [s["sample_id"] for s in manifest["samples"][::step]]
    for sid in changed:
        annotation_file = pod / "annotations" / f"{sid}.json"
        annotation = json.loads(annotation_file.read_text())
        points = annotation["persons"][0]["keypoints_2d"]
        for point in points:
            if point[2] and point[0] + 1 < width:
                point[0] = round(point[0] + 1, 2)
        annotation_file.write_bytes(contract.dumps(annotation))
        keypoints = np.array(points, dtype=float)
        openpose = figure.openpose_json(keypoints, width, height)
        (pod / "openpose_json" / f"{sid}.json").write_bytes(contract.dumps(openpose))
        Image.fromarray(figure.draw_openpose(keypoints, width, height)).save(pod / "pose" / f"{sid}.png")
    paths = sorted(p.relative_to(pod).as_posix() for p in pod.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest["files"] = contract.file_entries(pod, paths)
    manifest["totals"]["bytes"] = sum(f["size"] for f in manifest["files"])
    (pod / "manifest.json").write_bytes(contract.dumps(manifest))
    run([*POSE_SYNC, "publish", str(pod), "-q"], env, root)
    run([*POSE_SYNC, "pull", batch_id, "--commit", "-q"], env, root)
    v2 = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()

    timings = []
    for _ in range(3):
        start = time.perf_counter()
        done = subprocess.run([*POSE_SYNC, "diff", v1, v2, "--json"], env=env, cwd=root, capture_output=True,
                              text=True, check=True)
        timings.append(time.perf_counter() - start)
    document = json.loads(done.stdout)
    if len(document["batches"]) != 1:
        print(f"unexpected diff (work folder kept: {work}):", json.dumps(document)[:400])
        return 1
    [batch] = document["batches"]
    # What the diff read: count through the same code path, in-process.
    os.environ.update({k: v for k, v in env.items() if k.startswith(("POSE_FACTORY", "DVC"))})
    from pose_factory.dataset import diff as review

    reads: list[str] = []
    original = review.Version.read_bytes

    def counting(self, path):
        reads.append(path)
        return original(self, path)

    review.Version.read_bytes = counting
    review.diff(root, v1, v2)
    images = sum(1 for p in reads if p.endswith(".png"))
    annotations = sum(1 for p in reads if "/annotations/" in p)
    print(f"\nbatch: {args.samples} samples, {files} files; {len(changed)} samples changed "
          f"({100 * len(changed) / args.samples:.1f}%); first pull took {t_pull:.1f} s")
    print(f"pose-sync diff v1 v2: median {sorted(timings)[1]:.2f} s, min {min(timings):.2f} s "
          f"(target: seconds)")
    print(f"  reported changed samples: {len(batch['samples']['changed'])}; "
          f"files read: {len(reads)} ({images} images, {annotations} annotations, the rest manifests, "
          f"params and metrics)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
