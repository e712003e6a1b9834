"""`make demo`: the main job on the embedded default, no account needed.

It plays the pod (generates two batches and publishes them) and then the user (lists the bucket),
running the same `pose-sync` commands a person would type, and shows each one. It never touches a real
bucket: R2 credentials are removed from the environment of every command it runs, and the storage is
the local folder, or a throw-away local S3 server with `--s3-local`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from .paths import project_root
from .settings import ENV_ACCESS_KEY, ENV_ACCOUNT_ID, ENV_BACKEND, ENV_BUCKET, ENV_ENDPOINT, ENV_SECRET_KEY

DEMO_BATCHES = (("run-cycle", "run-cycle", 11), ("walk-cycle", "walk-cycle", 12))
POD_OUTBOX = Path("data") / "pod-outbox"


def _run(args: list[str], env: dict[str, str], root: Path) -> str:
    print(f"\n$ pose-sync {shlex.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "pose_factory", *args], cwd=root, env=env, text=True,
                          stdout=subprocess.PIPE)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"demo step failed (exit {done.returncode}): pose-sync {shlex.join(args)}")
    return done.stdout


def run_demo(samples: int, size: str, s3_local: bool) -> None:
    root = project_root()
    env = {k: v for k, v in os.environ.items() if k not in (ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_ACCOUNT_ID,
                                                             ENV_ENDPOINT, ENV_BUCKET)}
    env[ENV_BACKEND] = "local"
    server = None
    if s3_local:
        import secrets

        from .s3local import LocalS3Server

        key, secret = "demo-" + secrets.token_hex(6), secrets.token_hex(20)
        server = LocalS3Server(Path(tempfile.mkdtemp(prefix="pose-factory-demo-s3-")), key, secret).start()
        server.create_bucket("pose-factory")
        env.update({ENV_BACKEND: "r2", ENV_ENDPOINT: server.endpoint_url, ENV_ACCESS_KEY: key,
                    ENV_SECRET_KEY: secret, ENV_BUCKET: "pose-factory"})
    try:
        outbox = POD_OUTBOX.as_posix()
        print("Pose Factory demo: a pod renders two batches and publishes them; then we list the bucket.")
        for project, pose_set, seed in DEMO_BATCHES:
            batch_id = _run(["generate", "--out", outbox, "--project", project, "--pose-set", pose_set,
                             "--samples", str(samples), "--size", size, "--seed", str(seed), "--force"],
                            env, root).strip()
            _run(["publish", f"{outbox}/{batch_id}"], env, root)
        _run(["list"], env, root)
        where = "a local S3 server (stopped now)" if server else "the embedded local bucket in data/local-bucket/"
        print(f"\nDone: two batches published to {where}. Batch folders as the pod wrote them: {outbox}/")
    finally:
        if server:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pose_factory.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="samples per batch (default: 8)")
    parser.add_argument("--size", default="512x512", help="image size (default: 512x512)")
    parser.add_argument("--s3-local", action="store_true", help="publish to a throw-away local S3 server instead")
    args = parser.parse_args(argv)
    run_demo(args.samples, args.size, args.s3_local)
    return 0


if __name__ == "__main__":
    sys.exit(main())
