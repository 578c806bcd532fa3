"""Test helpers for the frame sink: a moto S3 server on loopback and a fault-injecting proxy.

The proxy sits between boto3 and moto (both real, over real HTTP) and produces the faults moto
cannot: bursts of 5xx, a full outage (503s or refused connections), responses dropped *after* the
server stored the object, and latency. It records every request's headers so tests can assert
what boto3 actually sent. Everything binds to 127.0.0.1 and is stopped by its owner.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from ray_dit.api import GenerationResult, Timings
from ray_dit.config import StorageSettings

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
ACCESS_KEY = "AKIARAYDITTESTKEY042"
SECRET_KEY = "rAyDiT/sEcReT+kEy/0123456789abcdefXYZ"


# ---------------------------------------------------------------------------------------------
# moto


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A real moto S3 server on 127.0.0.1 (free port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def admin_client(endpoint: str) -> Any:
    """A plain boto3 client for test setup and inspection (not the code under test)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
        config=Config(
            request_checksum_calculation="when_required", response_checksum_validation="when_required"
        ),
    )


def new_bucket(endpoint: str) -> str:
    name = f"rd-{uuid.uuid4().hex[:16]}"
    client = admin_client(endpoint)
    client.create_bucket(Bucket=name)
    client.close()
    return name


def settings_for(endpoint: str, bucket: str, spool_dir: str, **changes: Any) -> StorageSettings:
    """S3 settings with short timeouts and backoff, so fault tests stay fast."""
    values: dict[str, Any] = {
        "storage_type": "s3",
        "bucket": bucket,
        "endpoint_url": endpoint,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "spool_dir": spool_dir,
        "max_attempts": 2,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "backoff_max_s": 1.0,
        "manifest_flush_s": 1.0,
        "url_wait_s": 2.0,
    }
    values.update(changes)
    return StorageSettings(**values)


def image_result(
    request_id: str, n: int = 1, size: tuple[int, int] = (24, 32), seed: int = 0
) -> GenerationResult:
    rng = np.random.default_rng(seed)
    height, width = size
    frames = rng.integers(0, 256, size=(n, 1, height, width, 3), dtype=np.uint8)
    return GenerationResult(
        frames=frames,
        kind="image",
        seed=seed,
        steps=4,
        request_id=request_id,
        timings=Timings(denoise_s=0.01),
    )


def video_result(request_id: str, frames: int = 5, size: tuple[int, int] = (16, 16)) -> GenerationResult:
    rng = np.random.default_rng(1)
    height, width = size
    data = rng.integers(0, 256, size=(1, frames, height, width, 3), dtype=np.uint8)
    return GenerationResult(frames=data, kind="video", seed=1, steps=4, fps=8, request_id=request_id)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ---------------------------------------------------------------------------------------------
# fault proxy


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body_bytes: int
    outcome: str  # forwarded | failed | dropped | refused | down


@dataclass
class _Plan:
    fail_next: int = 0
    fail_status: int = 503
    fail_code: str = "SlowDown"
    echo_credentials: bool = False
    down: str | None = None  # None | "503" | "reset"
    down_until: float = 0.0
    drop_next: int = 0
    latency_s: float = 0.0
    latency_after_forward: bool = False
    stall_path: str | None = None  # requests whose path contains this hang, then get a reset
    stall_s: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        return

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        action, plan = proxy._decide()
        if action == "forwarded" and plan.stall_path and plan.stall_path in self.path:
            action = "stalled"
        headers = {k.lower(): v for k, v in self.headers.items()}
        proxy._record(RecordedRequest(self.command, self.path, headers, len(body), action))
        if action == "refused":
            self._abort()
            return
        if action == "stalled":
            proxy._sleep(plan.stall_s)
            self._abort()
            return
        if action in ("failed", "down"):
            self._send_error(plan, headers)
            return
        if plan.latency_s and not plan.latency_after_forward and proxy._sleep(plan.latency_s):
            self._abort()
            return
        status, reason, upstream_headers, data = proxy._forward(self.command, self.path, headers, body)
        if action == "dropped":
            self._abort()
            return
        if plan.latency_s and plan.latency_after_forward and proxy._sleep(plan.latency_s):
            self._abort()
            return
        self._relay(status, reason, upstream_headers, data)

    def _relay(self, status: int, reason: str, upstream_headers: list[tuple[str, str]], data: bytes) -> None:
        """Send the server's answer back to the client."""
        try:
            self.send_response(status, reason)
            for name, value in upstream_headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = len(data)
            if self.command == "HEAD":
                length = int(dict((k.lower(), v) for k, v in upstream_headers).get("content-length", 0))
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. its read timeout fired during latency)
            self.close_connection = True

    def _send_error(self, plan: _Plan, headers: dict[str, str]) -> None:
        extra = ""
        if plan.echo_credentials:  # like AWS SignatureDoesNotMatch: echoes what it was sent
            extra = (
                f"<AWSAccessKeyId>{ACCESS_KEY}</AWSAccessKeyId>"
                f"<StringToSign>{headers.get('authorization', '')}</StringToSign>"
            )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{plan.fail_code}</Code><Message>injected by the fault proxy</Message>"
            f"{extra}<RequestId>fault</RequestId></Error>"
        ).encode()
        try:
            self.send_response(plan.fail_status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _abort(self) -> None:
        """Reset the connection without answering (SO_LINGER 0 makes close send a RST)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _ProxyServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.sockets.discard(request)
        super().shutdown_request(request)


class FaultProxy:
    """HTTP reverse proxy on 127.0.0.1 in front of ``upstream`` with scriptable faults."""

    def __init__(self, upstream: str) -> None:
        host_port = upstream.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        self._upstream = (host, int(port or 80))
        self._plan = _Plan()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.requests: list[RecordedRequest] = []
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        with self._server.sockets_lock:
            open_sockets = list(self._server.sockets)
        for sock in open_sockets:  # wake handler threads parked on keep-alive reads
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # scripting ---------------------------------------------------------------------------------

    def fail_next(
        self, n: int, status: int = 503, code: str = "SlowDown", echo_credentials: bool = False
    ) -> None:
        with self._lock:
            self._plan.fail_next = n
            self._plan.fail_status, self._plan.fail_code = status, code
            self._plan.echo_credentials = echo_credentials

    def set_down(self, mode: str | None, seconds: float | None = None) -> None:
        """``"503"``: answer everything 503; ``"reset"``: reset every connection; None: back up.
        With ``seconds``, the outage ends by itself."""
        with self._lock:
            self._plan.down = mode
            self._plan.down_until = time.monotonic() + seconds if seconds else float("inf")

    def drop_next(self, n: int) -> None:
        """Forward the next ``n`` requests to the server, then reset instead of answering."""
        with self._lock:
            self._plan.drop_next = n

    def set_latency(self, seconds: float, after_forward: bool = False) -> None:
        with self._lock:
            self._plan.latency_s = seconds
            self._plan.latency_after_forward = after_forward

    def stall_matching(self, path_part: str | None, seconds: float = 0.0) -> None:
        """Requests whose path contains ``path_part`` hang ``seconds`` (unanswered), then reset."""
        with self._lock:
            self._plan.stall_path, self._plan.stall_s = path_part, seconds

    def count(self, outcome: str, method: str | None = None) -> int:
        with self._lock:
            return sum(
                1 for r in self.requests if r.outcome == outcome and (method is None or r.method == method)
            )

    # internals ---------------------------------------------------------------------------------

    def _decide(self) -> tuple[str, _Plan]:
        with self._lock:
            plan = self._plan
            snapshot = _Plan(**vars(plan))
            if plan.down and time.monotonic() < plan.down_until:
                return ("refused" if plan.down == "reset" else "down"), snapshot
            if plan.down:
                plan.down = None
            if plan.fail_next > 0:
                plan.fail_next -= 1
                return "failed", snapshot
            if plan.drop_next > 0:
                plan.drop_next -= 1
                return "dropped", snapshot
            return "forwarded", snapshot

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _sleep(self, seconds: float) -> bool:
        """Sleep, but wake at stop; True if stopping."""
        return self._stopping.wait(seconds)

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            send = {k: v for k, v in headers.items() if k not in HOP_BY_HOP and k != "expect"}
            if body or method in ("PUT", "POST"):
                send["content-length"] = str(len(body))
            conn.request(method, path, body=body or None, headers=send)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------------
# a sink in another process (for kill tests)


def run_sink_child(settings: StorageSettings, request_ids: list[str], ready: Any) -> None:
    """Child-process body: store outputs, report, then idle while the uploader works."""
    from ray_dit.sink import FrameSink

    sink = FrameSink(settings, check_bucket=False, backoff_base_s=0.1, rescan_s=0.5)
    keys = []
    for request_id in request_ids:
        keys.extend(o.key for o in sink.store(image_result(request_id, n=1, seed=len(keys))))
    ready.put(keys)
    time.sleep(120)  # killed long before this ends
    sink.close()


def kill_process(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def hold_claim_child(root: str, name: str, ready: Any) -> None:
    """Child-process body: claim one spool entry, report, and hold it until killed."""
    from ray_dit.sink.spool import Spool

    claim = Spool(root, 1 << 30).claim(name)
    ready.put(claim is not None)
    time.sleep(120)


def drain_child(root: str, out: Any) -> None:
    """Child-process body: claim-and-remove every entry it can, report the names it removed."""
    from ray_dit.sink.spool import Spool

    spool = Spool(root, 1 << 30)
    removed = []
    for entry in spool.pending():
        claim = spool.claim(entry.name)
        if claim is None:
            continue
        current = spool.get(entry.name)
        if current is not None and spool.remove(current, claim):
            removed.append(entry.name)
        claim.release()
    out.put(removed)
