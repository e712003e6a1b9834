"""A fault-injecting HTTP proxy for tests: sits between boto3 and the local S3 server.

R2 answers 5xx / 429 under load and connections drop; the tool must retry through both. The proxy
forwards every request unchanged (Host header included, since SigV4 signs it) and, when told to,
answers the next matching requests with an S3-style error, drops their connection instead, or cuts
the response body part way (headers promise the whole body, then the connection is reset). It can
also rewrite ListObjectsV2 answers, to show the client keys a real R2 accepts but SeaweedFS refuses
(`..` segments, backslashes). Faults are decided per HTTP request, not per TCP connection, because
boto3 reuses keep-alive connections. `refused_url()` and `blackhole_url()` give endpoints that refuse
connections or never answer the TCP handshake.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

_COPY_SIZE = 64 * 1024
_ERROR_CODES = {
    400: ("BadRequest", "Bad request (injected by FaultProxy)."),
    401: ("Unauthorized", "Unauthorized (checksum headers refused, as R2 does)."),
    403: ("AccessDenied", "Access Denied (injected by FaultProxy)."),
    429: ("SlowDown", "Too many requests, please reduce your request rate (injected by FaultProxy)."),
    500: ("InternalError", "We encountered an internal error, please try again (injected by FaultProxy)."),
    502: ("BadGateway", "Bad gateway (injected by FaultProxy)."),
    503: ("SlowDown", "Please reduce your request rate (injected by FaultProxy)."),
    504: ("GatewayTimeout", "Gateway timeout (injected by FaultProxy)."),
}


@dataclass
class _Rule:
    kind: str  # "fail", "drop" or "cut"
    remaining: int
    status: int
    method: str | None
    path_contains: str | None
    after_bytes: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and (self.method is None or self.method.upper() == method)
            and (self.path_contains is None or self.path_contains in path)
        )


class FaultProxy:
    """HTTP/1.1 proxy to one upstream that can inject S3 error responses and dropped connections."""

    def __init__(self, upstream_url: str):
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"FaultProxy needs an http:// upstream URL, got {upstream_url!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.url = ""
        self.requests_seen = 0
        self.faults_injected = 0
        self.log: list[tuple[str, str, str]] = []
        self._rules: list[_Rule] = []
        # ListObjectsV2 answer rewriter: XML text in, XML text out (see rewrite_listings).
        self._listing_rewriter: Callable[[str], str] | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # Like Cloudflare R2 (see shared notes): refuse requests that carry botocore's default
        # flexible-checksum headers, so a test proves a client really sends `when_required`.
        self.reject_checksum_headers = False
        self.checksum_rejections = 0

    # -- control --------------------------------------------------------------------------------

    def fail_next(
        self, count: int, status: int = 503, *, method: str | None = None, path_contains: str | None = None
    ) -> None:
        """Answer the next `count` matching requests with an S3 XML error of `status`, without forwarding."""
        with self._lock:
            self._rules.append(_Rule("fail", count, status, method, path_contains))

    def drop_next(self, count: int, *, method: str | None = None, path_contains: str | None = None) -> None:
        """Read the next `count` matching requests, then close their connection with no response."""
        with self._lock:
            self._rules.append(_Rule("drop", count, 0, method, path_contains))

    def cut_next(self, count: int, after_bytes: int = 0, *, method: str | None = None,
                 path_contains: str | None = None) -> None:
        """Forward the next `count` matching requests, send the answer's headers and only its first
        `after_bytes` body bytes, then reset the connection (a body cut mid-stream)."""
        with self._lock:
            self._rules.append(_Rule("cut", count, 0, method, path_contains, after_bytes))

    def rewrite_listings(self, rewriter: Callable[[str], str] | None) -> None:
        """Pass every ListObjectsV2 answer body (XML) through rewriter; None stops rewriting."""
        with self._lock:
            self._listing_rewriter = rewriter

    def clear(self) -> None:
        """Forget all pending faults and rewriting (counters and log are kept)."""
        with self._lock:
            self._rules.clear()
            self._listing_rewriter = None

    def outcomes(self, method: str | None = None) -> list[str]:
        """Outcomes from the log, optionally only for one method."""
        with self._lock:
            return [outcome for m, _, outcome in self.log if method is None or m == method]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free 127.0.0.1 port and serve in a background thread."""
        if self._server is not None:
            return self
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, name="FaultProxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open client connections. Safe to call more than once."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        # Keep-alive connections would otherwise keep being served by their handler threads.
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler --------------------------------------------------------------------

    def _decide(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            self.requests_seen += 1
            for rule in self._rules:
                if rule.matches(method, path):
                    rule.remaining -= 1
                    self.faults_injected += 1
                    return rule
            return None

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.log.append((method, path, outcome))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-answer (it read what it wanted, or gave up) is not a proxy failure; and a
        # traceback printed here would land in the output of the command under test.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FaultProxy
    # Idle keep-alive connections end eventually instead of pinning a thread forever.
    timeout = 120

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the structured `log` replaces stderr noise in test output

    def _handle(self) -> None:
        method, path = self.command, self.path
        if self.owner.reject_checksum_headers and any(
                name.lower() in ("x-amz-trailer", "x-amz-sdk-checksum-algorithm")
                or name.lower().startswith("x-amz-checksum-") for name in self.headers.keys()):
            self._copy_request_body(None)
            with self.owner._lock:
                self.owner.checksum_rejections += 1
            self.owner._record(method, path, "rejected checksum headers 401")
            self._send_error_xml(401, path)
            return
        rule = self.owner._decide(method, path)
        if rule is None or rule.kind == "cut":
            self._forward(method, path, cut_after=rule.after_bytes if rule else None)
            return
        # Consume the body first so the connection stays in sync (fail) or the request is
        # really "sent" before the connection vanishes (drop).
        self._copy_request_body(None)
        if rule.kind == "drop":
            self.owner._record(method, path, "dropped")
            self._drop_connection()
        else:
            self.owner._record(method, path, f"injected {rule.status}")
            self._send_error_xml(rule.status, path)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_OPTIONS = do_PATCH = _handle

    # -- request side ---------------------------------------------------------------------------

    def _copy_request_body(self, upstream: http.client.HTTPConnection | None) -> None:
        """Read the request body (Content-Length or chunked) and pass its raw bytes to upstream, if any."""

        def emit(data: bytes) -> None:
            if upstream is not None and data:
                upstream.send(data)

        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # Pass the chunk framing through byte for byte so signed (aws-chunked) bodies stay valid.
            while True:
                size_line = self.rfile.readline(65537)
                emit(size_line)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, then the empty line that ends the body
                        line = self.rfile.readline(65537)
                        emit(line)
                        if line in (b"\r\n", b"\n", b""):
                            return
                remaining = size + 2  # chunk data plus its CRLF
                while remaining:
                    data = self.rfile.read(min(remaining, _COPY_SIZE))
                    if not data:
                        raise ConnectionError("client closed mid-chunk")
                    emit(data)
                    remaining -= len(data)
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            data = self.rfile.read(min(remaining, _COPY_SIZE))
            if not data:
                raise ConnectionError("client closed mid-body")
            emit(data)
            remaining -= len(data)

    def _forward(self, method: str, path: str, cut_after: int | None = None) -> None:
        # One upstream connection per request: a stale pooled upstream connection could not be
        # retried once the (streamed) request body has been consumed.
        upstream = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port, timeout=120)
        try:
            try:
                upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    upstream.putheader(name, value)
                upstream.endheaders()
                self._copy_request_body(upstream)
                response = upstream.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self.owner._record(method, path, f"upstream error {type(exc).__name__}")
                self._send_error_xml(502, path)
                self.close_connection = True
                return
            if cut_after is not None:
                self.owner._record(method, path, f"cut after {cut_after} bytes")
                self._relay_cut(response, cut_after)
                return
            rewriter = self.owner._listing_rewriter
            if rewriter is not None and method == "GET" and "list-type=2" in path and response.status == 200:
                self.owner._record(method, path, f"forwarded {response.status} (listing rewritten)")
                self._relay_rewritten(response, rewriter)
                return
            self.owner._record(method, path, f"forwarded {response.status}")
            self._relay_response(method, response)
        finally:
            upstream.close()

    # -- response side --------------------------------------------------------------------------

    def _relay_response(self, method: str, response: http.client.HTTPResponse) -> None:
        self.send_response_only(response.status, response.reason)
        chunked = False
        has_length = False
        for name, value in response.msg.items():
            lname = name.lower()
            if lname == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif lname == "content-length":
                has_length = True
            elif lname == "connection" and "close" in value.lower():
                self.close_connection = True
            self.send_header(name, value)
        self.end_headers()
        no_body = method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        if no_body:
            return
        if not chunked and not has_length:
            self.close_connection = True  # the body ends when the connection does
        while True:
            data = response.read(_COPY_SIZE)
            if not data:
                break
            if chunked:
                # http.client decoded the upstream chunks; re-frame them for our client.
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            else:
                self.wfile.write(data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _relay_cut(self, response: http.client.HTTPResponse, after_bytes: int) -> None:
        body = response.read()
        self.send_response_only(response.status, response.reason)
        for name, value in response.msg.items():
            if name.lower() not in ("transfer-encoding", "connection"):
                self.send_header(name, value)
        if "content-length" not in {name.lower() for name in response.msg.keys()}:
            self.send_header("Content-Length", str(len(body)))  # promise the whole body ...
        self.end_headers()
        self.wfile.write(body[:after_bytes])  # ... deliver part of it ...
        self.wfile.flush()
        self._drop_connection()  # ... and reset the connection

    def _relay_rewritten(self, response: http.client.HTTPResponse, rewriter: Callable[[str], str]) -> None:
        body = rewriter(response.read().decode("utf-8")).encode("utf-8")
        self.send_response_only(response.status, response.reason)
        for name, value in response.msg.items():
            if name.lower() not in ("transfer-encoding", "content-length", "etag", "content-md5"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_error_xml(self, status: int, path: str) -> None:
        code, message = _ERROR_CODES.get(status, ("InjectedFault", "Fault injected by FaultProxy."))
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
            f"<Resource>{escape(path)}</Resource><RequestId>faultproxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "faultproxy")
        if status in (429, 503):
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _drop_connection(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees a reset, not a polite end of stream.
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass
        self.close_connection = True


def refused_url() -> str:
    """An http:// URL on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextmanager
def blackhole_url() -> Iterator[str]:
    """An http:// URL whose TCP handshake never completes (connect blocks until the client's timeout).

    A listening socket that never accepts, with its backlog filled: the kernel then drops new SYNs, as a
    firewall that silently drops packets does.
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
