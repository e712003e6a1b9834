"""Static HTML pages for people: `pose-sync review` (a dataset diff with before/after thumbnails) and
`pose-sync show` (a contact sheet of one batch).

Self-contained: thumbnails sit beside index.html and are referenced relatively, the charts are inline SVG
drawn here (the same charts as the validate stage's DVC plots, which need Vega from the network), and
nothing is loaded from anywhere else, so the folder works offline, from disk, with no server. Pages are
written under `data/reports/` by default, which git ignores; a folder made elsewhere gets its own
`.gitignore`, so `git add -A` never sweeps a review into a commit.
"""

from __future__ import annotations

import contextlib
import csv
import html
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from PIL import Image

from pose_factory.core.errors import BatchNotFoundError, PoseFactoryError, UsageError
from pose_factory.core.fsutil import atomic_write_path
from pose_factory.core.layout import CONTACT_SHEET_PAGES, DATA, REVIEW_PAGES, VALIDATION_REPORTS
from pose_factory.dataset import dvcrepo
from pose_factory.dataset.curation import review_block
from pose_factory.dataset.diff import BatchDiff, Version, diff, keypoints_of
from pose_factory.dataset.validate import count_coverage, coverage_stats, new_coverage, plot_tables

if TYPE_CHECKING:
    from pose_factory.core.models import ManifestSample

THUMB_PX = 120
KEYPOINT_VIEW_PX = 240
IMAGE_MODALITIES = ("rgb", "pose", "depth", "normal", "seg")
COLUMN_LABELS = {"overlay": "skeleton over RGB", "rgb": "RGB preview", "pose": "OpenPose map", "depth": "depth",
                 "normal": "normals", "seg": "segmentation"}
BEFORE_COLOUR, AFTER_COLOUR, MOVED_COLOUR = "#8a96a3", "#2f6fd6", "#d93025"
IGNORE_ALL = "# Pages written by pose-sync: not versioned (`git add -f` to keep one).\n*\n"
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#eee}.added{color:#16794c}.removed{color:#b3261e}.changed{color:#9a6700}
.scroll{overflow-x:auto}.samples td,.samples th{text-align:center}.samples td:first-child{text-align:left}
.samples img{display:block;margin:auto;width:120px;height:auto}.same{color:#777;font-size:12px}
.cap{font-size:12px;color:#555}
.none{color:#999;font-size:12px}figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}
svg text{font-size:11px;fill:#333}svg .title{font-size:13px;font-weight:bold}.legend{font-size:12px}
"""
# Counts the images and how many failed to load, for a person (broken thumbnails) and for the tests.
SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !img.complete || img.naturalWidth === 0; });
  document.body.setAttribute('data-images', images.length);
  document.body.setAttribute('data-broken-images', broken.length);
});
"""


@dataclass(frozen=True)
class Plot:
    """One plot of the validate stage: a CSV in the batch's report folder and how dvc.yaml draws it."""

    file: str
    x: str
    y: str
    title: str
    x_label: str
    y_label: str
    horizontal: bool  # bars along x, one per y category (DVC's bar_horizontal); else one per x category

    @property
    def category(self) -> str:
        return self.y if self.horizontal else self.x

    @property
    def value(self) -> str:
        return self.x if self.horizontal else self.y


# The validate stage's plots as dvc.yaml defines them (tests/test_review.py checks the two agree).
PLOTS = (
    Plot("azimuth.csv", "azimuth_deg", "samples", "Camera azimuth coverage", "camera azimuth (degrees)",
         "samples", horizontal=False),
    Plot("elevation.csv", "elevation_deg", "samples", "Camera elevation coverage", "camera elevation (degrees)",
         "samples", horizontal=False),
    Plot("visibility.csv", "visible", "joint", "Visible keypoints per joint", "samples with the joint visible",
         "joint", horizontal=True),
    Plot("counts.csv", "samples", "pose_set", "Samples per pose set", "samples", "pose set", horizontal=True),
)


@dataclass
class PageResult:
    page: Path
    ignored: bool  # git ignores the folder: `git add -A` will not commit it
    # review: the diff as `pose-sync diff --json` prints it; empty for the other pages
    document: dict[str, Any] = field(default_factory=dict)
    shown: int = 0
    total: int = 0


# --- images ----------------------------------------------------------------------------------------------

def _save_thumb(image: Image.Image, dest: Path) -> str:
    image.thumbnail((THUMB_PX, THUMB_PX))
    dest.parent.mkdir(parents=True, exist_ok=True)
    image.save(dest, format="PNG")
    return dest.as_posix()


def _thumb(data: bytes | None, dest: Path) -> str | None:
    """Write a small PNG of an image; return its path, or None if there is no image."""
    if not data:
        return None
    with Image.open(io.BytesIO(data)) as image:
        return _save_thumb(image.convert("RGB"), dest)


def _overlay(rgb: bytes | None, pose: bytes | None, dest: Path) -> str | None:
    """The skeleton drawn over the RGB preview (the skeleton map's non-black pixels on top)."""
    if not rgb or not pose:
        return None
    with Image.open(io.BytesIO(rgb)) as a, Image.open(io.BytesIO(pose)) as b:
        base = np.asarray(a.convert("RGB")).copy()
        skeleton = np.asarray(b.convert("RGB").resize(a.size))
    mask = skeleton.max(axis=2) > 0
    base[mask] = skeleton[mask]
    return _save_thumb(Image.fromarray(base), dest)


def _img(out: Path, path: str | None, caption: str) -> str:
    if path is None:
        return f'<span class="none">no {html.escape(caption)}</span>'
    rel = Path(path).relative_to(out).as_posix()
    return f'<img src="{html.escape(rel)}" alt="{html.escape(caption)}" title="{html.escape(caption)}">'


def _sample_images(version: Version, batch_id: str, place: str, entry: ManifestSample, folder: Path
                   ) -> dict[str, str | None]:
    """Thumbnails of one sample: {'overlay' | modality: path or None}."""
    images = {m: version.batch_file(batch_id, place, entry["files"][m])
              for m in IMAGE_MODALITIES if m in entry["files"]}
    sid = entry["sample_id"]
    thumbs = {"overlay": _overlay(images.get("rgb"), images.get("pose"), folder / f"{sid}-overlay.png")}
    thumbs.update({m: _thumb(images.get(m), folder / f"{sid}-{m}.png") for m in images})
    return thumbs


# --- the keypoint change -----------------------------------------------------------------------------------

def _keypoint_view(old: list | None, new: list | None, limbs: list[list[int]], joints: list[str],
                   size: tuple[int, int], background: str | None, key: str) -> str:
    """SVG: the old skeleton faint and dashed under the new one, an arrow from where each joint was to where
    it is and a ring round it, over the new RGB preview, so a moved wrist shows at a glance."""
    width, height = size
    scale = KEYPOINT_VIEW_PX / max(width, height)
    w, h = round(width * scale), round(height * scale)

    def at(point) -> tuple[float, float]:
        return round(point[0] * scale, 1), round(point[1] * scale, 1)

    parts = [f'<svg class="keypoints" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="keypoints before and after">',
             f'<defs><marker id="arrow-{key}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="5" '
             f'markerHeight="5" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="{MOVED_COLOUR}"/>'
             "</marker></defs>"]
    if background:
        parts.append(f'<image href="{html.escape(background)}" width="{w}" height="{h}" opacity="0.45"/>')
    for points, colour, dash, stroke in ((old, BEFORE_COLOUR, ' stroke-dasharray="4 3"', 2),
                                         (new, AFTER_COLOUR, "", 2.5)):
        if points is None:
            continue
        for a, b in limbs:
            p, q = points[a - 1], points[b - 1]
            if p[2] and q[2]:
                (x1, y1), (x2, y2) = at(p), at(q)
                parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
                             f'stroke-width="{stroke}"{dash} stroke-linecap="round"/>')
    moved = []
    if old is not None and new is not None:
        for name, p, q in zip(joints, old, new):
            if p[2] and q[2] and (abs(p[0] - q[0]) > 0.01 or abs(p[1] - q[1]) > 0.01):
                (x1, y1), (x2, y2) = at(p), at(q)
                moved.append(name)
                parts.append(f'<line class="moved" data-joint="{html.escape(name)}" x1="{x1}" y1="{y1}" x2="{x2}" '
                             f'y2="{y2}" stroke="{MOVED_COLOUR}" stroke-width="1.5" '
                             f'marker-end="url(#arrow-{key})"/><circle cx="{x2}" cy="{y2}" r="7" fill="none" '
                             f'stroke="{MOVED_COLOUR}" stroke-width="1.5"><title>{html.escape(name)}</title></circle>')
    parts.append("</svg>")
    if old is not None and new is not None:
        named = ", ".join(moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
        legend = (f'<span style="color:{BEFORE_COLOUR}">dashed: before</span> &middot; '
                  f'<span style="color:{AFTER_COLOUR}">solid: after</span>'
                  + (f' &middot; <span style="color:{MOVED_COLOUR}">moved: {html.escape(named)}</span>'
                     if moved else " &middot; no joint moved"))
    else:
        legend = "before only" if new is None else "after only"
    return "".join(parts) + f'<div class="cap">{legend}</div>'


# --- charts ------------------------------------------------------------------------------------------------

def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def _label(text: str) -> str:
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def _categories(plot: Plot, series: list[tuple[str, list[dict[str, str]]]]) -> list[str]:
    seen: dict[str, None] = {}
    for _, rows in series:
        for row in rows:
            seen.setdefault(_label(str(row.get(plot.category, ""))), None)
    names = list(seen)
    if not plot.horizontal:  # angles: in numeric order, as the DVC template sorts them
        with contextlib.suppress(ValueError):
            names.sort(key=float)
    return names


def _chart(plot: Plot, series: list[tuple[str, list[dict[str, str]]]]) -> str:
    """A grouped bar chart as inline SVG: title, axis titles, value ticks, and a legend naming each series
    ('before (REV)' / 'after (REV)'); no script, no network."""
    series = [(label, rows) for label, rows in series if rows]
    if not series:
        return ""
    categories = _categories(plot, series)
    values = [{_label(str(r.get(plot.category, ""))): _number(r.get(plot.value)) for r in rows} for _, rows in series]
    peak = max((v for per in values for v in per.values()), default=0) or 1
    colours = [BEFORE_COLOUR, AFTER_COLOUR] if len(series) == 2 else [AFTER_COLOUR]
    left, top, right, bottom = (86 if plot.horizontal else 46), 30 + 14 * len(series), 16, 42
    if plot.horizontal:
        bar = 8
        width, height = 380, top + max(48, len(categories) * (bar * len(series) + 6)) + bottom
    else:
        width, height = max(300, left + right + len(categories) * (14 * len(series) + 10)), 230
    plot_w, plot_h = width - left - right, height - top - bottom
    parts = [f'<svg class="chart" data-chart="{plot.file.removesuffix(".csv")}" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(plot.title)}"><title>{html.escape(plot.title)}</title>',
             f'<text class="title" x="0" y="14">{html.escape(plot.title)}</text>']
    for i, (label, _) in enumerate(series):  # legend, one line per series
        y: float = 22 + 14 * i
        parts.append(f'<rect x="0" y="{y}" width="10" height="10" fill="{colours[i]}"/>'
                     f'<text class="legend" data-series="{html.escape(label)}" x="14" y="{y + 9}">'
                     f"{html.escape(label)}</text>")
    for fraction in (0, 0.5, 1):  # value ticks and grid
        tick = peak * fraction
        text = f"{tick:g}" if tick == int(tick) else f"{tick:.1f}"
        if plot.horizontal:
            x = left + plot_w * fraction
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#ddd"/>'
                         f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{text}</text>')
        else:
            y = top + plot_h * (1 - fraction)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
                         f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    slot = (plot_h if plot.horizontal else plot_w) / len(categories)
    thickness = min(bar if plot.horizontal else 14, slot * 0.8 / len(series))
    for c, category in enumerate(categories):
        start = c * slot + (slot - thickness * len(series)) / 2
        for s, per in enumerate(values):
            value = per.get(category)
            if value is None:
                continue
            length = (plot_w if plot.horizontal else plot_h) * value / peak
            tip = f"{series[s][0]}: {category}, {value:g}"
            if plot.horizontal:
                y = top + start + s * thickness
                parts.append(f'<rect x="{left}" y="{y:.1f}" width="{length:.1f}" height="{thickness:.1f}" '
                             f'fill="{colours[s]}"><title>{html.escape(tip)}</title></rect>')
            else:
                x = left + start + s * thickness
                parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - length:.1f}" width="{thickness:.1f}" '
                             f'height="{length:.1f}" fill="{colours[s]}"><title>{html.escape(tip)}</title></rect>')
        middle = start + thickness * len(series) / 2
        if plot.horizontal:
            parts.append(f'<text x="{left - 4}" y="{top + middle + 4:.1f}" text-anchor="end">'
                         f"{html.escape(category)}</text>")
        else:
            parts.append(f'<text x="{left + middle:.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                         f"{html.escape(category)}</text>")
    x_title, y_title = (plot.x_label, plot.y_label)
    parts.append(f'<text class="axis-title" x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                 f"{html.escape(x_title)}</text>")
    parts.append(f'<text class="axis-title" transform="translate(12,{top + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{html.escape(y_title)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#555"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#555"/></svg>')
    return "".join(parts)


def _plot_rows(version: Version, batch_id: str, place: str | None) -> dict[str, list[dict[str, str]]]:
    """The plot tables of a batch at a version: the validation report's CSVs (what `dvc plots` draws), or,
    where the batch was not validated at that version, the same tables computed from its annotations."""
    if place is None:
        return {}
    found: dict[str, list[dict[str, str]]] = {}
    for plot in PLOTS:
        data = version.read_bytes(f"{VALIDATION_REPORTS.as_posix()}/{batch_id}/{plot.file}")
        if data:
            found[plot.file] = list(csv.DictReader(io.StringIO(data.decode())))
    if len(found) == len(PLOTS):
        return found
    loaded = version.manifest(batch_id, place)
    if loaded is None:
        return found
    manifest = loaded[0]
    counts = new_coverage()
    for sample in manifest["samples"]:
        data = version.batch_file(batch_id, place, sample["annotation"])
        if data:
            count_coverage(counts, orjson.loads(data))
    computed = plot_tables(coverage_stats(counts, manifest["conventions"]["keypoints"]["joints"]))
    return {**computed, **found}


def _charts(series: list[tuple[str, dict[str, list[dict[str, str]]]]]) -> str:
    figures = [_chart(plot, [(label, tables.get(plot.file, [])) for label, tables in series]) for plot in PLOTS]
    return '<div class="charts">' + "".join(f"<figure>{f}</figure>" for f in figures if f) + "</div>"


# --- writing -----------------------------------------------------------------------------------------------

def _short(revision: str) -> str:
    """A commit id shortened as git shows it; branch names, tags and 'workspace' as they are."""
    return revision[:12] if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision) else revision


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{body}</body></html>")


def _write_file(dest: Path, text: str) -> None:
    with atomic_write_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _check_out(out: Path) -> None:
    """Refuse an --out that names a file, before any work."""
    if out.exists() and not out.is_dir():
        raise UsageError("--out names a file, not a folder", where=str(out),
                         hint="give a folder for index.html and its thumbnails, or leave --out out")


def _prepare_out(root: Path, out: Path | None, default: Path) -> Path:
    """The page folder, emptied of earlier thumbnails; a folder made here for the pages ignores itself."""
    out = (out or root / default).resolve()
    _check_out(out)
    if out == root.resolve() or (out / ".git").exists() or (out / ".dvc").exists():
        raise UsageError("the pages need a folder of their own", where=str(out),
                         hint=f"give --out a new folder, or leave it out: the default is {default}/")
    made_here = not out.exists()
    thumbs = out / "thumbs"
    if thumbs.exists():
        shutil.rmtree(thumbs)
    out.mkdir(parents=True, exist_ok=True)
    ignore = out / ".gitignore"
    if made_here or (ignore.is_file() and ignore.read_text() == IGNORE_ALL):
        _write_file(ignore, IGNORE_ALL)
    return out


def _ignored(root: Path, page: Path) -> bool:
    try:
        dvcrepo.git(root, "check-ignore", "-q", str(page))
        return True
    except PoseFactoryError:
        return False


# --- review ------------------------------------------------------------------------------------------------

def write_review(root: Path, rev_a: str | None, rev_b: str | None, out: Path | None = None, *, limit: int = 24,
                 progress=None) -> PageResult:
    """Write the review page of a dataset diff (default folder data/reports/review/, git-ignored)."""
    if out is not None:
        _check_out(out.resolve())
    result = diff(root, rev_a, rev_b)
    document = result.as_json()
    before = Version(root, rev_a or "HEAD")
    after = Version(root, rev_b) if rev_b else Version(root, None)
    labels = (f"before ({_short(before.label)})", f"after ({_short(after.label)})")
    old_places, new_places = before.batches(), after.batches()
    out = _prepare_out(root, out, REVIEW_PAGES)
    summary = document["summary"]
    rows = "".join(f'<tr><td>{html.escape(status)}</td><td data-count="batches-{status}">{n}</td></tr>'
                   for status, n in sorted(summary["batches"].items()))
    body = [f"<h1>Dataset review: {html.escape(_short(result.before))} &rarr; {html.escape(_short(result.after))}</h1>",
            "<table><tr><th>batches</th><th>count</th></tr>", rows,
            f'<tr><td>samples added</td><td data-count="samples-added">{summary["samples_added"]}</td></tr>',
            f'<tr><td>samples removed</td><td data-count="samples-removed">{summary["samples_removed"]}</td></tr>',
            f'<tr><td>samples changed</td><td data-count="samples-changed">{summary["samples_changed"]}</td></tr>',
            "</table>", review_block(document["curation"])]
    changed_batches = [b for b in result.batches if b.status != "unchanged"]
    counter = progress.task("review", len(changed_batches), "batches") if progress else contextlib.nullcontext()
    with counter as bar:
        for b in changed_batches:
            body.extend(_batch_section(b, (before, after), (old_places, new_places), labels, out, limit))
            if bar:
                bar.advance()
    page = out / "index.html"
    _write_file(page, _page(f"Dataset review {result.before} -> {result.after}", "".join(body)))
    _write_file(out / "diff.json", json.dumps(document, indent=1))
    return PageResult(page, _ignored(root, page), document)


def _batch_section(b: BatchDiff, versions: tuple[Version, Version], places: tuple[dict[str, str], dict[str, str]],
                   labels: tuple[str, str], out: Path, limit: int) -> list[str]:
    """The review page's section for one batch."""
    body: list[str] = []
    bid = html.escape(b.batch_id)
    body.append(f'<h2 class="{b.status}" id="{bid}">{bid}: {b.status}</h2>')
    body.append(f"<p>samples {b.samples_before} &rarr; {b.samples_after}; added {len(b.samples_added)}, "
                f'removed {len(b.samples_removed)}, changed <span data-count="changed-{bid}">'
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
    moved = sorted((j for j in b.joints if j.max_px > 0 or j.visibility_flips), key=lambda j: -j.max_px)
    if moved:
        body.append("<table><tr><th>joint</th><th>mean px</th><th>max px</th><th>visibility flips</th></tr>"
                    + "".join(f"<tr><td>{j.joint}</td><td>{j.mean_px:.2f}</td><td>{j.max_px:.2f}</td>"
                              f"<td>{j.visibility_flips}</td></tr>" for j in moved) + "</table>")
    if b.metrics_before or b.metrics_after:
        keys = ("samples", "files", "errors", "warnings")
        body.append("<table><tr><th>validation</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"
                    + "".join(f"<tr><td>{side}</td>" + "".join(f"<td>{(m or {}).get(k, '-')}</td>" for k in keys)
                              + "</tr>" for side, m in zip(labels, (b.metrics_before, b.metrics_after)))
                    + "</table>")
    shown = [*b.by_movement(), *b.samples_added, *b.samples_removed]
    if shown:
        body.append(_sample_table(b, shown[:limit], versions, places, labels, out))
    if len(shown) > limit:
        body.append(f'<p class="cap" data-count="not-shown-{bid}">{len(shown) - limit} '
                    f"more sample(s) not shown (--limit {limit})</p>")
    series = [(label, _plot_rows(version, b.batch_id, place.get(b.batch_id)))
              for label, version, place in zip(labels, versions, places)]
    body.append(_charts([s for s in series if s[1]]))
    return body


def _sample_table(b: BatchDiff, shown: list[str], versions: tuple[Version, Version],
                  places: tuple[dict[str, str], dict[str, str]], labels: tuple[str, str], out: Path) -> str:
    """Changed samples, farthest move first: the keypoint change, then before and after side by side for
    each image, under labelled columns; an image that did not change is shown once."""
    loaded = [version.manifest(b.batch_id, place[b.batch_id]) if b.batch_id in place else None
              for version, place in zip(versions, places)]
    entries = [{s["sample_id"]: s for s in m[0]["samples"]} if m else {} for m in loaded]
    present = loaded[1] or loaded[0]
    assert present is not None, "a batch with changed samples has a manifest in one of the two versions"
    manifest = present[0]
    columns = ["overlay", *[m for m in IMAGE_MODALITIES if m in manifest["modalities"]]]
    limbs, joints = manifest["conventions"]["keypoints"]["limbs"], manifest["conventions"]["keypoints"]["joints"]
    size = (manifest["image"]["width"], manifest["image"]["height"])
    head = ('<div class="scroll"><table class="samples"><thead><tr><th rowspan="2">sample</th>'
            '<th rowspan="2">keypoints</th>'
            + "".join(f'<th colspan="2" data-column="{c}">{COLUMN_LABELS[c]}</th>' for c in columns) + "</tr><tr>"
            + "".join(f'<th class="side">{html.escape(labels[0])}</th><th class="side">{html.escape(labels[1])}</th>'
                      for _ in columns) + "</tr></thead><tbody>")
    rows = []
    for sid in shown:
        thumbs: list[dict[str, str | None]] = []
        points: list[list[list[float]] | None] = []
        for side, version, place, by_id in zip(("before", "after"), versions, places, entries):
            entry = by_id.get(sid)
            if entry is None:
                thumbs.append({})
                points.append(None)
                continue
            folder = out / "thumbs" / b.batch_id / side
            thumbs.append(_sample_images(version, b.batch_id, place[b.batch_id], entry, folder))
            points.append(keypoints_of(version, b.batch_id, place[b.batch_id], entry["annotation"]))
        background = thumbs[1].get("rgb") or thumbs[0].get("rgb")
        background = Path(background).relative_to(out).as_posix() if background else None
        view = _keypoint_view(points[0], points[1], limbs, joints, size, background, f"{b.batch_id}-{sid}")
        modified = {m for m, ids in b.modified.items() if sid in ids}
        cells = []
        for column in columns:
            changed = (modified & {"rgb", "pose"}) if column == "overlay" else (modified & {column})
            if thumbs[0] and thumbs[1] and not changed:
                cells.append(f'<td colspan="2" class="same">{_img(out, thumbs[1].get(column), column)}'
                             "<div>unchanged</div></td>")
                continue
            for side, per in zip(("before", "after"), thumbs):
                cells.append(f"<td>{_img(out, per.get(column), f'{side} {column}')}</td>" if per
                             else f'<td class="none">{side}: none</td>')
        movement = b.movement.get(sid)
        note = ""
        if movement and (movement.max_px or movement.visibility_flips):
            note = (f"<div class=cap>moved up to {movement.max_px:.1f} px"
                    + (f" ({html.escape(movement.joint)})" if movement.joint else "")
                    + (f", {movement.visibility_flips} visibility flip(s)" if movement.visibility_flips else "")
                    + "</div>")
        what = ("added" if sid in b.samples_added else "removed" if sid in b.samples_removed
                else "changed: " + ", ".join(sorted(modified)))
        rows.append(f'<tr data-sample="{html.escape(sid)}" data-moved-px="{movement.max_px if movement else 0}">'
                    f"<td><b>{html.escape(sid)}</b>{note}<div class=cap>{html.escape(what)}</div></td>"
                    f"<td>{view}</td>{''.join(cells)}</tr>")
    return head + "".join(rows) + "</tbody></table></div>"


# --- contact sheet -----------------------------------------------------------------------------------------

def write_contact_sheet(root: Path, batch_id: str, out: Path | None = None, *, limit: int = 48, progress=None
                        ) -> PageResult:
    """A contact sheet of one batch in the workspace (default folder data/reports/show/<batch>/, git-ignored):
    every sample's images under labelled columns, and the batch's charts."""
    dvcrepo.require_repository(root)
    version = Version(root, None)
    place = version.batches().get(batch_id)
    loaded = version.manifest(batch_id, place) if place else None
    if place is None or loaded is None:
        raise BatchNotFoundError(f"no batch {batch_id!r} in the workspace", where=str(root / DATA),
                                 hint="`pose-sync status` lists the batches; `dvc checkout` if its data is missing")
    manifest = loaded[0]
    out = _prepare_out(root, out, CONTACT_SHEET_PAGES / batch_id)
    samples = manifest["samples"]
    columns = ["overlay", *[m for m in IMAGE_MODALITIES if m in manifest["modalities"]]]
    body = [f"<h1>Batch {html.escape(batch_id)}</h1>",
            f'<p>project {html.escape(manifest["project"])}, created {html.escape(manifest["created_at"])}, '
            f'<span data-count="samples">{len(samples)}</span> samples, {manifest["image"]["width"]}x'
            f'{manifest["image"]["height"]}, rig {html.escape(manifest["job"]["rig"]["name"])}, pose set '
            f'{html.escape(manifest["job"]["poses"]["set"])}</p>',
            '<div class="scroll"><table class="samples"><thead><tr><th>sample</th>'
            + "".join(f'<th data-column="{c}">{COLUMN_LABELS[c]}</th>' for c in columns) + "</tr></thead><tbody>"]
    counter = progress.task("contact sheet", min(limit, len(samples)), "samples") if progress \
        else contextlib.nullcontext()
    with counter as bar:
        for sample in samples[:limit]:
            thumbs = _sample_images(version, batch_id, place, sample, out / "thumbs" / batch_id)
            body.append(f'<tr data-sample="{html.escape(sample["sample_id"])}"><td>'
                        f'{html.escape(sample["sample_id"])}</td>'
                        + "".join(f"<td>{_img(out, thumbs.get(c), c)}</td>" for c in columns) + "</tr>")
            if bar:
                bar.advance()
    body.append("</tbody></table></div>")
    if len(samples) > limit:
        body.append(f'<p class="cap" data-count="not-shown">{len(samples) - limit} more sample(s) not shown '
                    f"(--limit {limit})</p>")
    body.append(_charts([(batch_id, _plot_rows(version, batch_id, place))]))
    page = out / "index.html"
    _write_file(page, _page(f"Batch {batch_id}", "".join(body)))
    return PageResult(page, _ignored(root, page), shown=min(limit, len(samples)), total=len(samples))
