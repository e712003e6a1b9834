"""Benchmark: milliseconds per synthetic sample (figure.render + encoding, no PNG writing) at a given size.

Renders the same mix of poses and camera angles every run (run-cycle and random-pose, 8 azimuths) and prints the
median and mean per sample, so a change to the figure can be measured before and after on the same machine.
Not a test; it never fails on a number.

    scripts/.venv/bin/python benchmarks/render_speed.py [--size 1024x1024] [--samples 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from pose_factory.producer import figure  # noqa: E402
from pose_factory.producer.generate import parse_size  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = parse_size(args.size)
    cases = []
    for i in range(args.samples):
        pose_set = "run-cycle" if i % 2 == 0 else "random-pose"
        cases.append((figure.make_pose(pose_set, "mannequin-a", 7, i), 45.0 * (i % 8)))
    figure.render(cases[0][0], figure.Camera(0.0, 10.0, 4.0, 50.0, width, height))  # warm-up
    per_sample: list[float] = []
    for _ in range(args.repeat):
        for pose, azimuth in cases:
            camera = figure.Camera(azimuth, 10.0, 4.0, 50.0, width, height)
            start = time.perf_counter()
            figure.render(pose, camera)
            per_sample.append((time.perf_counter() - start) * 1000.0)
    print(f"render {width}x{height}: {len(per_sample)} samples, median {statistics.median(per_sample):.0f} ms, "
          f"mean {statistics.mean(per_sample):.0f} ms, min {min(per_sample):.0f} ms per sample")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
