#!/usr/bin/env python3
"""Issue #13's table (figure | now | goal) from one run of scale_pull.py and validate_materialize.py.

    scripts/.venv/bin/python benchmarks/scale_table.py [--repeat 3] [--batch-cache DIR] [--json-out FILE]
    scripts/.venv/bin/python benchmarks/scale_table.py --from-json pull.json [--from-json-local vm.json]

Runs benchmarks/scale_pull.py (pull, restore, status, R2 bytes) and, when it is there,
benchmarks/validate_materialize.py (validate and materialize at scale; it must accept --json-out), each
writing JSON, then prints one table. --from-json prints the table from results saved earlier instead.
Not a test: a missed goal is printed, never failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run_json(script: str, extra: list[str]) -> dict | None:
    """Run a benchmark with --json-out into a temporary file and return what it wrote (None if it is absent)."""
    path = BENCH / script
    if not path.exists():
        print(f"note: {script} is not in this checkout; its rows are left out", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, str(path), *extra, "--json-out", str(out)])
        if done.returncode != 0 or not out.exists():
            print(f"note: {script} failed (exit {done.returncode}); its rows are left out", file=sys.stderr)
            return None
        return json.loads(out.read_text())


def _row(doc: dict | None, files: str, name: str) -> dict | None:
    try:
        return doc["sizes"][files]["rows"][name] if doc else None
    except KeyError:
        return None


def _ratio(row: dict | None, reference: dict | None = None) -> str:
    if not row:
        return "not measured"
    ref = f" vs {reference['median_s']:.1f} s" if reference else ""
    return f"{row['ratio']:.2f}x ({row['median_s']:.1f} s{ref})"


def _vm_rows(doc: dict | None) -> list[tuple[str, str, str]]:
    """Rows from validate_materialize.py's JSON: each scale's validate and materialize ratios."""
    if not doc:
        return [("`materialize` vs `cp -al` (6,000 and 60,000 files)", "not measured", "<= 2x"),
                ("`validate` vs `sha256sum` (70,000 files)", "not measured", "<= 1.3x")]
    rows = []
    for scale in doc.get("scales", []):
        for row in scale.get("rows", []):
            if row.get("command") not in ("validate", "materialize") or row.get("ratio") is None:
                continue
            count = scale.get("linked_files") if row["command"] == "materialize" else scale.get("files")
            reference = row.get("reference") or ""
            goal = f"<= {row['target']}x" if row.get("target") else ""
            rows.append((f"`{row['command']}` vs `{reference}`, {count:,} files",
                         f"{row['ratio']:.2f}x ({row['median_s']:.2f} s), {row.get('peak_rss_mb', 0):.0f} MB", goal))
    return rows


def table(pull: dict | None, local: dict | None) -> str:
    rows: list[tuple[str, str, str]] = []
    if pull:
        sizes = pull["sizes"]
        for files, goal in (("2000", "<= 1.2x"), ("20000", "<= 1.5x, < 300 MB"), ("70000", "<= 1.5x, < 300 MB")):
            if files not in sizes:
                continue
            info = sizes[files]
            pulled = _row(pull, files, "pose-sync pull")
            rss = f", {pulled['peak_rss_mb']:.0f} MB peak" if pulled else ""
            rows.append((f"`pose-sync pull`, {info['files']:,} files / {info['bytes'] / 1e6:.0f} MB, whole command vs "
                         "`rclone sync --transfers 16`", _ratio(pulled, _row(pull, files, "rclone sync")) + rss, goal))
        for files in sizes:
            fetched = _row(pull, files, "pose-sync fetch")
            rss = f", {fetched['peak_rss_mb']:.0f} MB peak" if fetched else ""
            plain, tuned = _row(pull, files, "dvc pull"), _row(pull, files, "dvc pull -j 32, hardlinks")
            extra = ""
            if plain:
                extra = f"; plain `dvc pull` {plain['ratio']:.2f}x"
                if tuned:
                    extra += f", `dvc pull -j 32` with hardlinks {tuned['ratio']:.2f}x"
            rows.append((f"fresh clone: `pose-sync fetch`, {int(files):,} files, vs `rclone sync`",
                         _ratio(fetched) + rss + extra, "<= 1.2x"))
        storage = pull.get("storage") or {}
        for files, found in storage.items():
            rows.append((f"R2 bytes per pulled, pushed batch ({int(files):,} files)",
                         f"{found['ratio_before']:.2f}x, {found['ratio_after']:.2f}x after `prune-bucket`",
                         "1x available"))
        status = pull.get("status")
        if status:
            rows.append((f"`status`, {status['batches']} batches of {status['files_per_batch']:,} files",
                         f"{status['status']['median_s']:.2f} s (`--deep` {status['status_deep']['median_s']:.2f} s)",
                         "< 2 s"))
    rows += _vm_rows(local)
    loads = []
    for name, doc in (("pull", pull), ("validate/materialize", local)):
        if doc:
            start, end = doc.get("load_average_start"), doc.get("load_average_end")
            if start and end:
                loads.append(f"{name}: {start[0]:.1f} -> {end[0]:.1f}")
    lines = ["| figure | now | goal |", "|---|---|---|"]
    lines += [f"| {label} | {now} | {goal} |" for label, now, goal in rows]
    if loads:
        lines.append(f"\nload average (1 min) at start -> end: {'; '.join(loads)} (2-core machine shared with other "
                     "jobs: compare ratios measured in the same run)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved rounds in each benchmark (default: %(default)s)")
    parser.add_argument("--batch-cache", type=Path, metavar="DIR", help="reuse generated batches from DIR")
    parser.add_argument("--from-json", type=Path, metavar="FILE", help="scale_pull.py results saved earlier")
    parser.add_argument("--from-json-local", type=Path, metavar="FILE",
                        help="validate_materialize.py results saved earlier")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write both results as one JSON file")
    args = parser.parse_args(argv)
    if args.from_json or args.from_json_local:
        pull = json.loads(args.from_json.read_text()) if args.from_json else None
        local = json.loads(args.from_json_local.read_text()) if args.from_json_local else None
    else:
        cache = ["--batch-cache", str(args.batch_cache)] if args.batch_cache else []
        pull = run_json("scale_pull.py", ["--repeat", str(args.repeat), *cache])
        local = run_json("validate_materialize.py", ["--repeat", str(args.repeat), *cache])
    print("\n" + table(pull, local))
    if args.json_out:
        args.json_out.write_text(json.dumps({"version": 1, "scale_pull": pull, "validate_materialize": local},
                                            indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
