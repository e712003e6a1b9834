#!/usr/bin/env python3
"""Benchmark: pull, restore and status at 2,000 / 20,000 / 70,000 files, each beside `rclone sync` in one run.

    scripts/.venv/bin/python benchmarks/scale_pull.py [--sizes 2000,20000,70000] [--repeat 3] [--batch-cache DIR]
                                                      [--status-batches 10] [--tune] [--json-out FILE]

One SeaweedFS server stands in for R2 (bucket and DVC remote `s3://<bucket>/dvc`, as `pose-sync init` sets it).
For each size a batch is generated (or taken from --batch-cache), published, pulled, committed and pushed once
(the source of the fresh clones). Then, in interleaved rounds (one of each per round, so drift hits all alike),
each into a fresh destination:

- `rclone sync --transfers 16` of the batch's prefix (the reference, 1.00x);
- `pose-sync pull ID` (default engine), the whole command, into a fresh copy of a template repository;
- `pose-sync fetch` in a fresh `git clone` of the source (the restore), then plain `dvc pull` there (which
  must find nothing to do);
- `dvc pull` in another fresh clone, as DVC comes (its default cache type copies every file), and
  `dvc pull -j 32` after `pose-sync init` set hardlinks (plain `dvc pull` made fast through settings).

Peak RSS is the exact peak of the largest process (wait4). After the rounds: `pose-sync status` in a
repository holding --status-batches batches of the largest size, R2 bytes per batch before and after
`prune-bucket`, and (--tune) rclone's transfer flags and the boto3 engine's threads at each size. The load
average is sampled before every timed command and printed with the figures: other jobs on a shared machine
inflate them; compare ratios taken in the same run, and repeat when the load is high.

Not a test: it exits non-zero only when a command fails; a missed goal is reported, not failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import pull_vs_rclone as base  # noqa: E402
from pull_vs_rclone import DVC, POSE_SYNC, RCLONE, REMOTE, Bed, BenchError, Run, log, run  # noqa: E402

from pose_factory.devtools.s3local import LocalS3Server  # noqa: E402

JSON_VERSION = 1
BUCKET = base.BUCKET
# files -> (batch id suffix, samples, image size, seed): 7 files per sample plus manifest.json. The 2,000-file
# batch is the one pull_vs_rclone.py times (78 MB); the others are small images, where per-file costs rule.
SIZES = {2000: ("a", 286, "1280x1280", 1), 20000: ("b", 2857, "32x32", 2), 70000: ("c", 10000, "32x32", 3)}
PULL_GOAL = {2000: 1.2, 20000: 1.5, 70000: 1.5}
RESTORE_GOAL = 1.2
RSS_GOAL_MB = 300
STATUS_GOAL_S = 2.0
# rclone copy flag sets compared by --tune (each with --files-from, as pull and fetch run it)
OURS = ["--no-check-dest", "--ignore-checksum", "--use-server-modtime"]


def loadavg() -> float:
    return os.getloadavg()[0]


def size_spec(files: int) -> tuple[str, int, str, int]:
    """(batch id suffix, samples, image size, seed) for a batch of about this many files (a smoke run's too)."""
    return SIZES.get(files) or (f"s{files}", max(1, (files - 1) // 7), "32x32", 4)


# Timed commands are started by this small helper process, not by the benchmark: Linux counts the memory of the
# process a command was forked from in the command's peak RSS (wait4 reports the larger of the two), and the
# benchmark holds file lists and DVC's modules. The helper holds about 10 MB, the floor of every RSS figure.
LAUNCHER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    request = json.loads(line)
    with open(request["stdout"], "wb") as out, open(request["stderr"], "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(request["command"], env=request["env"], cwd=request["cwd"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    print(json.dumps([seconds, usage.ru_maxrss, os.waitstatus_to_exitcode(status)]), flush=True)
"""


class Launcher:
    """Runs commands one at a time in a lean helper process; see LAUNCHER."""

    def __init__(self, work: Path) -> None:
        import subprocess

        self.work = work
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def run(self, cmd: list[str], *, env: dict[str, str], cwd: Path, what: str) -> Run:
        out, err = self.work / "launch.out", self.work / "launch.err"
        request = {"command": cmd, "env": env, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        seconds, maxrss, code = json.loads(self.proc.stdout.readline())
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if code != 0:
            tail = "\n".join((stderr or stdout).strip().splitlines()[-15:])
            raise BenchError(f"{what} failed (exit {code}): {' '.join(cmd)}\n{tail}")
        return Run(seconds, maxrss * 1024, 0, stdout, stderr)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


LAUNCH: Launcher | None = None


@dataclass
class Series:
    """Timed runs of one command at one size, with the load average before each."""

    runs: list[Run] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def add(self, result: Run, load: float) -> None:
        self.runs.append(result)
        self.loads.append(load)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_mb(self) -> float:
        return max(r.maxrss for r in self.runs) / 1e6

    def as_json(self, reference: float | None = None) -> dict:
        return {"seconds": [round(r.seconds, 3) for r in self.runs], "median_s": round(self.median, 3),
                "ratio": round(self.median / reference, 3) if reference else None,
                "peak_rss_mb": round(self.peak_mb, 1), "load": [round(x, 2) for x in self.loads]}


def batch_id(files: int) -> str:
    return f"2026-11-20_bench-{size_spec(files)[0]}"


def timed(bed: Bed, cmd: list[str], *, cwd: Path, env: dict[str, str], what: str, series: Series) -> Run:
    load = loadavg()
    result = LAUNCH.run(cmd, env=env, cwd=cwd, what=what) if LAUNCH else run(cmd, env=env, cwd=cwd, what=what)
    series.add(result, load)
    return result


# --- the measured commands -------------------------------------------------------------------------------

def rclone_sync(bed: Bed, conf: Path, batch: str, transfers: int, series: Series) -> None:
    dest = bed.fresh("rclone-sync")
    dest.mkdir()
    timed(bed, [RCLONE, "--config", str(conf), "sync", f"{REMOTE}:{BUCKET}/batches/{batch}", str(dest), "--transfers",
                str(transfers)], cwd=bed.work, env=bed.env(), what="rclone sync", series=series)
    shutil.rmtree(dest, ignore_errors=True)


def pose_sync_pull(bed: Bed, batch: str, series: Series, *, engine: str = "auto", concurrency: int | None = None
                   ) -> None:
    root = bed.new_repo("pull")
    if concurrency:
        (root / "config" / "local.yaml").write_text(f"storage:\n  concurrency: {concurrency}\n")
    result = timed(bed, POSE_SYNC + ["pull", batch, "--json", "-q", "--engine", engine], cwd=root, env=bed.env(root),
                   what="pose-sync pull", series=series)
    if json.loads(result.stdout)["batches"][0]["action"] != "pulled":
        raise BenchError(f"pose-sync pull did not pull: {result.stdout}")
    shutil.rmtree(root, ignore_errors=True)


def clone(bed: Bed, source: Path, name: str) -> Path:
    dest = bed.fresh(name)
    run(["git", "clone", "-q", str(source), str(dest)], env=bed.env(), cwd=bed.work, what="git clone")
    return dest


def fetch_then_dvc_pull(bed: Bed, source: Path, fetch: Series, after: Series) -> None:
    root = clone(bed, source, "fetch")
    result = timed(bed, POSE_SYNC + ["fetch", "--json", "-q"], cwd=root, env=bed.env(root), what="pose-sync fetch",
                   series=fetch)
    if json.loads(result.stdout)["batches"][0]["action"] != "fetched":
        raise BenchError(f"pose-sync fetch did not fetch: {result.stdout}")
    again = timed(bed, [DVC, "pull"], cwd=root, env=bed.env(root), what="dvc pull after fetch", series=after)
    if "Everything is up to date" not in again.stdout:
        raise BenchError(f"dvc pull after pose-sync fetch had work to do:\n{again.stdout}")
    shutil.rmtree(root, ignore_errors=True)


def dvc_pull(bed: Bed, source: Path, series: Series, *, tuned: bool) -> None:
    root = clone(bed, source, "dvc-pull")
    cmd = [DVC, "pull", "-q"]
    if tuned:  # what `pose-sync init` sets on this filesystem, and more parallel transfers
        from pose_factory.dataset import dvcrepo

        run([DVC, "config", "--local", "cache.type", dvcrepo.cache_type(root)], env=bed.env(root), cwd=root,
            what="dvc config")
        cmd += ["-j", "32"]
    timed(bed, cmd, cwd=root, env=bed.env(root), what="dvc pull", series=series)
    shutil.rmtree(root, ignore_errors=True)


# --- preparation -------------------------------------------------------------------------------------------

def publish(bed: Bed, conf: Path, folder: Path, files: int) -> float:
    """Publish a batch as a pod does; above 2,000 files its files go up with rclone first (publish then finds them
    there by their ETags and uploads nothing again: the same objects, minutes sooner)."""
    if files > 2000:
        run([RCLONE, "--config", str(conf), "copy", str(folder), f"{REMOTE}:{BUCKET}/batches/{folder.name}",
             "--transfers", "32", "--checkers", "32", "--exclude", "manifest.json"], env=bed.env(), cwd=bed.work,
            what="rclone copy (publish)")
    return base.publish(bed, folder)


def prepare_source(bed: Bed, conf: Path, batch: str, files: int) -> tuple[Path, float]:
    """A repository where the batch was pulled, committed and pushed to the DVC remote (returns it and the push
    time). `dvc push` above 2,000 files takes minutes; the remote's layout is the cache's, so there the cache's
    objects go up with rclone (`dvc status --cloud` then finds them all)."""
    root = bed.new_repo(f"source-{batch}")
    env = bed.env(root)
    run(POSE_SYNC + ["pull", batch, "-q", "--commit"], env=env, cwd=root, what="pose-sync pull --commit")
    if files <= 2000:
        push = run([DVC, "push", "-q", "-j", "32"], env=env, cwd=root, what="dvc push")
    else:
        push = run([RCLONE, "--config", str(conf), "copy", str(root / ".dvc" / "cache" / "files" / "md5"),
                    f"{REMOTE}:{BUCKET}/dvc/files/md5", "--transfers", "32", "--checkers", "32"], env=bed.env(),
                   cwd=bed.work, what="rclone copy (push)")
    status = run([DVC, "status", "--cloud", "--json"], env=env, cwd=root, what="dvc status --cloud")
    if json.loads(status.stdout or "{}"):
        raise BenchError(f"the DVC remote lacks objects of {batch}: {status.stdout[:500]}")
    return root, push.seconds


def s3_client(bed: Bed):
    import boto3
    from botocore.config import Config

    env = bed.base_env
    return boto3.client("s3", endpoint_url=env["POSE_FACTORY_R2_ENDPOINT"],
                        aws_access_key_id=env["CLOUDFLARE_R2_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["CLOUDFLARE_R2_SECRET_ACCESS_KEY"],
                        config=Config(region_name="auto", s3={"addressing_style": "path"},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def prefix_bytes(client, prefix: str) -> dict[str, int]:
    """{key: size} under a prefix of the bench bucket."""
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = item["Size"]
    return found


def stored_bytes(bed: Bed, source: Path, batch: str, remote_objects: dict[str, int]) -> dict[str, int]:
    """What R2 holds for one pulled and pushed batch: under batches/<id>/ and in the DVC remote."""
    from pose_factory.dataset import dvccache

    record = dvccache.read_dvc_file(source / "data" / "raw" / "pose-factory" / f"{batch}.dvc")
    odb = source / ".dvc" / "cache" / "files" / "md5"
    listing = dvccache.read_listing(Path(dvccache.object_path(str(odb), record["md5"])).read_bytes(), "")
    oids = {md5 for _, md5 in listing.values()} | {record["md5"]}
    in_remote = sum(remote_objects.get(f"dvc/files/md5/{oid[:2]}/{oid[2:]}", 0) for oid in oids)
    in_batches = sum(prefix_bytes(s3_client(bed), f"batches/{batch}/").values())
    return {"batches_prefix": in_batches, "dvc_remote": in_remote, "batch_bytes": int(record["size"])}


def status_bed(bed: Bed, source: Path, batch: str, copies: int) -> Path:
    """A repository holding `copies` batches of the source's size, each pulled, sealed, registered and in the
    bucket as complete. The first is the source's own pull; the others are hard-linked copies under other ids
    (their manifest rewritten, marker and manifest put in the bucket, their .dir and manifest objects in the DVC
    remote): what status reads for them is what it reads for pulled batches, without pulling 70,000 files again."""
    from pose_factory.core import contract
    from pose_factory.core.settings import load_settings
    from pose_factory.dataset import dvccache, dvcrepo, params

    root = bed.fresh("status")
    shutil.copytree(source, root, symlinks=True)  # the cache comes along as copies: same content, new inodes
    mirror = root / "data" / "raw" / "pose-factory"
    shutil.rmtree(mirror / batch)
    env = bed.env(root)
    run(POSE_SYNC + ["fetch", "-q"], env=env, cwd=root, what="pose-sync fetch (status bed)")
    client = s3_client(bed)
    record = dvccache.read_dvc_file(mirror / f"{batch}.dvc")
    odb = root / ".dvc" / "cache" / "files" / "md5"
    listing = dvccache.read_listing(Path(dvccache.object_path(str(odb), record["md5"])).read_bytes(), "")
    sizes = {e["path"]: e["size"] for e in contract.load_manifest(mirror / batch)["files"]}
    old = os.environ.get("POSE_FACTORY_ROOT")
    os.environ.update({k: v for k, v in env.items() if k.startswith(("POSE_FACTORY_", "CLOUDFLARE_", "DVC_"))})
    try:
        settings = load_settings()
        for n in range(1, copies):
            copy_id = f"2026-11-2{n % 10}_bench-copy{n}"
            folder = mirror / copy_id
            run(["cp", "-al", str(mirror / batch), str(folder)], env=env, cwd=root, what="cp -al")
            manifest = contract.load_manifest(folder)
            manifest["batch_id"] = copy_id
            data = contract.dumps(manifest)
            (folder / "manifest.json").unlink()
            (folder / "manifest.json").write_bytes(data)
            marker = contract.completion_marker(manifest, data)
            for name, body in (("manifest.json", data), ("_complete.json", contract.dumps(marker))):
                client.put_object(Bucket=BUCKET, Key=f"batches/{copy_id}/{name}", Body=body)
            md5s = {rel: (sizes.get(rel, 0), md5) for rel, (_, md5) in listing.items()}
            md5s["manifest.json"] = (len(data), hashlib.md5(data, usedforsecurity=False).hexdigest())
            dvcrepo.ensure_gitignored(mirror, copy_id)
            [added] = dvccache.add(root, [folder], {folder: md5s}, seal_dir=settings.seal_dir)
            params.register(settings, add=[copy_id])
            for oid in (md5s["manifest.json"][1], added.dir_md5):
                client.upload_file(dvccache.object_path(str(odb), oid), BUCKET, f"dvc/files/md5/{oid[:2]}/{oid[2:]}")
    finally:
        if old is None:
            os.environ.pop("POSE_FACTORY_ROOT", None)
        else:
            os.environ["POSE_FACTORY_ROOT"] = old
    run(["git", "add", "-A"], env=env, cwd=root, what="git add")
    run(["git", "commit", "-q", "-m", "copies"], env=env, cwd=root, what="git commit")
    return root


# --- tuning ------------------------------------------------------------------------------------------------

def object_list(source: Path, batch: str) -> list[str]:
    """The DVC remote's paths (`xx/rest`, under files/md5/) of every object of the batch's version, .dir included."""
    from pose_factory.dataset import dvccache

    record = dvccache.read_dvc_file(source / "data" / "raw" / "pose-factory" / f"{batch}.dvc")
    odb = source / ".dvc" / "cache" / "files" / "md5"
    listing = dvccache.read_listing(Path(dvccache.object_path(str(odb), record["md5"])).read_bytes(), "")
    oids = sorted({md5 for _, md5 in listing.values()} | {record["md5"]})
    return [f"{oid[:2]}/{oid[2:]}" for oid in oids]


NO_HEAD = ["--no-traverse", "--s3-no-head-object"]  # one GET per object: no listing, no HEAD


def tune(bed: Bed, conf: Path, sizes: list[int], repeat: int, sources: dict[int, Path]) -> dict:
    """rclone flag sets and transfer counts for pull (from batches/<id>/) and for fetch (from the DVC remote's
    files/md5/, which holds every version: listing it costs with its size, not the batch's), and the boto3
    engine's threads, at each size; interleaved like the main rounds."""
    def flags(transfers: int, *extra: str) -> list[str]:
        return ["--transfers", str(transfers), "--checkers", str(transfers), *extra]

    pull_variants = {"sync --transfers 16": None,
                     "copy --files-from, 16 (before)": flags(16),
                     "copy, ours, 16": flags(16, *OURS),
                     "copy, ours, 32": flags(32, *OURS),
                     "copy, ours, 64": flags(64, *OURS),
                     "copy, ours, 16, --fast-list": flags(16, *OURS, "--fast-list"),
                     "copy, ours, 16, no listing, no HEAD": flags(16, *OURS, *NO_HEAD),
                     "copy, ours, 32, no listing, no HEAD": flags(32, *OURS, *NO_HEAD)}
    fetch_variants = {"fetch: copy, ours, 16 (lists the remote)": flags(16, *OURS),
                      "fetch: copy, ours, 16, --fast-list": flags(16, *OURS, "--fast-list"),
                      "fetch: copy, ours, 16, no listing, no HEAD": flags(16, *OURS, *NO_HEAD),
                      "fetch: copy, ours, 32, no listing, no HEAD": flags(32, *OURS, *NO_HEAD),
                      "fetch: copy, ours, 64, no listing, no HEAD": flags(64, *OURS, *NO_HEAD)}
    results: dict = {}
    for files in sizes:
        batch = batch_id(files)
        cat = [RCLONE, "--config", str(conf), "cat", f"{REMOTE}:{BUCKET}/batches/{batch}/manifest.json"]
        manifest = json.loads(run(cat, env=bed.env(), cwd=bed.work, what="rclone cat").stdout)
        batch_list = bed.work / f"files-{files}.txt"
        batch_list.write_text("\n".join(e["path"] for e in manifest["files"]) + "\n")
        objects_list = bed.work / f"objects-{files}.txt"
        objects_list.write_text("\n".join(object_list(sources[files], batch)) + "\n")
        series = {name: Series() for name in [*pull_variants, *fetch_variants]}
        boto = {n: Series() for n in (4, 8, 16)} if files <= 20000 else {}
        for _ in range(repeat):
            runs = [(name, f"batches/{batch}", batch_list, f) for name, f in pull_variants.items()]
            runs += [(name, "dvc/files/md5", objects_list, f) for name, f in fetch_variants.items()]
            for name, prefix, listing, extra in runs:
                dest = bed.fresh("tune")
                dest.mkdir()
                source = f"{REMOTE}:{BUCKET}/{prefix}"
                cmd = ([RCLONE, "--config", str(conf), "sync", source, str(dest), "--transfers", "16"] if extra is None
                       else [RCLONE, "--config", str(conf), "copy", source, str(dest), "--files-from", str(listing),
                             *extra])
                timed(bed, cmd, cwd=bed.work, env=bed.env(), what=name, series=series[name])
                shutil.rmtree(dest, ignore_errors=True)
            for threads, s in boto.items():
                pose_sync_pull(bed, batch, s, engine="boto3", concurrency=threads)
            log(f"tune {files:,} files: round done (load {loadavg():.2f})")
        reference = series["sync --transfers 16"].median
        results[str(files)] = {"rclone": {n: s.as_json(reference) for n, s in series.items()},
                               "boto3_pull_by_concurrency": {str(n): s.as_json(reference) for n, s in boto.items()}}
    return results


def phases(bed: Bed, sizes: list[int], sources: dict[int, Path]) -> dict:
    """One pull and one fetch per size through benchmarks/_pull_phases.py (not part of the medians): seconds per
    step, to say what limits each figure."""
    found: dict = {}
    for files in sizes:
        found[str(files)] = {}
        for command in ("pull", "fetch"):
            root = bed.new_repo("phases-pull") if command == "pull" else clone(bed, sources[files], "phases-fetch")
            out = bed.work / f"phases-{command}-{files}.json"
            args = [batch_id(files)] if command == "pull" else []
            result = LAUNCH.run(base.PHASES + [command, *args, "--json", "-q"], cwd=root,
                                env=bed.env(root, POSE_BENCH_PHASES_OUT=str(out)), what=f"phased {command}")
            timings = json.loads(out.read_text())
            timings["wall"] = result.seconds
            timings["peak_rss_mb"] = round(result.maxrss / 1e6, 1)
            found[str(files)][command] = {k: round(v, 3) for k, v in timings.items()}
            shutil.rmtree(root, ignore_errors=True)
        log(f"phases at {files:,} files: pull {found[str(files)]['pull']['wall']:.1f} s, fetch "
            f"{found[str(files)]['fetch']['wall']:.1f} s")
    return found


# --- report ------------------------------------------------------------------------------------------------

def fmt_ratio(row: dict | None) -> str:
    if not row:
        return "-"
    return f"{row['ratio']:.2f}x ({row['median_s']:.1f} s)" if row.get("ratio") else f"{row['median_s']:.2f} s"


def table(headers: list[str], rows: list[list[str]]) -> str:
    return base.table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000,70000", help="files per batch (default: %(default)s; "
                        "other counts make 32x32 batches, for a smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--transfers", type=int, default=16, help="rclone sync --transfers (default: %(default)s)")
    parser.add_argument("--dvc-pull-max", type=int, default=20000,
                        help="time plain `dvc pull` only up to this many files (default: %(default)s; it is the "
                             "slowest command by far)")
    parser.add_argument("--status-batches", type=int, default=10, help="batches of the largest size in the status "
                        "repository (default: %(default)s; 0 skips status)")
    parser.add_argument("--tune", action="store_true", help="also compare rclone flag sets and boto3 threads")
    parser.add_argument("--phases", action="store_true", help="also time the steps of one pull and one fetch per size")
    parser.add_argument("--rounds-off", action="store_true", help="skip the timed rounds (with --tune / --phases)")
    parser.add_argument("--batch-cache", type=Path, metavar="DIR", help="keep generated batches in DIR and reuse them")
    parser.add_argument("--json-out", type=Path, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(s < 8 for s in sizes) or args.repeat < 1:
        parser.error("--sizes: file counts of 8 or more (2000, 20000, 70000 are the issue's; others are 32x32 "
                     "smoke batches); --repeat at least 1")

    work = Path(tempfile.mkdtemp(prefix="pose-bench-scale-"))
    access_key, secret_key = "BENCH" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30)
    server = LocalS3Server(work / "s3", access_key, secret_key)
    global LAUNCH
    LAUNCH = Launcher(work)
    try:
        log(f"work folder {work}; starting SeaweedFS ...")
        server.start()
        server.create_bucket(BUCKET)
        return bench(args, sizes, Bed(work, server, access_key, secret_key))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        LAUNCH.close()
        server.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, sizes: list[int], bed: Bed) -> int:
    started = datetime.now(UTC)
    load_start = os.getloadavg()
    work = bed.work
    (work / "pod-project" / "config").mkdir(parents=True)
    (work / "pod-project" / ".dvc").mkdir()
    bed.make_template_repo()
    conf = work / "rclone.conf"
    conf.write_text(run(POSE_SYNC + ["rclone-config", "--show-secrets"], env=bed.env(bed.template), cwd=work,
                        what="pose-sync rclone-config").stdout)
    conf.chmod(0o600)

    batches, sources = {}, {}
    for files in sizes:
        _, samples, size, seed = size_spec(files)
        folder = base.generate_batch(bed, batch_id(files), samples, size, seed, args.batch_cache)
        count, nbytes = base.batch_totals(folder)
        publish(bed, conf, folder, count)
        log(f"preparing the source repository of {count:,} files (pull, commit, dvc push) ...")
        sources[files], push_s = prepare_source(bed, conf, batch_id(files), count)
        batches[files] = {"batch_id": batch_id(files), "files": count, "bytes": nbytes, "push_s": round(push_s, 1),
                          "push": "dvc push -j 32" if count <= 2000 else "rclone copy of the cache"}
        log(f"{count:,} files, {nbytes / 1e6:.1f} MB; pushed in {push_s:.1f} s")

    names = ["rclone sync", "pose-sync pull", "pose-sync fetch", "dvc pull after fetch", "dvc pull",
             "dvc pull -j 32, hardlinks"]
    series = {files: {name: Series() for name in names} for files in sizes}
    log("warm-up (untimed): one rclone sync and one pull per size ...")
    rounds = 0 if args.rounds_off else args.repeat
    for files in sizes if rounds else []:
        rclone_sync(bed, conf, batch_id(files), args.transfers, Series())
        pose_sync_pull(bed, batch_id(files), Series())
    for round_number in range(rounds):
        for files in sizes:
            s = series[files]
            rclone_sync(bed, conf, batch_id(files), args.transfers, s["rclone sync"])
            pose_sync_pull(bed, batch_id(files), s["pose-sync pull"])
            fetch_then_dvc_pull(bed, sources[files], s["pose-sync fetch"], s["dvc pull after fetch"])
            if files <= args.dvc_pull_max:
                dvc_pull(bed, sources[files], s["dvc pull"], tuned=False)
                dvc_pull(bed, sources[files], s["dvc pull -j 32, hardlinks"], tuned=True)
            last = {name: s[name].runs[-1].seconds for name in ("rclone sync", "pose-sync pull", "pose-sync fetch")}
            log(f"round {round_number + 1}/{args.repeat}, {files:,} files: rclone {last['rclone sync']:.1f} s, pull "
                f"{last['pose-sync pull']:.1f} s, fetch {last['pose-sync fetch']:.1f} s (load {loadavg():.2f})")

    results = {}
    for files in sizes:
        reference = series[files]["rclone sync"].median if series[files]["rclone sync"].runs else None
        results[str(files)] = {**batches[files], "rows": {
            name: (s.as_json(reference if name not in ("rclone sync", "dvc pull after fetch") else None)
                   if s.runs else None) for name, s in series[files].items()}}

    status_result = None
    largest = max(sizes)
    if args.status_batches > 0:
        log(f"status repository: {args.status_batches} batches of {largest:,} files ...")
        root = status_bed(bed, sources[largest], batch_id(largest), args.status_batches)
        plain, deep = Series(), Series()
        run(POSE_SYNC + ["status", "--json"], env=bed.env(root), cwd=root, what="status warm-up")
        for _ in range(max(3, args.repeat)):
            result = timed(bed, POSE_SYNC + ["status", "--json"], cwd=root, env=bed.env(root), what="status",
                           series=plain)
        states = json.loads(result.stdout)["summary"]
        timed(bed, POSE_SYNC + ["status", "--json", "--deep"], cwd=root, env=bed.env(root), what="status --deep",
              series=deep)
        status_result = {"batches": args.status_batches, "files_per_batch": batches[largest]["files"],
                         "summary": states, "status": plain.as_json(), "status_deep": deep.as_json()}
        log(f"status: {plain.median:.2f} s median, --deep {deep.median:.2f} s; {states}")
        shutil.rmtree(root, ignore_errors=True)

    # Tuning reads the batches under batches/, so it runs before prune-bucket deletes them.
    tuning = tune(bed, conf, sizes, args.repeat, sources) if args.tune else None
    phase_times = phases(bed, sizes, sources) if args.phases else None
    log("R2 bytes per batch, then prune-bucket ...")
    client = s3_client(bed)
    remote_objects = prefix_bytes(client, "dvc/files/md5/")
    storage = {}
    for files in sizes:
        before = stored_bytes(bed, sources[files], batch_id(files), remote_objects)
        pruned = run(POSE_SYNC + ["prune-bucket", batch_id(files), "--json", "-q"], env=bed.env(sources[files]),
                     cwd=sources[files], what="prune-bucket")
        if json.loads(pruned.stdout)["batches"][0]["action"] != "pruned":
            raise BenchError(f"prune-bucket kept the batch: {pruned.stdout}")
        after = stored_bytes(bed, sources[files], batch_id(files), remote_objects)
        storage[str(files)] = {"before": before, "after": after, "prune_s": round(pruned.seconds, 2),
                               "ratio_before": round((before["batches_prefix"] + before["dvc_remote"])
                                                     / before["batch_bytes"], 3),
                               "ratio_after": round((after["batches_prefix"] + after["dvc_remote"])
                                                    / after["batch_bytes"], 3)}

    load_end = os.getloadavg()
    document = {"version": JSON_VERSION, "benchmark": "scale_pull", "started": started.isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "load_average_start": load_start, "load_average_end": load_end, "repeat": args.repeat,
                "transfers": args.transfers, "sizes": results, "status": status_result, "storage": storage,
                "tuning": tuning, "phases": phase_times}
    print_report(document)
    if args.json_out:
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def print_report(doc: dict) -> None:
    sizes = list(doc["sizes"])
    if any(doc["sizes"][s]["rows"]["rclone sync"] for s in sizes):
        print_rounds(doc, sizes)
    print_extras(doc)


def print_rounds(doc: dict, sizes: list[str]) -> None:
    heads = ["figure"] + [f"{int(s):,} files" for s in sizes] + ["goal"]
    rows = []

    def line(label: str, name: str, goal: str) -> None:
        rows.append([label] + [fmt_ratio(doc["sizes"][s]["rows"].get(name)) for s in sizes] + [goal])

    line("rclone sync --transfers 16 (reference)", "rclone sync", "")
    line("pose-sync pull, whole command", "pose-sync pull", "<= 1.2x at 2,000, <= 1.5x above")
    line("pose-sync fetch (fresh clone)", "pose-sync fetch", f"<= {RESTORE_GOAL}x")
    line("then dvc pull (nothing to do)", "dvc pull after fetch", "")
    line("dvc pull (fresh clone, as DVC comes)", "dvc pull", "")
    line("dvc pull -j 32 with hardlinks", "dvc pull -j 32, hardlinks", "")
    rows.append(["peak RSS, pull / fetch (MB)"] + [
        f"{doc['sizes'][s]['rows']['pose-sync pull']['peak_rss_mb']:.0f} / "
        f"{doc['sizes'][s]['rows']['pose-sync fetch']['peak_rss_mb']:.0f}" for s in sizes] + [f"< {RSS_GOAL_MB}"])
    rows.append(["load average (1 min) during rounds"] + [
        "{:.1f}-{:.1f}".format(min(x for r in doc["sizes"][s]["rows"].values() if r for x in r["load"]),
                               max(x for r in doc["sizes"][s]["rows"].values() if r for x in r["load"]))
        for s in sizes] + [""])
    storage = doc["storage"]
    rows.append(["R2 bytes per pulled+pushed batch, before / after prune-bucket"] + [
        f"{storage[s]['ratio_before']:.2f}x / {storage[s]['ratio_after']:.2f}x" for s in sizes] + ["1x"])
    print(f"\n== pull, restore and storage; {doc['repeat']} interleaved round(s), medians; ratio to rclone sync ==")
    print(table(heads, rows))


def print_extras(doc: dict) -> None:
    status = doc.get("status")
    if status:
        plain, deep = status["status"], status["status_deep"]
        print(f"\nstatus, {status['batches']} batches of {status['files_per_batch']:,} files: "
              f"{plain['median_s']:.2f} s median (runs {plain['seconds']}; goal < {STATUS_GOAL_S} s: "
              f"{'met' if plain['median_s'] < STATUS_GOAL_S else 'MISSED'}); status --deep {deep['median_s']:.2f} s; "
              f"{status['summary']}")
    tuning = doc.get("tuning")
    if tuning:
        for files, found in tuning.items():
            print(f"\n== tuning at {int(files):,} files (ratio to rclone sync --transfers 16) ==")
            body = [[name, fmt_ratio(r), f"{r['peak_rss_mb']:.0f}"] for name, r in found["rclone"].items()]
            body += [[f"pose-sync pull --engine boto3, concurrency {n} ({2 * int(n)} download threads)", fmt_ratio(r),
                      f"{r['peak_rss_mb']:.0f}"] for n, r in found["boto3_pull_by_concurrency"].items()]
            print(table(["command", "median", "peak RSS MB"], body))
    found = doc.get("phases")
    if found:
        for command in ("pull", "fetch"):
            names = sorted({name for per in found.values() for name in per[command]},
                           key=lambda n: (n in ("wall", "peak_rss_mb"), n))
            body = [[name] + [f"{found[s][command].get(name, 0):.2f}" if name in found[s][command] else "-"
                              for s in found] for name in names]
            print(f"\n== where one {command} spends its time (seconds; nested steps are counted in their parents) ==")
            print(table(["step"] + [f"{int(s):,} files" for s in found], body))
    storage = doc.get("storage") or {}
    if storage and not any(doc["sizes"][s]["rows"]["rclone sync"] for s in doc["sizes"]):
        print("\nR2 bytes per pulled+pushed batch, before / after prune-bucket: " + ", ".join(
            f"{int(s):,} files {v['ratio_before']:.2f}x / {v['ratio_after']:.2f}x" for s, v in storage.items()))
    print(f"\nload average (1, 5, 15 min) {tuple(round(x, 2) for x in doc['load_average_start'])} at the start, "
          f"{tuple(round(x, 2) for x in doc['load_average_end'])} at the end; {doc['machine']['cpus']} CPUs; "
          f"{doc['started']}")


if __name__ == "__main__":
    sys.exit(main())
