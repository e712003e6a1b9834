#!/usr/bin/env python3
"""`pose-sync` with phase timers: the same CLI entry point, with the steps of pull and fetch wrapped in timers.

Used by pull_vs_rclone.py for one extra, separately reported run per engine (the headline timings
use the plain `scripts/pose_sync.py`). The timings go as JSON to the file named by the environment
variable POSE_BENCH_PHASES_OUT. Nothing in the tool is changed: functions are wrapped at run time, in
this process only.

Phases (seconds; nested phases are also counted in their parents):
  startup           process launch (POSE_BENCH_LAUNCH, wall clock set by the caller) -> this file runs
  import_cli        importing pose_factory.cli
  main              cli.main() as a whole
  remote_manifest   list the batch's keys, read _complete.json + manifest.json, schema-check
  verify_staged     look for (and hash) files already in staging (resume)
  transfer          the download itself (boto3 threads or the rclone child)
  check_downloaded  hash every downloaded file (sha256 + md5) and compare with the manifest
  verify_batch      second full walk + hash of the staged batch against the manifest
  make_read_only    chmod every file of the batch (staged, and again after dvc add)
  swap              rename staging -> mirror
  fetch_batch       all of the above but the swap, for the batch
  dvc_track         dvcrepo.track: open DVC repo, `dvc add`, `dvc checkout --relink`
  dvc_add           Repo.add inside dvc_track
  dvc_checkout      Repo.checkout (relink) inside dvc_track
  register          params.yaml update
  atexit            atexit handlers after main() returned (the earliest registered handler runs last)
  (the caller adds: wall, and finalization = wall - startup - in_process_total - atexit)
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
T0_WALL = time.time()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

TIMES: dict[str, list[float]] = {}


def _timed(name: str, func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            TIMES.setdefault(name, []).append(time.perf_counter() - start)

    return wrapper


def _install() -> None:
    from dvc.repo import Repo

    from pose_factory.bucket import rclone
    from pose_factory.core import contract
    from pose_factory.dataset import dvccache, dvcrepo, fetch, params, pull

    # (module, function, phase); a function the tool no longer has is skipped, so this file does not break
    # when the code moves on (the phases it prints say which were found).
    wrapped = [(pull, "fetch_remote_manifest", "remote_manifest"), (pull, "_verify_staged", "verify_staged"),
               (pull, "_download_boto3", "transfer"), (rclone, "copy_files", "transfer"),
               (pull, "_check_downloaded", "check_downloaded"), (contract, "verify_batch", "verify_batch"),
               (pull, "swap_dir", "swap"), (pull, "_stage", "fetch_batch"), (dvcrepo, "track", "dvc_track"),
               (dvccache, "_add_one", "dvc_cache_fill"), (dvccache, "_record_state", "dvc_state"),
               (dvccache, "seal", "seal"), (Repo, "add", "dvc_add"), (Repo, "checkout", "dvc_checkout"),
               (params, "register", "register"),
               (fetch, "_ensure_cache_type", "fetch_cache_type"), (fetch, "_fetch_dir_objects", "fetch_dir_objects"),
               (fetch, "_refuse_changed", "fetch_refuse_changed"), (fetch, "_download", "fetch_transfer"),
               (fetch, "_install", "fetch_install"), (fetch, "_checkout", "fetch_checkout"),
               (fetch, "record_checkout", "fetch_record")]
    for module, name, phase in wrapped:
        if hasattr(module, name):
            setattr(module, name, _timed(phase, getattr(module, name)))


def _write() -> None:
    out = os.environ.get("POSE_BENCH_PHASES_OUT")
    if out:
        Path(out).write_text(json.dumps({k: sum(v) for k, v in TIMES.items()}, indent=2))


def _at_exit(main_end: list[float]) -> None:
    if main_end:
        TIMES["atexit"] = [time.perf_counter() - main_end[0]]
    _write()


def main() -> int:
    launch = os.environ.get("POSE_BENCH_LAUNCH")
    if launch:
        TIMES["startup"] = [T0_WALL - float(launch)]
    main_end: list[float] = []
    atexit.register(_at_exit, main_end)  # registered first, so it runs after every other handler
    start = time.perf_counter()
    from pose_factory.cli import main as cli_main

    TIMES["import_cli"] = [time.perf_counter() - start]
    start = time.perf_counter()
    _install()
    TIMES["import_pull_and_dvc"] = [time.perf_counter() - start]
    start = time.perf_counter()
    try:
        return cli_main(sys.argv[1:])
    finally:
        TIMES["main"] = [time.perf_counter() - start]
        TIMES["in_process_total"] = [time.perf_counter() - T0]
        main_end.append(time.perf_counter())
        _write()


if __name__ == "__main__":
    sys.exit(main())
