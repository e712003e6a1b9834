"""`make demo`: the whole loop on the embedded default, no account needed.

A sandbox dataset repository is made in `data/demo/repo/` (git + DVC, like a user's clone). A pod
renders two batches and publishes them to the bucket; then, as the user: list the bucket,
`pull-latest` and a filtered pull (verified, read-only, tracked by DVC, committed), `dvc push` to the
default DVC remote, and `status`. Every step is the command a person would type, shown before it runs.

It never touches a real bucket or the repository you run it from: R2 credentials are removed from the
environment of every command, the bucket is a local folder (or, with `--s3-local`, a throw-away local
S3 server), and the DVC remote is `data/demo/dvc-remote/`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from pose_factory.core.console import run_reporting_errors
from pose_factory.core.envnames import (
    ENV_ACCESS_KEY,
    ENV_ACCOUNT_ID,
    ENV_AWS_ACCESS_KEY,
    ENV_AWS_SECRET_KEY,
    ENV_BACKEND,
    ENV_BUCKET,
    ENV_DVC_LOCAL_REMOTE,
    ENV_ENDPOINT,
    ENV_ROOT,
    ENV_SECRET_KEY,
)
from pose_factory.core.layout import CODE_ROOT, CURATION, DEMO, Layout, project_root

DEMO_BATCHES = (("run-cycle", "run-cycle", 11), ("walk-cycle", "walk-cycle", 12))


def _show_and_run(label: str, command: list[str], env: dict[str, str], cwd: Path) -> str:
    print(f"\n$ {label}", flush=True)
    done = subprocess.run(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"demo step failed (exit {done.returncode}): {label}")
    return done.stdout


def _commit_step(message: str, env: dict[str, str], cwd: Path) -> None:
    """Show and run one git commit of everything: the message shown is the message made."""
    _show_and_run(f"git add -A && git commit -m {shlex.quote(message)}",
                  ["sh", "-c", f"git add -A && git commit -q -m {shlex.quote(message)} && echo committed"], env, cwd)


def _remove_tree(folder: Path) -> None:
    # The mirror is read-only by design; make it writable again so the old sandbox can go.
    def unlock(function, path, _excinfo):
        os.chmod(path, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
        function(path)

    if not folder.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=unlock)
    else:
        shutil.rmtree(folder, onerror=unlock)


# What a clone of this repository holds that the loop needs: the pipeline, its parameters and the code.
SANDBOX_FILES = (".gitignore", ".dvcignore", "dvc.yaml", "params.yaml", "config/local.example.yaml", "schemas",
                 "scripts/pose_sync.py", "scripts/pose_stage.py", "scripts/pose_factory",
                 (CURATION / ".gitkeep").as_posix())


def make_sandbox(repo: Path) -> None:
    """A fresh dataset repository laid out like this one."""
    _remove_tree(repo)
    repo.mkdir(parents=True)
    for name in SANDBOX_FILES:
        source, dest = CODE_ROOT / name, repo / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, dest)
    # The sandbox starts with no batches, whatever this repository has pulled.
    params = re.sub(r"\nbatches:\n(  - .*\n)+", "\nbatches: []\n", (repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(params)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.name", "Pose Factory demo"],
                    ["git", "config", "user.email", "demo@pose-factory.invalid"],
                    [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, check=True, capture_output=True)
    # The plot templates dvc.yaml names (bars for the validate stage's plots) live in .dvc/plots/.
    shutil.copytree(CODE_ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")


def run_demo(samples: int, size: str, s3_local: bool) -> None:
    demo = project_root() / DEMO
    repo, outbox, dvc_remote = demo / "repo", demo / "pod-outbox", demo / "dvc-remote"
    make_sandbox(repo)
    _remove_tree(dvc_remote)
    env = {k: v for k, v in os.environ.items() if k not in (ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_ACCOUNT_ID,
                                                             ENV_ENDPOINT, ENV_BUCKET, ENV_AWS_ACCESS_KEY,
                                                             ENV_AWS_SECRET_KEY)}
    env.update({ENV_BACKEND: "local", ENV_ROOT: str(repo), ENV_DVC_LOCAL_REMOTE: str(dvc_remote),
                "DVC_NO_ANALYTICS": "1"})
    server = None
    if s3_local:
        import secrets

        from pose_factory.devtools.s3local import LocalS3Server

        key, secret = "demo-" + secrets.token_hex(6), secrets.token_hex(20)
        server = LocalS3Server(Path(tempfile.mkdtemp(prefix="pose-factory-demo-s3-")), key, secret).start()
        server.create_bucket("pose-factory")
        env.update({ENV_BACKEND: "r2", ENV_ENDPOINT: server.endpoint_url, ENV_ACCESS_KEY: key,
                    ENV_SECRET_KEY: secret, ENV_BUCKET: "pose-factory", ENV_AWS_ACCESS_KEY: key,
                    ENV_AWS_SECRET_KEY: secret})
    pose_sync = [sys.executable, "-m", "pose_factory"]

    def step(*args: str) -> str:
        return _show_and_run("pose-sync " + shlex.join(args), [*pose_sync, *args], env, repo)

    try:
        print(f"Pose Factory demo, in a sandbox dataset repository: {repo}")
        step("init")
        _commit_step("Dataset repository", env, repo)
        print("\n# The pod's side: render two batches and publish them to the bucket.")
        for project, pose_set, seed in DEMO_BATCHES:
            batch_id = step("generate", "--out", str(outbox), "--project", project, "--pose-set", pose_set,
                            "--samples", str(samples), "--size", size, "--seed", str(seed), "--force").strip()
            step("publish", str(outbox / batch_id))
        print("\n# The user's side: see what is there, pull it, version it, push the versions.")
        step("list")
        step("pull-latest", "--commit")
        step("pull", "--project", "run-cycle", "--commit")
        _show_and_run("dvc push", [sys.executable, "-m", "dvc", "push"], env, repo)
        step("status")
        print("\n# The pipeline: validate every batch, build the ComfyUI working set from params.yaml.")
        _show_and_run("dvc repro", [sys.executable, "-m", "dvc", "repro", "-q"], env, repo)
        _show_and_run("dvc metrics show", [sys.executable, "-m", "dvc", "metrics", "show"], env, repo)
        _commit_step("Validate batches, materialise the working set", env, repo)
        _show_and_run("git log --oneline", ["git", "log", "--oneline"], env, repo)
        sandbox = Layout.of(repo)
        where = "a local S3 server (stopped now)" if server else f"the local bucket {sandbox.local_bucket_dir}"
        remote = "the local S3 server's dvc/ prefix" if server else str(dvc_remote)
        print(f"\nDone. Batches published to {where}, pulled into {sandbox.mirror_dir}, "
              f"versioned in git + DVC, and pushed to the DVC remote ({remote}).")
        from pose_factory.dataset.materialize import describe

        info = describe(sandbox.working_set)
        print(f"The ComfyUI working set is {info['path']}: {info['samples']} samples of {', '.join(info['batches'])}, "
              f"one folder per modality ({', '.join(info['modalities'])}), zero-padded names, index.json and "
              f"index.csv; files {info['link_mode']}ed from the raw mirror. Point ComfyUI at it with "
              f"`pose-sync comfyui link /path/to/ComfyUI`.")
    finally:
        if server:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pose_factory.devtools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="samples per batch (default: 8)")
    parser.add_argument("--size", default="512x512", help="image size (default: 512x512)")
    parser.add_argument("--s3-local", action="store_true", help="use a throw-away local S3 server as the bucket")
    args = parser.parse_args(argv)
    # An expected failure (e.g. run outside a project: nowhere to put data/demo/) is reported as pose-sync does.
    def demo() -> int:
        run_demo(args.samples, args.size, args.s3_local)
        return 0

    return run_reporting_errors(demo)


if __name__ == "__main__":
    sys.exit(main())
