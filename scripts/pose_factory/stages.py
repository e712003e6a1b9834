"""The commands dvc.yaml's stages run: `python scripts/pose_stage.py validate|materialize ...`.

A lean entry point on purpose: it loads only the code behind a stage's result, not cli.py (which every new
command changes) nor the bucket, DVC or RunPod code, so each stage's `deps:` in dvc.yaml can list exactly
that code and an edit to any of it reruns the stage (tests/test_stage_deps.py runs each stage and checks).
`pose-sync validate` and `pose-sync materialize` are these same commands, reached through cli.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pose_factory.core.console import emit_json, out, run_reporting_errors
from pose_factory.core.errors import ExitCode
from pose_factory.core.layout import CURATION, MIRROR, PARAMS_FILE, VALIDATION_REPORTS, WORKING_SET
from pose_factory.core.progress import Progress, human_bytes

VALIDATE_HELP = "Validate a batch completely: schemas, files, images, keypoints, ids"
MATERIALIZE_HELP = "Build the ComfyUI working set from params.yaml (the dvc.yaml stage)"


def add_validate_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `validate` (the validate stage, and `pose-sync validate`)."""
    parser.add_argument("batch_dir", metavar="BATCH_DIR", help="the batch folder to validate")
    parser.add_argument("--report", metavar="DIR", help="write metrics.json, report.json and plot CSVs here")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes to check with (default: one per core, at most 4, from 10,000 files on)")


def _no_collection_at_exit() -> None:
    """Spare the interpreter's last garbage collection at exit: after a stage it walks every object still alive
    (modules, schemas, caches) to free what the process is about to give back anyway, 0.02 s of each run.
    Nothing here relies on it: files are closed by `with`, standard output is flushed by the interpreter."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)  # once, however often a process (a test) runs a stage
    atexit.register(gc.freeze)


def validate(args: argparse.Namespace, progress: Progress) -> int:
    """Validate one batch; with --report write the stage's metrics, report and plots."""
    from pose_factory.dataset.validate import raise_if_failed, validate_batch, write_report

    _no_collection_at_exit()
    report = validate_batch(Path(args.batch_dir), progress=progress, workers=args.workers)
    if args.report:
        write_report(report, Path(args.report))
    if args.json:
        emit_json(report.as_json())
        return ExitCode.OK if report.ok else ExitCode.VALIDATION
    raise_if_failed(report)
    out(f"{report.batch_id}: valid: {report.samples} samples, {report.files} files ({human_bytes(report.bytes)}), "
        f"{len(report.warnings)} warning(s)")
    for warning in report.warnings[:5]:
        out(f"  warning: {warning}")
    if len(report.warnings) > 5:
        out(f"  ... and {len(report.warnings) - 5} more warning(s)")
    return ExitCode.OK


def add_materialize_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `materialize`: every path it reads or writes, which dvc.yaml passes (defaults: the layout's)."""
    parser.add_argument("--params", default=str(PARAMS_FILE), help="params file with the working: section")
    parser.add_argument("--raw", default=str(MIRROR), help="the raw mirror")
    parser.add_argument("--reports", default=str(VALIDATION_REPORTS), help="validation reports, one folder per batch")
    parser.add_argument("--out", default=str(WORKING_SET), help="the working set folder")
    parser.add_argument("--curation", default=str(CURATION), help="curation decisions, one .tsv per batch")


def materialize(args: argparse.Namespace, progress: Progress) -> int:
    """Build the working set and swap it in."""
    from pose_factory.dataset.materialize import materialize as build

    _no_collection_at_exit()
    result = build(Path(args.params), Path(args.raw), Path(args.reports), Path(args.out), progress=progress,
                   curation_dir=Path(args.curation))
    links = ", ".join(f"{count} {mode}" for mode, count in result.link_counts.items())
    curated = f"; {result.rejected} rejected in curation left out" if result.rejected else ""
    out(f"working set {result.out_dir}: {result.samples} samples from {', '.join(result.batches)}; "
        f"{', '.join(result.modalities)}; files: {links}{curated}")
    if result.fresh_look:
        out(f"note: {result.fresh_look} curation decision(s) not applied: those samples were re-rendered since "
            "(`pose-sync curate` shows them as 'to look at again')")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """`python scripts/pose_stage.py validate|materialize ...`: run one stage, report errors as pose-sync does."""
    parser = argparse.ArgumentParser(prog="pose_stage.py", description="The commands of the dvc.yaml stages.")
    commands = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, help_text, add_arguments, run in (("validate", VALIDATE_HELP, add_validate_arguments, validate),
                                                ("materialize", MATERIALIZE_HELP, add_materialize_arguments,
                                                 materialize)):
        command = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.add_argument("-q", "--quiet", action="store_true", help="no progress output")
        command.set_defaults(run=run)
    args = parser.parse_args(argv)
    return run_reporting_errors(lambda: args.run(args, Progress(enabled=not args.quiet)))
