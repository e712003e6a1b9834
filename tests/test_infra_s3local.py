"""Tests of the test infrastructure itself: the local S3 server (SeaweedFS) and the fault proxy."""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from faultproxy import FaultProxy
from pose_factory.devtools.s3local import LocalS3Server, find_weed_binary, free_port

BUCKET = "pose-factory-test"
pytestmark = pytest.mark.integration  # real SeaweedFS servers, the proxy in front of them


def s3_client(endpoint: str, access_key: str, secret_key: str, *, max_attempts: int = 5):
    """A boto3 client configured the way the tool talks to R2."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=Config(
            region_name="auto",
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # total_max_attempts counts the first try; botocore's max_attempts would count retries only.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def port_is_open(url: str) -> bool:
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def creds() -> tuple[str, str]:
    return "TEST" + secrets.token_hex(6).upper(), secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def server(tmp_path_factory, creds):
    with LocalS3Server(tmp_path_factory.mktemp("s3local"), *creds) as srv:
        srv.create_bucket(BUCKET)
        yield srv


@pytest.fixture
def proxy(server):
    with FaultProxy(server.endpoint_url) as px:
        yield px


@pytest.fixture
def client(server, creds):
    return s3_client(server.endpoint_url, *creds)


# -- the server ---------------------------------------------------------------------------------


def test_find_weed_binary_and_free_port():
    weed = Path(find_weed_binary())
    assert weed.name == "weed" and os.access(weed, os.X_OK)
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # still free right after it was handed out


def test_start_stop_lifecycle(tmp_path, creds):
    srv = LocalS3Server(tmp_path / "s3", *creds)
    srv.start()
    pid, url, ports = srv.pid, srv.endpoint_url, dict(srv.ports)
    assert pid and process_alive(pid)
    assert url.startswith("http://127.0.0.1:") and port_is_open(url)
    assert len(set(ports.values())) == len(ports) == 10, ports
    # Everything the server writes stays in its work dir (besides weed's hard-coded /tmp gRPC sockets).
    assert (tmp_path / "s3" / "data").is_dir() and any((tmp_path / "s3" / "logs").iterdir())
    assert creds[1] not in repr(srv)

    srv.stop()
    assert srv.pid is None
    assert not process_alive(pid)
    assert not port_is_open(url)
    for name in ("master", "volume", "filer", "s3", "admin"):
        assert not Path(f"/tmp/seaweedfs-{name}-grpc-{ports[name + '.grpc']}.sock").exists()
    srv.stop()  # idempotent


def test_start_failure_reports_log_and_command_without_secret(tmp_path, creds):
    srv = LocalS3Server(tmp_path / "s3", *creds, weed_binary="/bin/false")
    with pytest.raises(RuntimeError) as info:
        srv.start(timeout=10)
    message = str(info.value)
    assert "exited early" in message and "/bin/false" in message and "-s3.port=" in message
    assert creds[1] not in message
    assert srv.pid is None


def test_put_get_list_round_trip(server, client):
    body = os.urandom(256 * 1024)
    client.put_object(Bucket=BUCKET, Key="roundtrip/a.bin", Body=body)
    client.put_object(Bucket=BUCKET, Key="roundtrip/b.txt", Body=b"hello")
    assert client.get_object(Bucket=BUCKET, Key="roundtrip/a.bin")["Body"].read() == body
    assert client.head_object(Bucket=BUCKET, Key="roundtrip/b.txt")["ContentLength"] == 5
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="roundtrip/")
    assert [o["Key"] for o in listed["Contents"]] == ["roundtrip/a.bin", "roundtrip/b.txt"]
    server.create_bucket(BUCKET)  # idempotent
    assert BUCKET in [b["Name"] for b in client.list_buckets()["Buckets"]]


@pytest.mark.parametrize("which", ["secret", "access_key"])
def test_wrong_credentials_are_rejected(server, creds, which):
    access_key, secret_key = creds
    if which == "secret":
        secret_key += "x"
    else:
        access_key = "NOPE" + access_key
    bad = s3_client(server.endpoint_url, access_key, secret_key, max_attempts=1)
    with pytest.raises(ClientError) as info:
        bad.list_objects_v2(Bucket=BUCKET)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert info.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}


def test_two_servers_side_by_side(tmp_path, creds):
    a = LocalS3Server(tmp_path / "a", *creds)
    b = LocalS3Server(tmp_path / "b", *creds)
    try:
        a.start()
        b.start()
        assert not set(a.ports.values()) & set(b.ports.values())
        ca, cb = s3_client(a.endpoint_url, *creds), s3_client(b.endpoint_url, *creds)
        a.create_bucket("only-in-a")
        ca.put_object(Bucket="only-in-a", Key="k", Body=b"a")
        assert ca.get_object(Bucket="only-in-a", Key="k")["Body"].read() == b"a"
        assert "only-in-a" not in [x["Name"] for x in cb.list_buckets()["Buckets"]]
    finally:
        # Stop in parallel: each weed takes ~1 s to shut down.
        threads = [threading.Thread(target=s.stop) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert a.pid is None and b.pid is None
    assert not port_is_open(a.endpoint_url) and not port_is_open(b.endpoint_url)


def test_cli_prints_exports_and_stops_on_sigterm(tmp_path, creds):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": creds[0], "AWS_SECRET_ACCESS_KEY": creds[1]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pose_factory.devtools.s3local", "--dir", str(tmp_path / "cli"),
         "--bucket", "cli-bucket"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while "POSE_FACTORY_R2_BUCKET" not in exports and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                exports[name] = value
        assert exports.get("POSE_FACTORY_R2_BUCKET") == "cli-bucket", proc.stderr.read() if proc.poll() else exports
        # A secret that came from the environment is referenced, never printed.
        assert exports["CLOUDFLARE_R2_SECRET_ACCESS_KEY"] == '"$AWS_SECRET_ACCESS_KEY"'
        assert exports["CLOUDFLARE_R2_ACCESS_KEY_ID"].strip("'") == creds[0]
        c = s3_client(exports["POSE_FACTORY_R2_ENDPOINT"], *creds)
        c.put_object(Bucket="cli-bucket", Key="k", Body=b"v")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not port_is_open(exports["POSE_FACTORY_R2_ENDPOINT"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_weed_ends_with_the_process_that_started_it_even_when_that_is_killed(tmp_path, creds):
    script = ("import sys, time\n"
              "from pose_factory.devtools.s3local import LocalS3Server\n"
              f"server = LocalS3Server({str(tmp_path / 's3')!r}, {creds[0]!r}, {creds[1]!r}).start()\n"
              "print(server.pid, server.endpoint_url, flush=True)\n"
              "time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "scripts")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    weed = None
    try:
        weed, url = proc.stdout.readline().split()
        assert port_is_open(url)
        proc.kill()  # SIGKILL: no atexit, no finally
        proc.wait()
        deadline = time.monotonic() + 30  # a killed Go process can take a moment to close its sockets
        while not (_ended(weed) and not port_is_open(url)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ended(weed), "weed outlived the process that started it"
        assert not port_is_open(url)
    finally:
        if proc.poll() is None:
            proc.kill()
        if weed and not _ended(weed):
            os.kill(int(weed), signal.SIGKILL)


def _ended(pid: str) -> bool:
    """The process is gone, or a zombie that its new parent has not reaped yet."""
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True


# -- the fault proxy ----------------------------------------------------------------------------


def test_proxy_forwards_everything_unchanged(server, creds, proxy, tmp_path):
    # The client signs host=127.0.0.1:<proxy port>; SeaweedFS must accept that signature.
    c = s3_client(proxy.url, *creds)
    big = os.urandom(20 * 1024 * 1024)
    c.put_object(Bucket=BUCKET, Key="proxy/big.bin", Body=big)
    assert c.get_object(Bucket=BUCKET, Key="proxy/big.bin")["Body"].read() == big
    assert c.head_object(Bucket=BUCKET, Key="proxy/big.bin")["ContentLength"] == len(big)
    src = tmp_path / "src.bin"
    src.write_bytes(big[: 12 * 1024 * 1024])
    c.upload_file(
        str(src), BUCKET, "proxy/multi.bin",
        Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024),
    )  # fmt: skip
    assert c.get_object(Bucket=BUCKET, Key="proxy/multi.bin")["Body"].read() == src.read_bytes()
    keys = [o["Key"] for o in c.list_objects_v2(Bucket=BUCKET, Prefix="proxy/")["Contents"]]
    assert keys == ["proxy/big.bin", "proxy/multi.bin"]
    assert proxy.faults_injected == 0
    assert any("uploadId" in path for method, path, _ in proxy.log if method == "PUT")
    assert all(outcome.startswith("forwarded 2") for _, _, outcome in proxy.log), proxy.log


def test_proxy_503_is_retried(server, creds, proxy):
    c = s3_client(proxy.url, *creds)
    proxy.fail_next(1, 503)
    c.put_object(Bucket=BUCKET, Key="retry/503", Body=b"payload")
    assert proxy.faults_injected == 1
    assert proxy.outcomes("PUT") == ["injected 503", "forwarded 200"]
    stored = s3_client(server.endpoint_url, *creds).get_object(Bucket=BUCKET, Key="retry/503")["Body"].read()
    assert stored == b"payload"


def test_proxy_dropped_get_is_retried(server, client, creds, proxy):
    client.put_object(Bucket=BUCKET, Key="retry/drop", Body=b"data")
    c = s3_client(proxy.url, *creds)
    proxy.drop_next(1, method="GET")
    assert c.get_object(Bucket=BUCKET, Key="retry/drop")["Body"].read() == b"data"
    assert proxy.outcomes("GET") == ["dropped", "forwarded 200"]
    assert proxy.faults_injected == 1


def test_proxy_503_surfaces_without_retries(creds, proxy):
    c = s3_client(proxy.url, *creds, max_attempts=1)
    proxy.fail_next(1, 503)
    with pytest.raises(ClientError) as info:
        c.list_objects_v2(Bucket=BUCKET)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert info.value.response["Error"]["Code"] == "SlowDown"
    assert proxy.requests_seen == 1 and proxy.faults_injected == 1
    c.list_objects_v2(Bucket=BUCKET)  # the fault was used up
    assert proxy.requests_seen == 2


def test_proxy_fault_filters_and_clear(creds, proxy):
    c = s3_client(proxy.url, *creds, max_attempts=1)
    proxy.fail_next(1, 500, method="PUT", path_contains="/filtered/")
    c.put_object(Bucket=BUCKET, Key="other/k", Body=b"1")  # path does not match
    c.list_objects_v2(Bucket=BUCKET)  # method does not match
    with pytest.raises(ClientError) as info:
        c.put_object(Bucket=BUCKET, Key="filtered/k", Body=b"1")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert info.value.response["Error"]["Code"] == "InternalError"
    proxy.fail_next(5, 503)
    proxy.clear()
    c.put_object(Bucket=BUCKET, Key="filtered/k", Body=b"1")
    assert proxy.faults_injected == 1


def test_proxy_passes_chunked_bodies_through():
    received: list[tuple[str | None, bytes]] = []

    class Echo(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_PUT(self):
            raw = b""
            while True:  # keep the framing: the proxy must not re-encode the body
                size_line = self.rfile.readline()
                raw += size_line
                size = int(size_line.split(b";")[0], 16)
                raw += self.rfile.read(size + 2)
                if size == 0:
                    break
            received.append((self.headers.get("Host"), raw))
            body = b"ok:%d" % len(raw)
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))

        def log_message(self, *args):
            pass

    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}") as px:
            conn = http.client.HTTPConnection("127.0.0.1", int(px.url.rsplit(":", 1)[1]), timeout=10)
            for _ in range(2):  # twice on one keep-alive connection
                conn.request("PUT", "/x", body=iter([b"abc", b"defgh"]), encode_chunked=True)
                response = conn.getresponse()
                assert response.status == 200
                assert response.read() == b"ok:%d" % len(b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")
            conn.close()
            assert received[0] == (px.url.removeprefix("http://"), b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n")
            assert px.requests_seen == 2
    finally:
        upstream.shutdown()
        upstream.server_close()
