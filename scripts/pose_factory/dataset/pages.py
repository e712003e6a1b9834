"""Static HTML pages for people: `pose-sync review` (a dataset diff with before/after thumbnails) and
`pose-sync show` (a contact sheet of one batch). Self-contained: thumbnails sit beside index.html and are
referenced relatively, so the folder works offline, from disk, with no server.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from pose_factory.core.errors import BatchNotFoundError
from pose_factory.core.fsutil import atomic_write_path
from pose_factory.dataset import dvcrepo
from pose_factory.dataset.diff import RAW, Version, diff

THUMB_PX = 160
IMAGE_MODALITIES = ("rgb", "pose", "depth", "normal", "seg")
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#eee}.added{color:#16794c}.removed{color:#b3261e}.changed{color:#9a6700}
.pair{display:inline-block;margin:4px 10px 12px 0;vertical-align:top}.pair img{border:1px solid #ccc;margin-right:2px}
.cap{font-size:12px;color:#555}.sheet{display:inline-block;margin:4px;text-align:center}
svg{vertical-align:top;margin:8px 16px 8px 0}svg text{font-size:10px}
"""
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken-images', broken.length);
});
"""


def _thumb(data: bytes | None, dest: Path) -> str | None:
    """Write a small PNG of an image; return its name relative to the page, or None if there is no image."""
    if not data:
        return None
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB_PX, THUMB_PX))
        dest.parent.mkdir(parents=True, exist_ok=True)
        image.save(dest, format="PNG")
    return dest.as_posix()


def _overlay(rgb: bytes | None, pose: bytes | None, dest: Path) -> str | None:
    """The skeleton drawn over the RGB preview (the skeleton map's non-black pixels on top)."""
    if not rgb or not pose:
        return None
    with Image.open(io.BytesIO(rgb)) as a, Image.open(io.BytesIO(pose)) as b:
        base = np.asarray(a.convert("RGB")).copy()
        skeleton = np.asarray(b.convert("RGB").resize(a.size))
    mask = skeleton.max(axis=2) > 0
    base[mask] = skeleton[mask]
    image = Image.fromarray(base)
    image.thumbnail((THUMB_PX, THUMB_PX))
    dest.parent.mkdir(parents=True, exist_ok=True)
    image.save(dest, format="PNG")
    return dest.as_posix()


def _img(out: Path, path: str | None, caption: str) -> str:
    if path is None:
        return f'<span class="cap">({html.escape(caption)}: none)</span>'
    rel = Path(path).relative_to(out).as_posix()
    return f'<img src="{html.escape(rel)}" alt="{html.escape(caption)}" title="{html.escape(caption)}" loading="lazy">'


def _bar_chart(title: str, rows: list[tuple[str, float]], color: str = "#4a78c2") -> str:
    """A small inline SVG bar chart (no script, no network)."""
    if not rows:
        return ""
    width, bar_h, label_w = 360, 14, 90
    peak = max(v for _, v in rows) or 1
    parts = [f'<svg width="{width}" height="{(len(rows) + 1) * (bar_h + 2)}" role="img" aria-label="{title}">',
             f'<text x="0" y="10" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(rows, start=1):
        y = i * (bar_h + 2)
        w = (width - label_w - 40) * value / peak
        parts.append(f'<text x="0" y="{y + 10}">{html.escape(str(label))}</text>'
                     f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"></rect>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 10}">{value:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stats_charts(version: Version, batch_id: str, place: str | None) -> str:
    """Azimuth and elevation coverage and visible keypoints per joint, from the annotations of a version."""
    if place is None:
        return ""
    loaded = version.manifest(batch_id, place)
    if loaded is None:
        return ""
    manifest = loaded[0]
    azimuth: dict[str, int] = {}
    elevation: dict[str, int] = {}
    joints = manifest["conventions"]["keypoints"]["joints"]
    visible = [0] * len(joints)
    for sample in manifest["samples"]:
        data = version.batch_file(batch_id, place, sample["annotation"])
        if not data:
            continue
        doc = orjson.loads(data)
        azimuth[f"{doc['camera']['azimuth_deg']:g}"] = azimuth.get(f"{doc['camera']['azimuth_deg']:g}", 0) + 1
        elevation[f"{doc['camera']['elevation_deg']:g}"] = elevation.get(f"{doc['camera']['elevation_deg']:g}", 0) + 1
        for j, point in enumerate(doc["persons"][0]["keypoints_2d"] if doc["persons"] else []):
            visible[j] += point[2] == 2
    return (_bar_chart("azimuth (deg): samples", sorted(azimuth.items(), key=lambda kv: float(kv[0])))
            + _bar_chart("elevation (deg): samples", sorted(elevation.items(), key=lambda kv: float(kv[0])))
            + _bar_chart("visible keypoints per joint", list(zip(joints, visible)), "#5a9e6f"))


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{body}</body></html>")


def _write_page(out: Path, text: str, document: dict[str, Any]) -> Path:
    page = out / "index.html"
    with atomic_write_path(page) as tmp:
        tmp.write_text(text, encoding="utf-8")
    with atomic_write_path(out / "diff.json") as tmp:
        tmp.write_text(json.dumps(document, indent=1))
    return page


def _fresh(out: Path) -> None:
    thumbs = out / "thumbs"
    if thumbs.exists():
        shutil.rmtree(thumbs)
    out.mkdir(parents=True, exist_ok=True)


def write_review(root: Path, rev_a: str | None, rev_b: str | None, out: Path, *, limit: int = 24,
                 progress=None) -> tuple[Path, dict[str, Any]]:
    """Write the review page of a dataset diff; return (index.html, the diff's JSON)."""
    result = diff(root, rev_a, rev_b)
    document = result.as_json()
    before = Version(root, rev_a or "HEAD")
    after = Version(root, rev_b) if rev_b else Version(root, None)
    old_places, new_places = before.batches(), after.batches()
    out = out.resolve()
    _fresh(out)
    summary = document["summary"]
    rows = "".join(f'<tr><td>{html.escape(status)}</td><td data-count="batches-{status}">{n}</td></tr>'
                   for status, n in sorted(summary["batches"].items()))
    body = [f"<h1>Dataset review: {html.escape(result.before)} &rarr; {html.escape(result.after)}</h1>",
            "<table><tr><th>batches</th><th>count</th></tr>", rows,
            f'<tr><td>samples added</td><td data-count="samples-added">{summary["samples_added"]}</td></tr>',
            f'<tr><td>samples removed</td><td data-count="samples-removed">{summary["samples_removed"]}</td></tr>',
            f'<tr><td>samples changed</td><td data-count="samples-changed">{summary["samples_changed"]}</td></tr>',
            "</table>"]
    changed_batches = [b for b in result.batches if b.status != "unchanged"]
    counter = progress.task("review", len(changed_batches), "batches") if progress else contextlib.nullcontext()
    with counter as bar:
        for b in changed_batches:
            body.extend(_batch_section(b, before, after, old_places, new_places, out, limit))
            if bar:
                bar.advance()
    page = _write_page(out, _page(f"Dataset review {result.before} -> {result.after}", "".join(body)), document)
    return page, document


def _batch_section(b, before: Version, after: Version, old_places: dict[str, str], new_places: dict[str, str],
                   out: Path, limit: int) -> list[str]:
    """The review page's section for one batch."""
    body: list[str] = []
    body.append(f'<h2 class="{b.status}" id="{html.escape(b.batch_id)}">{html.escape(b.batch_id)}: '
                f'{b.status}</h2>')
    body.append(f"<p>samples {b.samples_before} &rarr; {b.samples_after}; added {len(b.samples_added)}, "
                f"removed {len(b.samples_removed)}, changed <span data-count=\"changed-{html.escape(b.batch_id)}\">"
                f"{len(b.changed_samples)}</span></p>")
    if b.modified:
        body.append("<table><tr><th>modality</th><th>samples modified</th></tr>" + "".join(
            f"<tr><td>{html.escape(m)}</td><td>{len(ids)}</td></tr>" for m, ids in sorted(b.modified.items()))
            + "</table>")
    if b.manifest_changes:
        body.append("<table><tr><th>manifest field</th><th>before</th><th>after</th></tr>" + "".join(
            f"<tr><td>{html.escape(c['field'])}</td><td>{html.escape(json.dumps(c['before']))[:120]}</td>"
            f"<td>{html.escape(json.dumps(c['after']))[:120]}</td></tr>" for c in b.manifest_changes[:50])
            + "</table>")
    moved = [j for j in b.joints if j.max_px > 0 or j.visibility_flips]
    if moved:
        body.append("<table><tr><th>joint</th><th>mean px</th><th>max px</th><th>visibility flips</th></tr>"
                    + "".join(f"<tr><td>{j.joint}</td><td>{j.mean_px:.2f}</td><td>{j.max_px:.2f}</td>"
                              f"<td>{j.visibility_flips}</td></tr>" for j in moved) + "</table>")
    if b.metrics_before or b.metrics_after:
        keys = ("samples", "files", "errors", "warnings")
        body.append("<table><tr><th>validation</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
                    + "".join(f"<tr><td>{side}</td>" + "".join(f"<td>{(m or {}).get(k, '-')}</td>" for k in keys)
                              + "</tr>" for side, m in (("before", b.metrics_before), ("after", b.metrics_after)))
                    + "</table>")
    shown = b.changed_samples or b.samples_added or b.samples_removed
    pairs = []
    for sid in shown[:limit]:
        cells = []
        for side, version, places in (("before", before, old_places), ("after", after, new_places)):
            place = places.get(b.batch_id)
            loaded = version.manifest(b.batch_id, place) if place else None
            entry = next((s for s in loaded[0]["samples"] if s["sample_id"] == sid), None) if loaded else None
            if entry is None:
                cells.append(f'<span class="cap">{side}: none</span>')
                continue
            images = {m: version.batch_file(b.batch_id, place, entry["files"][m])
                      for m in IMAGE_MODALITIES if m in entry["files"]}
            folder = out / "thumbs" / b.batch_id / side
            thumbs = [_img(out, _overlay(images.get("rgb"), images.get("pose"), folder / f"{sid}-overlay.png"),
                           f"{side} {sid} skeleton over rgb")]
            thumbs += [_img(out, _thumb(images.get(m), folder / f"{sid}-{m}.png"), f"{side} {sid} {m}")
                       for m in IMAGE_MODALITIES if m in images]
            cells.append(f'<div class="cap">{side}</div>' + "".join(thumbs))
        pairs.append(f'<div class="pair"><div><b>sample {html.escape(sid)}</b></div>{"<br>".join(cells)}</div>')
    body.extend(pairs)
    if len(shown) > limit:
        body.append(f'<p class="cap" data-count="not-shown-{html.escape(b.batch_id)}">{len(shown) - limit} '
                    f"more sample(s) not shown (--limit {limit})</p>")
    body.append('<div>' + _stats_charts(before, b.batch_id, old_places.get(b.batch_id))
                + _stats_charts(after, b.batch_id, new_places.get(b.batch_id)) + "</div>")
    return body


def write_contact_sheet(root: Path, batch_id: str, out: Path, *, limit: int = 48, progress=None
                        ) -> tuple[Path, int, int]:
    """A contact sheet of one batch in the workspace: every sample's modalities, and its statistics."""
    dvcrepo.require_repository(root)
    version = Version(root, None)
    place = version.batches().get(batch_id)
    loaded = version.manifest(batch_id, place) if place else None
    if loaded is None:
        raise BatchNotFoundError(f"no batch {batch_id!r} in the workspace", where=f"{root / RAW}",
                                 hint="`pose-sync status` lists the batches; `dvc checkout` if its data is missing")
    manifest = loaded[0]
    out = out.resolve()
    _fresh(out)
    samples = manifest["samples"]
    body = [f"<h1>Batch {html.escape(batch_id)}</h1>",
            f'<p>project {html.escape(manifest["project"])}, created {html.escape(manifest["created_at"])}, '
            f'<span data-count="samples">{len(samples)}</span> samples, {manifest["image"]["width"]}x'
            f'{manifest["image"]["height"]}, rig {html.escape(manifest["job"]["rig"]["name"])}, pose set '
            f'{html.escape(manifest["job"]["poses"]["set"])}</p>']
    for sample in samples[:limit]:
        sid = sample["sample_id"]
        images = {m: version.batch_file(batch_id, place, sample["files"][m])
                  for m in IMAGE_MODALITIES if m in sample["files"]}
        folder = out / "thumbs" / batch_id
        thumbs = [_img(out, _overlay(images.get("rgb"), images.get("pose"), folder / f"{sid}-overlay.png"),
                       f"{sid} skeleton over rgb")]
        thumbs += [_img(out, _thumb(images.get(m), folder / f"{sid}-{m}.png"), f"{sid} {m}") for m in images]
        body.append(f'<div class="sheet"><div class="cap">{html.escape(sid)}</div>{"".join(thumbs)}</div>')
    if len(samples) > limit:
        body.append(f'<p class="cap" data-count="not-shown">{len(samples) - limit} more sample(s) not shown '
                    f"(--limit {limit})</p>")
    body.append("<div>" + _stats_charts(version, batch_id, place) + "</div>")
    document = {"version": 1, "batch_id": batch_id, "samples": len(samples), "shown": min(limit, len(samples))}
    page = _write_page(out, _page(f"Batch {batch_id}", "".join(body)), document)
    return page, min(limit, len(samples)), len(samples)
