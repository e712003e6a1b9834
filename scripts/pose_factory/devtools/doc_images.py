"""Regenerate the example figures of README.md and docs/batch-contract.md from the synthetic generator.

    scripts/.venv/bin/python -m pose_factory.devtools.doc_images [--out docs/images]

One strip per view (rgb, pose, depth, normal, seg side by side) of a walk-cycle pose seen from the front,
a three-quarter back view and a profile, and one of the SDXL sizes framed; small PNGs, deterministic.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from pose_factory.producer import encode, figure

DOCS_IMAGES = Path(__file__).resolve().parents[3] / "docs" / "images"
TILE = 176


def _render(azimuth: float, width: int, height: int, pose_set: str = "walk-cycle", frame: int = 2):
    pose = figure.make_pose(pose_set, "mannequin-a", 3, frame, 0.3)
    camera = figure.frame_camera(*figure.body_bounds(pose), azimuth, 10.0, 4.0, 50.0, width, height)
    return figure.render(pose, camera)


def modalities_strip() -> Image.Image:
    """Rows of rgb | pose | depth | normal | seg for three azimuths."""
    rows = []
    for azimuth in (20.0, 150.0, 270.0):
        r = _render(azimuth, TILE, TILE)
        rows.append(np.concatenate([r.rgb, r.pose_map, r.depth, r.normal, r.seg], axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def sizes_strip() -> Image.Image:
    """The same sample framed at the SDXL sizes, scaled to one height."""
    tiles = []
    for width, height in ((1024, 1024), (1216, 832), (1536, 640), (768, 1344)):
        scale = 1 / 8
        r = _render(30.0, int(width * scale), int(height * scale), "run-cycle", 5)
        tile = Image.fromarray(r.rgb).resize((int(width * 160 / height), 160), Image.Resampling.LANCZOS)
        tiles.append(np.asarray(tile))
    gap = np.full((160, 6, 3), 255, dtype=np.uint8)
    parts = [p for tile in tiles for p in (tile, gap)][:-1]
    return Image.fromarray(np.concatenate(parts, axis=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS_IMAGES)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, image in (("example-modalities.png", modalities_strip()), ("example-framing.png", sizes_strip())):
        image.save(args.out / name, format="PNG", optimize=True)
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size // 1024} KiB)")
    _ = encode  # the figures show the shared encoder's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
