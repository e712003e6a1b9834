"""Benchmark: `pose-sync curate` on a 10,000-sample batch.

The issue's target: the page is fast on 10,000 samples (thumbnails made once, cached outside git). Generates a
batch into a throw-away project's mirror (no DVC needed: curate reads the batch folder), starts the curation
server in-process, and times what a user waits for: the server start (manifest + every annotation for the
filters), the state the page loads, one page of 60 thumbnails cold (made and cached) and warm (from the cache),
decisions (each rewrites and fsyncs the batch's decisions file), and, when Chromium is installed, the page in
headless Chromium from navigation to its grid (and moving through five pages with PgDn). Not a test: prints
figures only.

    scripts/.venv/bin/python benchmarks/curate_scale.py [--samples 10000] [--size 256x256] [--keep]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    from pose_factory.core.settings import load_settings
    from pose_factory.dataset.curation_server import make_server
    from pose_factory.producer.generate import default_job, generate_batch, parse_size

    work = Path(tempfile.mkdtemp(prefix="pf-bench-curate-"))
    root = work / "project"
    (root / "config").mkdir(parents=True)
    (root / ".dvc").mkdir()
    os.environ["POSE_FACTORY_ROOT"] = str(root)
    settings = load_settings(root=root)
    batch_id = "2026-11-28_scale"
    print(f"generating {args.samples} samples at {args.size} ...", flush=True)
    start = time.perf_counter()
    generate_batch(default_job("run-cycle", args.samples, parse_size(args.size), seed=3), settings.mirror_dir,
                   settings, batch_id=batch_id)
    print(f"  {time.perf_counter() - start:.0f} s", flush=True)
    (root / "params.yaml").write_text(f"batches: [{batch_id}]\n")

    start = time.perf_counter()
    server = make_server(settings, batch_id)
    t_start = time.perf_counter() - start
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = server.app.token

    def get(path: str) -> tuple[float, int]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        began = time.perf_counter()
        connection.request("GET", path, headers={"Host": f"127.0.0.1:{server.port}", "X-Curate-Token": token})
        body = connection.getresponse().read()
        connection.close()
        return time.perf_counter() - began, len(body)

    t_state, state_bytes = get("/api/state")
    ids = [s["sample_id"] for s in server.app.batch.manifest["samples"]]

    def page_of_thumbnails(first: int) -> float:
        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:  # a browser fetches about 6 at a time
            list(pool.map(lambda sid: get(f"/thumb/{sid}/overlay"), ids[first:first + 60]))
        return time.perf_counter() - began

    t_cold, t_warm = page_of_thumbnails(0), page_of_thumbnails(0)
    cached = list((settings.cache_dir / "thumbs").rglob("*.png"))
    cache_bytes = sum(p.stat().st_size for p in cached)

    decide_times = []
    for i, sid in enumerate(ids[:: max(1, len(ids) // 200)][:200]):
        body = json.dumps({"sample_id": sid, "decision": "reject" if i % 3 == 0 else "keep"}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        began = time.perf_counter()
        connection.request("POST", "/api/decision", body=body, headers={
            "Host": f"127.0.0.1:{server.port}", "X-Curate-Token": token, "Content-Type": "application/json"})
        assert connection.getresponse().read()
        decide_times.append(time.perf_counter() - began)
        connection.close()
    decide_times.sort()

    browser_figures = ""
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        import test_curation

        browser = test_curation.Browser(work / "chromium-profile")
        try:
            began = time.perf_counter()
            browser.page("Page.navigate", {"url": server.url})
            test_curation.wait_for(lambda: browser.body("ready") == "1", "the page", timeout=300)
            t_ready = time.perf_counter() - began
            test_curation.wait_for(lambda: browser.js("Array.from(document.querySelectorAll('.card img'))"
                                                      ".filter(i => i.getBoundingClientRect().top < innerHeight)"
                                                      ".every(i => i.complete && i.naturalWidth > 0)"),
                                   "the visible thumbnails", timeout=300)
            t_visible = time.perf_counter() - began
            began = time.perf_counter()
            for _ in range(5):
                browser.press("PageDown")
            test_curation.wait_for(lambda: browser.body("page") == "6", "page 6")
            t_pages = time.perf_counter() - began
            cards = browser.js("document.querySelectorAll('.card').length")
            browser_figures = (f"\nheadless Chromium: grid ready {t_ready:.2f} s after navigation, visible thumbnails "
                               f"loaded {t_visible:.2f} s; five PgDn (new pages, cold thumbnails requested lazily) "
                               f"{t_pages:.2f} s; cards in the DOM: {cards}")
        finally:
            browser.close()
    server.shutdown()
    server.server_close()

    print(f"\nbatch: {len(ids)} samples at {args.size}")
    print(f"server start (manifest, {len(ids)} annotations, fingerprints): {t_start:.2f} s")
    print(f"/api/state: {t_state:.2f} s, {state_bytes / 1e6:.2f} MB")
    print(f"one page of 60 overlay thumbnails, 6 in parallel: cold {t_cold:.2f} s (made and cached), "
          f"warm {t_warm:.3f} s; cache {len(cached)} files, {cache_bytes / 1e3:.0f} KB")
    print(f"decision (rewrite + fsync of the decisions file, up to {len(decide_times)} rows): median "
          f"{decide_times[len(decide_times) // 2] * 1000:.1f} ms, max {decide_times[-1] * 1000:.1f} ms"
          + browser_figures)
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
