"""`pose-sync`: the command line. It parses arguments, calls one library function, renders the result,
and maps typed errors to a message and an exit code. It does no work of its own.

Everything it prints goes through core/console.py (`_out`, `_err`, `_emit_json` are its `out`, `err`,
`emit_json`), which escapes and redacts: names come from the bucket, and a key or folder name must not be
able to move the cursor or recolour the terminal. A name put into a line is escaped whole (`_name`, and
every cell of `_table`), newlines included: it cannot fake a row.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from pose_factory import __version__, stages
from pose_factory.core.console import emit_json as _emit_json
from pose_factory.core.console import err as _err
from pose_factory.core.console import out as _out
from pose_factory.core.console import printable as _printable
from pose_factory.core.console import run_reporting_errors, verbose_log
from pose_factory.core.envnames import (
    ENV_ACCESS_KEY,
    ENV_ACCOUNT_ID,
    ENV_BUCKET,
    ENV_ENDPOINT,
    ENV_ROOT,
    ENV_SECRET_KEY,
)
from pose_factory.core.errors import ExitCode, RepositoryError, SchemaError, UsageError
from pose_factory.core.layout import (
    ARCHIVE,
    CONTACT_SHEET_PAGES,
    LOCAL_BUCKET,
    MIRROR,
    RAW,
    REVIEW_PAGES,
)
from pose_factory.core.progress import Progress, human_bytes
from pose_factory.core.settings import (
    Settings,
    backend_reason,
    load_settings,
    redact,
    resolve_backend,
)

CONFIG_JSON_VERSION = 1


def _name(text: str | None) -> str:
    """A name from outside (a batch id, a key, a problem naming one) made safe to put into a line."""
    return _printable(str(text))


def _parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a date", where=flag, hint="use YYYY-MM-DD, e.g. 2026-11-28") from None


# --- commands -----------------------------------------------------------------------------------------

def cmd_generate(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.producer.generate import default_job, generate_batch, load_job, parse_size

    if args.job:
        job = load_job(Path(args.job))
    else:
        job = default_job(args.project, args.samples, parse_size(args.size), args.seed, args.pose_set, args.rig,
                          args.keypoints)
    result = generate_batch(job, Path(args.out), settings, batch_id=args.batch_id, replace=args.force,
                            workers=args.workers, progress=progress)
    _err(f"generated {result.batch_id}: {result.samples} samples, {result.files} files, "
         f"{human_bytes(result.bytes)} in {result.batch_dir}")
    _out(result.batch_id)
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.bucket.batches import publish_batch

    if not settings.in_project and resolve_backend(settings, args.backend)[0] == "local":
        # The local-folder bucket is a project's data/local-bucket/, never a folder made where you stand.
        raise RepositoryError(f"no bucket to publish to: the local-folder bucket is a project's {LOCAL_BUCKET}/ "
                              "and this is not a Pose Factory project", where=str(settings.root),
                              hint="set the R2 variables (README: 'Connect a real R2 bucket') to publish to R2, or "
                                   f"run it inside your dataset repository (or with {ENV_ROOT} set)")
    storage = open_storage(settings, args.backend)
    result = publish_batch(storage, settings, Path(args.batch_dir), progress=progress)
    if args.json:
        _emit_json(result.as_json())
    elif result.already_complete:
        _out(f"{result.batch_id}: already published and complete ({result.files} files) in {result.destination}")
    else:
        _out(f"published {result.batch_id} to {result.destination}: {result.uploaded} uploaded "
             f"({human_bytes(result.uploaded_bytes)}), {result.skipped} already there"
             + (f", {result.removed_stale} stale removed" if result.removed_stale else "") + "; marked complete")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.bucket.batches import list_batches, list_json

    storage = open_storage(settings, args.backend)
    since = _parse_day(args.since, "--since") if args.since else None
    until = _parse_day(args.until, "--until") if args.until else None
    if since and until and since > until:
        raise UsageError("--since is after --until", where="--since/--until")
    batches = list_batches(storage, settings, project=args.project, since=since, until=until)
    if args.json:
        _emit_json(list_json(storage, batches))
        return 0
    if not batches:
        _out(f"no batches in {storage.description}" + (" match" if args.project or since or until else ""))
        if not (args.project or since or until):
            from pose_factory.bucket.backends import LocalFolderStorage
            from pose_factory.dataset.mirror import getting_started

            _out("next: " + getting_started(isinstance(storage, LocalFolderStorage)))
        return 0
    rows = [("BATCH", "PROJECT", "DATE", "SAMPLES", "SIZE", "STATUS")]
    for b in batches:
        rows.append((b.batch_id, b.project or "?", b.day, "?" if b.samples is None else str(b.samples),
                     "?" if b.bytes is None else human_bytes(b.bytes), _bucket_word(b.status)))
    _table(rows)
    for b in batches:
        if b.status == "invalid":
            _out(f"  {_name(b.batch_id)}: {_name(b.problem)}")
        elif b.status == "pruned" and b.pruned:
            _out(f"  {_name(b.batch_id)}: versioned, pruned: committed in {_name(b.pruned['git_commit'][:12])}, "
                 f"its files are in the DVC remote (`pose-sync fetch`)")
    complete = sum(b.status == "complete" for b in batches)
    invalid = sum(b.status == "invalid" for b in batches)
    pruned = sum(b.status == "pruned" for b in batches)
    _out(f"{len(batches)} batch(es) in {storage.description}: {complete} complete, "
         f"{len(batches) - complete - invalid - pruned} still uploading"
         + (f", {pruned} pruned (versioned in the DVC remote)" if pruned else "")
         + (f", {invalid} invalid (not pulled)" if invalid else ""))
    return 0


def _bucket_word(status: str) -> str:
    """How list and status show a batch's state in the bucket (a pruned one is versioned elsewhere)."""
    return "versioned, pruned" if status == "pruned" else status


def _table(rows: Sequence[Sequence[object]]) -> None:
    """Rows as columns two spaces apart, laid out by rich.table, plain (no borders, colours or markup).

    Cells are escaped first, so widths are those of what is shown, and each is a rich Text: a name from the
    bucket holding `[bold]` or `:smile:` is shown as it is, never read as markup or an emoji code.
    """
    import io

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cells = [[_printable(redact(str(cell))) for cell in row] for row in rows]
    table = Table(box=None, show_header=False, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0))
    for _ in cells[0]:
        table.add_column(no_wrap=True, overflow="ignore")
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))
    width = sum(max(len(row[i]) for row in cells) for i in range(len(cells[0]))) + 2 * len(cells[0])
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False, emoji=False,
            markup=False, soft_wrap=False).print(table)
    for line in buffer.getvalue().splitlines():
        _out(line.rstrip())


def cmd_verify(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.mirror import verify

    manifest, batch_dir = verify(settings, args.batch)
    _out(f"{manifest['batch_id']}: {manifest['totals']['files']} files in {batch_dir} match manifest.json")
    return 0


def cmd_validate(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    return stages.validate(args, progress)


def cmd_materialize(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    return stages.materialize(args, progress)


def cmd_curate(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.curation_server import make_server, open_in_browser

    server = make_server(settings, args.batch_id, port=args.port)
    app = server.app
    try:  # Ctrl-C is the way out, from the first line printed on
        _out(f"curating {app.batch.batch_id} ({len(app.batch.samples)} samples); decisions are saved as you make "
             f"them to {app.path.relative_to(settings.root)}")
        _out(f"open {server.url}")
        _out("keys: arrows move, k keep, r reject, 1-9 reject for a reason, u undo, Enter every modality; "
             "Ctrl-C stops the server")
        sys.stdout.flush()
        if not args.no_browser:
            open_in_browser(server.url)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    _out(f"stopped: {app.decided} decision(s) saved this session in {app.path.relative_to(settings.root)}; "
         "`pose-sync curation` sums them up, `dvc repro` applies them")
    return 0


def cmd_curation(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.curation import summary

    document = summary(settings, args.batch_id)
    if args.json:
        _emit_json(document)
        return 0
    _out(f"{document['batch_id']}: {document['samples']} samples: {document['keep']} kept, {document['reject']} "
         f"rejected, {document['undecided']} undecided, {document['fresh_look']} to look at again ({document['file']})")
    for reason, count in document["reasons"].items():
        _out(f"  rejected: {reason}: {count}")
    return 0


def cmd_prepare_batch(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.materialize import prepare_batch

    info = prepare_batch(settings, args.batch_id)
    _out(f"working set for {args.batch_id}: {info['samples']} samples in {info['path']} "
         f"({', '.join(info['modalities'])}; {info['link_mode']})")
    _out("link it into ComfyUI: pose-sync comfyui link /path/to/ComfyUI")
    return 0


def cmd_comfyui_link(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.integrations.comfyui import link_into_comfyui

    link, target = link_into_comfyui(settings, Path(args.comfyui_dir), args.name)
    _out(f"{link} -> {target}")
    _out(f"in ComfyUI, load images from input/{args.name}/pose/ (etc.); file names are zero-padded so folder "
         "loaders keep the order")
    return 0


def cmd_diff(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.diff import diff, markdown_summary, summary_lines

    result = diff(settings.root, args.rev_a, args.rev_b)
    if args.json or args.format == "json":
        _emit_json(result.as_json())
        return 0
    if args.format == "markdown":
        _out(markdown_summary(result))
        return 0
    for line in summary_lines(result):
        _out(line)
    return 0


def cmd_review(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.pages import write_review

    written = write_review(settings.root, args.rev_a, args.rev_b, Path(args.out) if args.out else None,
                           limit=args.limit, progress=progress)
    counts = written.document["summary"]["batches"]
    _out(f"review page {written.page}: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no change")
         + " (open it in a browser; it works offline)")
    _print_not_ignored(written)
    return 0


def _print_not_ignored(written) -> None:
    if not written.ignored:
        _out(f"note: git does not ignore {written.page.parent}: leave it out of `git add` (or add it to .gitignore)")


def cmd_show(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.pages import write_contact_sheet

    written = write_contact_sheet(settings.root, args.batch_id, Path(args.out) if args.out else None,
                                  limit=args.limit, progress=progress)
    _out(f"contact sheet {written.page}: {written.shown} of {written.total} samples shown")
    _print_not_ignored(written)
    return 0


def cmd_comfyui_check(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.integrations.comfyui import check

    report = check(settings, args.server or settings.comfyui.server)
    if args.json:
        _emit_json(report)
    else:
        _out(f"ComfyUI at {report['server']} answers (version {report['comfyui_version'] or 'unknown'})")
        for workflow in report["workflows"]:
            _out(f"  {workflow['name']}: {'ok' if workflow['ok'] else 'PROBLEMS'}")
            for problem in workflow["problems"]:
                _out(f"    - {problem}")
        if not report["workflows"]:
            _out("  no workflow is mapped yet (workflows: in config/local.yaml)")
    return ExitCode.OK if all(w["ok"] for w in report["workflows"]) else ExitCode.COMFYUI


def cmd_comfyui_queue(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.integrations.comfyui import queue

    result = queue(settings, workflow=args.workflow, server=args.server or settings.comfyui.server,
                   limit=args.limit, depth=settings.comfyui.queue_depth, timeout_s=settings.comfyui.timeout_s,
                   linked=args.linked, fail_fast=args.fail_fast, progress=progress)
    if args.json:
        _emit_json({"version": 1, "workflow": result.workflow, "done": result.done, "skipped": result.skipped,
                    "followed": result.followed, "outputs": result.outputs, "failed": result.failed,
                    "stopped": result.stopped, "out_dir": result.out_dir})
    else:
        for failure in result.failed[:10]:
            _out(f"failed {failure['sample']} ({failure['reason']}): {failure['error']}")
        if len(result.failed) > 10:
            _out(f"... and {len(result.failed) - 10} more (--json lists them all)")
        _out(f"{result.workflow}: {result.done} sample(s) run, {result.skipped} already done, {result.outputs} "
             f"output file(s) in {result.out_dir}, {len(result.failed)} failed"
             + (" (stopped at the first failure: --fail-fast)" if result.stopped else ""))
    return ExitCode.OK if not result.failed else ExitCode.COMFYUI


def cmd_job_submit(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.integrations import runpod

    job = runpod.load_job(Path(args.job_file))  # a broken job file is named before missing credentials are
    record = runpod.submit(open_storage(settings, "r2"), settings, job, pods=args.pods)
    pods = [a for shard in record["shards"] for a in shard["attempts"]]
    _out(f"job {record['job_id']} submitted: {len(pods)} pod(s) ({record['gpu_type']}, "
         f"${sum(a['cost_per_hr'] or 0 for a in pods):.2f}/h) rendering batch {record['batch_id']}: "
         + ", ".join(a["pod_id"] for a in pods) + f"; follow it with `pose-sync job watch {record['job_id']}`")
    if record["plain_secrets"]:
        _err(f"note: {', '.join(record['plain_secrets'])} went to the pod as plain environment values, which "
             "RunPod shows in its console and in GET /pods; set runpod.secrets to pass RunPod secrets instead "
             "(README, 'Render jobs on RunPod')")
    return 0


def _shard_line(update: dict[str, Any]) -> str:
    shards = " | ".join(f"s{s['index']} {s['pod_state'] or '?'} {s['state']} {s['samples_done']}/"
                        f"{s['samples_total'] if s['samples_total'] is not None else '?'}"
                        + (f" (pod {s['attempt']})" if (s["attempt"] or 1) > 1 else "") for s in update["shards"])
    api = f" | RunPod API: {update['api_error']}" if update["api_error"] else ""
    return f"[{update['elapsed_s']:7.1f} s] ~${update['cost_usd']:.2f}  {shards}{api}"


def cmd_job_watch(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.integrations import runpod

    storage = open_storage(settings, "r2")

    def show(update: dict[str, Any]) -> None:
        if not args.quiet:
            _err(_shard_line(update))

    outcome = runpod.watch(storage, settings, args.job_id, on_update=show, timeout_s=args.timeout,
                           poll_s=args.poll)
    record = outcome.record
    pods = [a for shard in record["shards"] for a in shard["attempts"] if a["pod_id"]]
    batch = f"; batch {record['batch_id']}" if outcome.ok else ""
    _out(f"job {args.job_id}: {outcome.reason}; {len(pods)} pod(s), all shut down "
         f"({runpod.shutdown_of(record, settings)}); ~${record['cost_usd']:.2f}{batch}")
    if not outcome.ok:
        return ExitCode.RUNPOD
    if args.pull:
        from pose_factory.dataset.pull import pull

        _print_pull(pull(storage, settings, [record["batch_id"]], commit=args.commit, progress=progress))
    return 0


def cmd_job_status(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.integrations import runpod

    unreadable: list[SchemaError] = []
    records = runpod.job_records(settings, unreadable)
    if args.job_id:
        records = [r for r in records if r["job_id"] == args.job_id]
        for problem in unreadable:
            if problem.where and Path(problem.where).stem == args.job_id:
                raise problem
        unreadable = []
    loose = [r for r in records if r.get("pods_may_be_running")]
    if args.json:
        _emit_json({"version": runpod.JSON_VERSION, "jobs": records,
                    "unreadable": [{"file": p.where, "error": p.message} for p in unreadable]})
    elif not records and not unreadable:
        _out("no jobs submitted from this project")
    if records and not args.json:
        rows = [("JOB", "STATE", "SHARDS DONE", "PODS", "COST", "BATCH", "REASON")]
        for r in records:
            done = sum(s["state"] == "done" for s in r["shards"])
            rows.append((r["job_id"], r["state"], f"{done}/{len(r['shards'])}",
                         str(len([a for s in r["shards"] for a in s["attempts"]])), f"~${r.get('cost_usd') or 0:.2f}",
                         r.get("batch_id") or "-", r.get("reason") or ""))
        _table(rows)
        for r in loose:
            _out(f"  {r['job_id']}: POD(S) MAY STILL BE RUNNING (shutdown never confirmed): "
                 f"{', '.join(r['pods_may_be_running'])}; `pose-sync job cancel {r['job_id']}`")
    if not args.json:
        for problem in unreadable:  # the others are still listed: one damaged record hides nothing
            where = problem.where or ""
            found = " ".join(line.strip().removeprefix("- ").removeprefix(f"{where}: ")
                             for line in problem.message.splitlines())
            _out(f"  unreadable record {_name(where)}: {_name(found)}; {problem.hint}")
    return ExitCode.PODS_MAY_BE_RUNNING if loose else ExitCode.OK


def cmd_job_list(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.integrations import runpod

    report = runpod.pods_report(settings)
    if args.json:
        _emit_json(report.as_json())
    else:
        if report.api_error:
            _out(f"RunPod API unreachable: {report.api_error}")
        elif not report.pods:
            _out("no pod started by pose-sync is up")
        if report.pods:
            rows = [("POD", "NAME", "STATUS", "$/H", "STOP IT WITH")]
            for pod in report.pods:
                job = runpod.job_of_pod(pod["name"])
                rows.append((pod["id"], pod["name"], pod["status"], f"${pod.get('cost', 0):.2f}",
                             f"pose-sync job cancel {job}" if job else ""))
            _table(rows)
        for job_id, names in report.unconfirmed.items():
            _out(f"job {job_id}: POD(S) MAY STILL BE RUNNING (shutdown never confirmed): {', '.join(names)}; "
                 f"`pose-sync job cancel {job_id}`")
    return (ExitCode.PODS_MAY_BE_RUNNING if report.unconfirmed else
            ExitCode.UNREACHABLE if report.api_error else ExitCode.OK)


def cmd_job_cancel(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.integrations import runpod

    record = runpod.cancel(open_storage(settings, "r2"), settings, args.job_id)
    pods = [a["pod_name"] for shard in record["shards"] for a in shard["attempts"]]
    _out(f"job {args.job_id}: {record['state']}; {len(pods)} pod(s) confirmed down "
         f"({runpod.shutdown_of(record, settings)})")
    return 0


def cmd_worker_run(args: argparse.Namespace, settings: Settings | None, progress: Progress) -> int:
    from pose_factory.producer.worker import Shard, run_on_pod

    def report(outcome) -> None:
        _out(f"job {outcome.job_id} shard {outcome.shard.index}/{outcome.shard.count}: {outcome.state}"
             + (f", batch {outcome.batch_id}" if outcome.batch_id else "")
             + (f" ({outcome.error})" if outcome.error else "") + (f"; {outcome.note}" if outcome.note else ""))
        sys.stdout.flush()

    outcome = run_on_pod(args.job_id, Shard.parse(args.shard), args.batch_id, report=report)
    _out(f"shutdown: {outcome.shutdown}")
    if outcome.failure is not None:
        raise outcome.failure  # reported like any error, with its exit code
    # On a pod, exiting restarts the container: the worker then finds its result and tries the shutdown again.
    return ExitCode.GENERAL if outcome.shutdown_failed else ExitCode.OK


def cmd_config(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    import os

    from pose_factory.dataset.dvcrepo import remote_in_effect

    backend, credentials = resolve_backend(settings, args.backend)
    document: dict[str, Any] = {
        "version": CONFIG_JSON_VERSION,
        "root": str(settings.root),
        "config_file": str(settings.config_file) if settings.config_file else None,
        "backend": backend,
        "backend_reason": backend_reason(settings, args.backend),
        "bucket": settings.bucket,
        "endpoint": credentials.endpoint_url if credentials else None,
        "local_bucket_dir": str(settings.local_bucket_dir) if backend == "local" else None,
        "prefixes": vars(settings.prefixes),
        "data_root": str(settings.layout.raw_dir),
        "rclone_remote": settings.rclone_remote,
        # Only whether each variable is set: values are never shown.
        "environment": {name: ("set" if os.environ.get(name) else "not set")
                        for name in (ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_ACCOUNT_ID, ENV_BUCKET, ENV_ENDPOINT)},
        "dvc_remote": remote_in_effect(settings.root),
    }
    if args.json:
        _emit_json(document)
        return 0
    where = (f"in the local folder {document['local_bucket_dir']}" if backend == "local"
             else f"at {document['endpoint']}")
    remote = document["dvc_remote"]
    rows = [
        ("project", document["root"]),
        ("settings file", document["config_file"] or "none: built-in defaults (copy config/local.example.yaml to "
                                                     "config/local.yaml to change them)"),
        ("backend", f"{backend} ({document['backend_reason']})"),
        ("bucket", f"{settings.bucket}, {where}"),
        ("prefixes", "  ".join(f"{name}: {value}" for name, value in document["prefixes"].items())),
        ("data root", document["data_root"]),
        ("DVC remote", f"{remote['name']}: {remote['url']} (the default, set in {remote['config_file']})" if remote
         else "none yet: run `pose-sync init`"),
        ("rclone remote", settings.rclone_remote),
        ("environment", ", ".join(f"{name} {state}" for name, state in document["environment"].items())),
    ]
    _table([(f"{label}:", value) for label, value in rows])
    return 0


def _pull_common(args: argparse.Namespace, settings: Settings, progress: Progress, latest: bool) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.dataset.pull import choose_batches, pull

    storage = open_storage(settings, args.backend)
    since = _parse_day(args.since, "--since") if args.since else None
    until = _parse_day(args.until, "--until") if args.until else None
    ids = getattr(args, "batch_ids", None) or None
    if not latest and not ids and not (args.project or since or until):
        raise UsageError("name the batches to pull, or filter them", where="pose-sync pull",
                         hint="e.g. `pose-sync pull 2026-11-28_run-cycle`, `pose-sync pull --project run-cycle "
                              "--since 2026-11-01`, or `pose-sync pull-latest`")
    repair = getattr(args, "repair", False)
    if repair and not ids:
        raise UsageError("--repair needs the batch ids to repair", where="pose-sync pull --repair",
                         hint="e.g. `pose-sync pull 2026-11-28_run-cycle --repair`")
    chosen = choose_batches(storage, settings, batch_ids=ids, latest=latest, project=args.project, since=since,
                            until=until, allow_incomplete=args.allow_incomplete)
    report = pull(storage, settings, chosen, engine=args.engine, allow_incomplete=args.allow_incomplete,
                  commit=args.commit, repair=repair, progress=progress)
    if args.json:
        _emit_json(report.as_json())
    else:
        _print_pull(report)
    return 0


def _print_pull(report) -> None:
    """The human summary of a pull (`pull`, `pull-latest`, `job watch --pull`)."""
    for r in report.recovered:
        _out(f"{r['batch_id']}: an interrupted {r['command']} was {r['outcome']}")
    for b in report.batches:
        if b.action == "up-to-date":
            _out(f"{b.batch_id}: up to date in {b.path}")
        elif b.action == "registered":
            _out(f"{b.batch_id}: up to date in {b.path}; registered in params.yaml")
        elif b.action == "archived":
            _out(f"{b.batch_id}: archived in {b.path}, not pulled (`pose-sync restore {b.batch_id}` brings it back)")
        elif b.action in ("repaired", "intact"):
            _out(f"{b.batch_id}: {b.action}: {b.files} files match {b.dvc_file}"
                 + (f" ({b.downloaded} cache object(s) fetched again)" if b.downloaded else ""))
        else:
            _out(f"{b.batch_id}: {b.action} into {b.path} ({b.files} files verified, {b.downloaded} downloaded, "
                 f"{b.reused} reused, {human_bytes(b.bytes)}), tracked by {b.dvc_file}")
    if report.commit:
        _out(f"committed {report.commit[:12]}: record of the new dataset version")
    elif report.to_commit:
        _out("to record this dataset version: git add " + " ".join(report.to_commit) + " && git commit")


def cmd_pull(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    return _pull_common(args, settings, progress, latest=False)


def cmd_pull_latest(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    return _pull_common(args, settings, progress, latest=True)


def cmd_fetch(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.fetch import fetch

    report = fetch(settings, args.batch_ids or None, engine=args.engine, force=args.force, progress=progress)
    if args.json:
        _emit_json(report.as_json())
        return 0
    if report.cache_type_set:
        _out(f"DVC cache type set to {report.cache_type_set} in .dvc/config.local (as `pose-sync init` sets it)")
    for b in report.batches:
        if b.action == "up-to-date":
            _out(f"{b.batch_id}: up to date in {b.path}")
        else:
            _out(f"{b.batch_id}: {b.action} into {b.path} ({b.files} files, {b.objects_downloaded} fetched "
                 "from the DVC remote)")
    _out(f"{len(report.batches)} batch version(s) in step with their .dvc files; {report.objects_downloaded} "
         f"object(s) downloaded" + (f" from {report.remote}" if report.remote else ""))
    return 0


def cmd_prune_bucket(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.dataset.prune import prune_bucket

    storage = open_storage(settings, args.backend)
    report = prune_bucket(storage, settings, args.batch_ids or None, dry_run=args.dry_run, progress=progress)
    if args.json:
        _emit_json(report.as_json())
    else:
        for b in report.batches:
            if b.action == "kept":
                _out(f"{_name(b.batch_id)}: kept in the bucket: {b.reason}")
            elif b.action == "already-pruned":
                _out(f"{_name(b.batch_id)}: already pruned (versioned in {b.git_commit[:12]})")
            else:
                verb = "would delete" if b.action == "would-prune" else "deleted"
                _out(f"{_name(b.batch_id)}: {verb} {b.objects_deleted} object(s), {human_bytes(b.bytes_freed)}; "
                     f"the version committed in {b.git_commit[:12]} is in the DVC remote, a tombstone stays")
        done = sum(b.action in ("pruned", "would-prune") for b in report.batches)
        kept = sum(b.action == "kept" for b in report.batches)
        _out(f"{done} batch(es) {'to prune' if args.dry_run else 'pruned'}, {kept} kept"
             + (" (dry run: nothing deleted)" if args.dry_run else ""))
    refused = [b for b in report.batches if b.action == "kept" and args.batch_ids]
    if refused:
        raise RepositoryError(f"{len(refused)} named batch(es) were kept in the bucket: {refused[0].batch_id}: "
                             f"{refused[0].reason}", where=storage.description,
                             hint="nothing is deleted that is not committed in git and in the DVC remote")
    return 0


def cmd_init(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset import dvcrepo

    if not (settings.root / ".git").exists():
        raise UsageError("the project is not a git repository", where=str(settings.root), hint="run `git init` first")
    backend, credentials = resolve_backend(settings, args.backend)
    remote = dvcrepo.configure_remote(settings, credentials)
    if args.json:
        _emit_json({"version": 1, "remote": remote.as_dict(), "backend": backend})
        return 0
    _out(f"DVC remote '{remote.name}' ({remote.kind}) is the default: {remote.url} (in {remote.config_file})")
    if remote.kind == "r2":
        _out("credentials stay in the environment / .env; `dvc push`, `dvc pull` and `dvc status -c` in the "
             "virtualenv find them")
    else:
        _out("this folder is this machine's only, so it stays out of git (.dvc/config.local is git-ignored); "
             "set the R2 variables and run `pose-sync init` again to share versions through R2")
    if remote.to_commit:
        _out("to share the DVC set-up with every clone: git add " + " ".join(remote.to_commit)
             + " && git commit -m 'DVC remote'")
    else:
        _out("nothing to commit")
    return 0


def cmd_status(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import LocalFolderStorage, open_storage
    from pose_factory.dataset import dvcrepo
    from pose_factory.dataset.mirror import getting_started, status, status_json

    dvcrepo.require_repository(settings.root)
    storage = open_storage(settings, args.backend)
    states = status(storage, settings, deep=args.deep)
    document = status_json(states, deep=args.deep)
    if args.json:
        _emit_json(document)
        return 0
    if not states:
        _out(f"no batches in the bucket ({storage.description}), the mirror or the archive")
        _out("next: " + getting_started(isinstance(storage, LocalFolderStorage)))
        return 0
    rows = [("BATCH", "STATE", "BUCKET", "LOCAL", "PUSHED", "NEXT")]
    for s in states:
        where = "archive" if s.archived else ("raw" if s.local else "-")
        pushed = "-" if s.pushed is None else ("yes" if s.pushed else "no")
        rows.append((s.batch_id, s.state, _bucket_word(s.remote) if s.remote else "-", where, pushed, s.next or "-"))
    _table(rows)
    for s in states:
        if s.problem:
            _out(f"  {_name(s.batch_id)}: {_name(s.problem)}")
    _out(", ".join(f"{count} {state}" for state, count in sorted(document["summary"].items())))
    return 0


def _archive_like(args: argparse.Namespace, settings: Settings, action) -> int:
    changed = action(settings, args.batch_id)
    if changed:
        _out(f"{args.batch_id}: {args.command}d; to record it: git add -A -- {' '.join(changed)} && git commit")
    else:
        _out(f"{args.batch_id}: {args.command}d")
    return 0


def cmd_archive(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.mirror import archive

    return _archive_like(args, settings, archive)


def cmd_restore(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.dataset.mirror import restore

    return _archive_like(args, settings, restore)


def cmd_push_job(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.bucket.jobs import push_job

    storage = open_storage(settings, args.backend)
    job_id, key = push_job(storage, settings, Path(args.job_file))
    _out(f"uploaded job {job_id} to {storage.description}: {key}")
    return 0


def cmd_list_jobs(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.backends import open_storage
    from pose_factory.bucket.jobs import jobs_json, list_jobs

    storage = open_storage(settings, args.backend)
    jobs = list_jobs(storage, settings)
    if args.json:
        _emit_json(jobs_json(jobs))
        return 0
    if not jobs:
        _out(f"no jobs in {storage.description}")
    if jobs:
        _table([("JOB", "PROJECT", "GENERATOR", "SAMPLES", "PROBLEM")]
               + [(job.job_id, job.project or "?", job.generator or "?", str(job.samples or "?"),
                   f"INVALID: {job.problem}" if job.problem else "") for job in jobs])
    return 0


def cmd_rclone_config(args: argparse.Namespace, settings: Settings, progress: Progress) -> int:
    from pose_factory.bucket.rclone import config_section

    text = config_section(settings, show_secrets=args.show_secrets)
    sys.stdout.write(_printable(text if args.show_secrets else redact(text), keep_newlines=True))
    return 0


# --- parser ---------------------------------------------------------------------------------------------

class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with each option's default shown (as ArgumentDefaultsHelpFormatter does), except
    where there is none to show (off switches, no value) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == [] or "default" in text
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


def _common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="settings file (default: config/local.yaml if present)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="show what runs: the git, dvc and rclone commands and their whole output, DVC's own log")
    return common


# The dvc.yaml stages' commands, parsed without building every other command's parser first (0.01 s of their
# start; tests/test_cli_help.py checks the two parsers agree).
STAGE_COMMANDS = {"validate": (cmd_validate, stages.VALIDATE_HELP, stages.add_validate_arguments),
                  "materialize": (cmd_materialize, stages.MATERIALIZE_HELP, stages.add_materialize_arguments)}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pose-sync", description="Version synthetic pose batches from R2 with "
                                     "git + DVC and hand them to ComfyUI.", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"pose-sync {__version__}")
    return parser


def stage_command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of `pose-sync validate` or `pose-sync materialize` alone, as build_parser makes it."""
    parser = _top_parser()
    handler, help_text, add_arguments = STAGE_COMMANDS[name]
    command = parser.add_subparsers(dest="command", metavar="COMMAND").add_parser(
        name, parents=[_common_options()], help=help_text, description=help_text, formatter_class=HelpFormatter)
    command.set_defaults(handler=handler, backend=None, needs_project=False)
    add_arguments(command)
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    # Only for commands that read or write the bucket (or say which one they would use).
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument("--backend", choices=["auto", "local", "r2"], default=None,
                         help="storage to use: auto (default: R2 when credentials are set, else the local "
                              "folder), local, or r2")

    parser = _top_parser()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def adder(subparsers) -> Callable[..., argparse.ArgumentParser]:
        def add_command(name: str, handler: Callable, help_text: str, *, bucket: bool = False,
                        anywhere: bool = False) -> argparse.ArgumentParser:
            """bucket: takes --backend. anywhere: works outside a project (it reads and writes only the
            paths it is given, or the bucket); every other command refuses there, as git does."""
            parents = [common, storage] if bucket else [common]
            p = subparsers.add_parser(name, parents=parents, help=help_text, description=help_text,
                                      formatter_class=HelpFormatter)
            p.set_defaults(handler=handler, backend=None, needs_project=not anywhere)
            return p

        return add_command

    def group(name: str, help_text: str) -> Callable[..., argparse.ArgumentParser]:
        """A command with sub-commands (`comfyui link`); alone, it prints its own help."""
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        p.set_defaults(group_parser=p)
        return adder(p.add_subparsers(dest=f"{name}_command", metavar="COMMAND"))

    add = adder(sub)

    p = add("generate", cmd_generate, "Render a synthetic pose batch (no GPU) into a folder and print its id",
            anywhere=True)
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the batch folder into")
    p.add_argument("--project", default="run-cycle", help="project slug")
    p.add_argument("--samples", type=int, default=8, metavar="N", help="number of samples")
    p.add_argument("--size", default="1024x1024", metavar="WxH", help="image size in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same images")
    p.add_argument("--pose-set", default="run-cycle", help="run-cycle, walk-cycle or random-pose")
    p.add_argument("--rig", default="mannequin-a", help="mannequin-a or mannequin-b")
    p.add_argument("--keypoints", choices=("detector", "all"), default="detector",
                   help="pose map / OpenPose JSON: only what a detector would report (default) or every joint")
    p.add_argument("--job", metavar="JOB_FILE", help="render this job definition instead of the options above")
    p.add_argument("--batch-id", help="batch id (default: <date>_<project> from the naming convention)")
    p.add_argument("--force", action="store_true", help="replace an existing batch folder with the same id")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: one per core)")

    p = add("publish", cmd_publish, "Upload a batch folder (pod side): verify, upload, mark complete last",
            bucket=True, anywhere=True)
    p.add_argument("batch_dir", metavar="BATCH_DIR", help="the batch folder (named by its id, with manifest.json)")
    p.add_argument("--json", action="store_true", help="machine-readable result")

    p = add("list", cmd_list, "List the batches in the bucket", bucket=True)
    p.add_argument("--project", help="only this project")
    p.add_argument("--since", metavar="YYYY-MM-DD", help="only batches created on or after this day")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="only batches created on or before this day")
    p.add_argument("--json", action="store_true", help="machine-readable listing")

    p = add("verify", cmd_verify, "Check a local batch (a folder, or a batch id in the mirror or archive) against "
                                   "its manifest (sizes, sha256, no extra files)", anywhere=True)
    p.add_argument("batch", metavar="BATCH_DIR|BATCH_ID",
                   help=f"a batch folder, or the id of a batch in {MIRROR} or {ARCHIVE}")

    for name, (handler, help_text, add_arguments) in STAGE_COMMANDS.items():
        add_arguments(add(name, handler, help_text, anywhere=True))

    p = add("prepare-batch", cmd_prepare_batch, "Make one batch the working set and run `dvc repro`")
    p.add_argument("batch_id", metavar="BATCH_ID", help="a batch in params.yaml's batches:")

    p = add("curate", cmd_curate, "Keep or reject samples of a batch by eye, in a local page (Ctrl-C stops it)")
    p.add_argument("batch_id", nargs="?", metavar="BATCH_ID", help="a batch in the mirror or the archive "
                   "(default: the newest in batches:)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the address only; do not open a browser")

    p = add("curation", cmd_curation, "What curation has decided for a batch: kept, rejected (why), left to do")
    p.add_argument("batch_id", metavar="BATCH_ID", help="a batch in the mirror or the archive")
    p.add_argument("--json", action="store_true", help="machine-readable summary")

    comfyui_add = group("comfyui", "ComfyUI hand-off: link, check, queue")
    p = comfyui_add("link", cmd_comfyui_link, "Link the working set into ComfyUI's input/ folder")
    p.add_argument("comfyui_dir", metavar="COMFYUI_DIR", help="the ComfyUI folder (the one holding input/)")
    p.add_argument("--name", default="pose-factory", help="folder name inside input/")
    p = comfyui_add("check", cmd_comfyui_check, "Check ComfyUI is up and has what the mapped workflows use")
    p.add_argument("--server", metavar="URL", help="ComfyUI address (default: comfyui.server in the settings)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p = comfyui_add("queue", cmd_comfyui_queue, "Run every sample of the working set through a mapped workflow")
    p.add_argument("--workflow", metavar="NAME", help="which mapped workflow (needed when several are mapped)")
    p.add_argument("--server", metavar="URL", help="ComfyUI address (default: comfyui.server in the settings)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples")
    p.add_argument("--linked", nargs="?", const="pose-factory", metavar="NAME",
                   help="use the folder made by `comfyui link [--name NAME]` instead of uploading (ComfyUI on this "
                        "machine; NAME defaults to pose-factory)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed sample (and take back the "
                   "prompts still queued)")
    p.add_argument("--json", action="store_true", help="machine-readable result")

    p = add("diff", cmd_diff, "What changed in the dataset between two versions (default: HEAD against the "
                               "workspace)")
    p.add_argument("rev_a", nargs="?", metavar="REV_A", help="older revision (default: HEAD)")
    p.add_argument("rev_b", nargs="?", metavar="REV_B", help="newer revision (default: the workspace)")
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text",
                   help="markdown: a summary to paste into a pull-request comment")
    p.add_argument("--json", action="store_true", help="machine-readable diff (same as --format json)")

    p = add("review", cmd_review, "A static HTML review page of a dataset diff, with before/after thumbnails")
    p.add_argument("rev_a", nargs="?", metavar="REV_A", help="older revision (default: HEAD)")
    p.add_argument("rev_b", nargs="?", metavar="REV_B", help="newer revision (default: the workspace)")
    p.add_argument("--out", metavar="DIR", help="folder for index.html and its thumbnails (default: "
                   f"{REVIEW_PAGES}/, git-ignored; a new folder elsewhere ignores itself)")
    p.add_argument("--limit", type=int, default=24, help="changed samples shown per batch")

    p = add("show", cmd_show, "A contact sheet (static HTML page) of one batch")
    p.add_argument("batch_id", metavar="BATCH_ID", help="a batch in the workspace (raw mirror or archive)")
    p.add_argument("--out", metavar="DIR", help="folder for index.html and its thumbnails (default: "
                   f"{CONTACT_SHEET_PAGES}/BATCH_ID/, git-ignored; a new folder elsewhere ignores itself)")
    p.add_argument("--limit", type=int, default=48, help="samples shown")

    job_add = group("job", "RunPod render jobs: submit, watch, status, list, cancel")
    p = job_add("submit", cmd_job_submit, "Validate a job, upload it and start RunPod pods that render it")
    p.add_argument("job_file", metavar="JOB_FILE", help="a job definition (schemas/job.schema.json)")
    p.add_argument("--pods", type=int, default=1, metavar="K",
                   help="split the samples over K pods, each rendering one shard")
    p = job_add("watch", cmd_job_watch,
                "Follow a job until its batch is complete in the bucket (assembling shards); shut its pods down")
    p.add_argument("job_id", metavar="JOB_ID", help="the id `job submit` printed")
    p.add_argument("--pull", action="store_true", help="pull the batch when the job is done")
    p.add_argument("--commit", action="store_true", help="with --pull: git commit the new version")
    p.add_argument("--timeout", type=float, help="seconds (default: runpod.job_timeout_s)")
    p.add_argument("--poll", type=float, help="seconds between looks (default: runpod.poll_s)")
    p = job_add("status", cmd_job_status, "The jobs submitted from this project")
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="only this job (default: every job)")
    p.add_argument("--json", action="store_true", help="machine-readable listing")
    p = job_add("list", cmd_job_list, "Pods started by pose-sync that are still up, and any whose shutdown never "
                                      "held")
    p.add_argument("--json", action="store_true", help="machine-readable listing")
    p = job_add("cancel", cmd_job_cancel, "Shut every pod of a job down (retried until RunPod confirms)")
    p.add_argument("job_id", metavar="JOB_ID", help="the job whose pods to shut down")

    worker_add = group("worker", "What a pod runs")
    p = worker_add("run", cmd_worker_run, "On a pod: render the job (or one shard) from the bucket, publish it, "
                                          "shut the pod down", anywhere=True)
    p.add_argument("job_id", metavar="JOB_ID", help="a job in the bucket's jobs/ prefix")
    p.add_argument("--batch-id", help="the batch id the laptop chose (default: from the job and today's date)")
    p.add_argument("--shard", default="0/1", metavar="K/N", help="render shard K of N (0/1: everything)")
    # Runs from the image's files and the pod's request alone: no project settings are read at all.
    p.set_defaults(standalone=True)

    p = add("config", cmd_config, "Show the settings in effect (secrets shown only as set / not set)", bucket=True)
    p.add_argument("--json", action="store_true", help="machine-readable settings")

    def pull_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--project", help="only batches of this project")
        p.add_argument("--since", metavar="YYYY-MM-DD", help="only batches created on or after this day")
        p.add_argument("--until", metavar="YYYY-MM-DD", help="only batches created on or before this day")
        p.add_argument("--engine", choices=["auto", "boto3", "rclone"], default="auto",
                       help="transfer engine (default: auto, which is rclone for R2/S3 and file copies for the "
                            "local bucket); every engine verifies every file the same way")
        p.add_argument("--allow-incomplete", action="store_true",
                       help="also pull a batch without _complete.json if every file its manifest lists is there")
        p.add_argument("--commit", action="store_true", help="git commit the new dataset version")
        p.add_argument("--json", action="store_true", help="machine-readable report")

    p = add("pull", cmd_pull, f"Pull batches into {MIRROR}/, verify them and version them with DVC",
            bucket=True)
    p.add_argument("batch_ids", nargs="*", metavar="BATCH_ID",
                   help="batch ids as `pose-sync list` shows them (or none, with filters)")
    pull_options(p)
    p.add_argument("--repair", action="store_true",
                   help="bring tracked batches back to the version their .dvc files record (files edited in "
                        "place, damaged DVC cache objects), from the bucket or the DVC remote")

    p = add("pull-latest", cmd_pull_latest, "Pull the newest complete batch (optionally of one project)",
            bucket=True)
    pull_options(p)

    p = add("fetch", cmd_fetch, "Bring the batch versions this commit records from the DVC remote (a fast `dvc "
                                "pull` of the batches; after a clone or a `git checkout`)")
    p.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="only these batches (default: every one with a "
                                                                    ".dvc file in data/raw or data/archive)")
    p.add_argument("--engine", choices=["auto", "boto3", "rclone"], default="auto",
                   help="transfer engine (default: auto, which is rclone for R2/S3 and file copies for a local DVC "
                        "remote); every object is checked against its md5")
    p.add_argument("--force", action="store_true", help="also replace batch folders whose files were changed")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = add("prune-bucket", cmd_prune_bucket, "Delete batches from the bucket once their version is committed in git "
                                              "and stored in the DVC remote (a tombstone stays)", bucket=True)
    p.add_argument("batch_ids", nargs="*", metavar="BATCH_ID",
                   help="only these batches (default: every complete batch that qualifies)")
    p.add_argument("--dry-run", action="store_true", help="check and report, delete nothing")
    p.add_argument("--json", action="store_true", help="machine-readable report")

    p = add("init", cmd_init, "Make the DVC remote the default: R2 with credentials, else a local folder",
            bucket=True)
    p.add_argument("--json", action="store_true", help="machine-readable result")

    p = add("status", cmd_status, "Batches in the bucket, the mirror and the archive, and what differs",
            bucket=True)
    p.add_argument("--json", action="store_true", help="machine-readable status")
    p.add_argument("--deep", action="store_true",
                   help="also compare every file's inode, mtime and size with the pulled version (one stat per "
                        "file, as `dvc status`); without it, each batch's folders are compared (a file added, "
                        "removed or replaced shows, a file written in place does not)")

    p = add("archive", cmd_archive, f"Move a batch to {ARCHIVE.parent}/ (still versioned, out of the pipeline)")
    p.add_argument("batch_id", metavar="BATCH_ID", help=f"a batch in {MIRROR}/")

    p = add("restore", cmd_restore, f"Move an archived batch back to {RAW}/ and into the pipeline")
    p.add_argument("batch_id", metavar="BATCH_ID", help=f"a batch in {ARCHIVE}/")

    p = add("push-job", cmd_push_job, "Validate a job definition and upload it to the bucket's jobs prefix",
            bucket=True)
    p.add_argument("job_file", metavar="JOB_FILE", help="a job definition (schemas/job.schema.json)")

    p = add("list-jobs", cmd_list_jobs, "List the job definitions in the bucket", bucket=True)
    p.add_argument("--json", action="store_true", help="machine-readable listing")

    p = add("rclone-config", cmd_rclone_config, "Print an rclone.conf section for the R2 remote")
    p.add_argument("--show-secrets", action="store_true", help="include the access key and secret")
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    parser = stage_command_parser(words[0]) if words and words[0] in STAGE_COMMANDS else build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        getattr(args, "group_parser", parser).print_help()
        return ExitCode.USAGE

    def run() -> int:
        settings = None if getattr(args, "standalone", False) else load_settings(
            config_file=Path(args.config) if args.config else None, require_project=args.needs_project)
        return args.handler(args, settings, Progress(enabled=not args.quiet))

    with verbose_log(getattr(args, "verbose", False)):
        return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
