"""A small fault-injecting HTTP proxy to put between boto3 and a local AWS endpoint (moto).

Point `AWS_ENDPOINT_URL` at the proxy and the proxy at the endpoint; then make chosen requests
fail the way AWS fails: S3's 503 SlowDown, a throttling error in the service's own protocol, a
reset connection, a plain 5xx, or a delay. Everything else is forwarded unchanged.

    with FaultProxy("http://127.0.0.1:5000") as proxy:
        proxy.add(Fault("slowdown", service="s3", method="PUT", times=4))
        ...  # boto3 with AWS_ENDPOINT_URL=proxy.url

Requests are told apart by the SigV4 credential scope (service and region) and the operation
(X-Amz-Target, the query `Action`, the RPC-v2 path, or for S3 just the HTTP method). It answers
`Expect: 100-continue` itself (botocore sends it with every S3 upload) and can refuse the body at
that point, as S3 does. Standard library only; also usable by hand: `python -m
comfyd.backends.faultproxy UPSTREAM --port 5001`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

FaultKind = Literal["slowdown", "throttle", "reset", "error", "delay"]
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "expect", "content-length",
}


@dataclass
class Fault:
    """One failure rule. Empty matchers match everything; `times` None = until removed/`until`."""

    kind: FaultKind
    service: str | None = None  # SigV4 service name: s3, dynamodb, sqs, sns, monitoring, sts
    operation: str | None = None  # PutItem, SendMessage, Publish, PutMetricData; S3: not used
    method: str | None = None  # HTTP method, e.g. PUT for S3 uploads
    region: str | None = None
    body_contains: str | None = None  # only requests whose body holds this text (e.g. a status value)
    times: int | None = None  # fail this many matching requests, then stop matching
    until: float | None = None  # time.monotonic() deadline after which the rule stops matching
    delay_s: float = 0.0  # "delay": pause before forwarding; others: pause before failing
    status: int = 500  # "error": the status to answer
    # Forward the request first (it takes effect upstream), then answer with the fault: an
    # ambiguous failure, as when AWS applied a write but the answer was lost or a 500.
    applied: bool = False
    code: str | None = None  # "error": an AWS error code, answered in the service's protocol
    hits: int = 0

    def active(self) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.until is None or time.monotonic() < self.until

    def matches(self, info: RequestInfo) -> bool:
        return (
            self.active()
            and (self.service is None or self.service == info.service)
            and (self.operation is None or self.operation == info.operation)
            and (self.method is None or self.method == info.method)
            and (self.region is None or self.region == info.region)
            and (self.body_contains is None or self.body_contains.encode() in info.body)
        )


@dataclass(frozen=True)
class RequestInfo:
    method: str
    path: str
    service: str
    region: str
    operation: str
    body: bytes = b""


@dataclass
class ProxyStats:
    forwarded: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, operation)
    injected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, service)
    continued: int = 0  # `Expect: 100-continue` answered with 100 Continue
    refused_before_body: int = 0  # `Expect: 100-continue` answered with a fault instead


def _credential_scope(auth_header: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(region, service) from `Credential=AKID/date/region/service/aws4_request`."""
    credential = ""
    if "Credential=" in auth_header:
        credential = auth_header.split("Credential=", 1)[1].split(",", 1)[0]
    elif "X-Amz-Credential" in query:  # presigned URL
        credential = query["X-Amz-Credential"][0]
    parts = credential.strip().split("/")
    if len(parts) >= 5:
        return parts[2], parts[3]
    return "", ""


def _operation(service: str, method: str, path: str, headers: dict[str, str], body: bytes) -> str:
    target = headers.get("x-amz-target", "")
    if target:
        return target.rsplit(".", 1)[-1]
    if "/operation/" in path:  # Smithy RPC v2 (CloudWatch's CBOR protocol)
        return path.rsplit("/operation/", 1)[1].split("?", 1)[0]
    if service == "s3":
        return method
    params = urllib.parse.parse_qs(body.decode("latin-1")) if body else {}
    params.update(urllib.parse.parse_qs(urllib.parse.urlsplit(path).query))
    return params.get("Action", [""])[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as boto3 expects
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class name
        pass

    # --- fault handling ------------------------------------------------------------------
    def _info(self, body: bytes) -> RequestInfo:
        split = urllib.parse.urlsplit(self.path)
        region, service = _credential_scope(self.headers.get("Authorization", ""), urllib.parse.parse_qs(split.query))
        headers = {k.lower(): v for k, v in self.headers.items()}
        return RequestInfo(self.command, self.path, service, region,
                           _operation(service, self.command, self.path, headers, body), body)

    def _fail(self, fault: Fault, info: RequestInfo) -> None:
        self.server.proxy._count_injected(fault, info)
        if fault.delay_s:
            time.sleep(fault.delay_s)
        if fault.kind == "reset":
            # SO_LINGER 0: close with RST, as a dropped load-balancer connection looks.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status, content_type, body, extra = _fault_response(fault, info)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")  # the unread body (if any) must not be parsed
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def handle_expect_100(self) -> bool:
        # Refuse the upload before its body is sent, as S3 does; else invite the body.
        info = self._info(b"")
        fault = self.server.proxy._match(info, before_body=True)
        if fault is not None:
            self.server.proxy._count_expect(refused=True)
            self._fail(fault, info)
            return False
        self.server.proxy._count_expect(refused=False)
        return super().handle_expect_100()

    # --- forwarding ----------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        info = self._info(body)
        fault = self.server.proxy._match(info, before_body=False)
        if fault is not None and fault.kind != "delay":
            if fault.applied:
                self._send_upstream(body)
            self._fail(fault, info)
            return
        if fault is not None:
            self.server.proxy._count_injected(fault, info)
            time.sleep(fault.delay_s)
        self._forward(body, info)

    def _send_upstream(self, body: bytes) -> None:
        """Deliver the request upstream and drop the answer (for `applied` faults)."""
        upstream = self.server.proxy.upstream
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            conn.getresponse().read()
        finally:
            conn.close()

    def _forward(self, body: bytes, info: RequestInfo) -> None:
        upstream = self.server.proxy.upstream
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            reply = conn.getresponse()
            payload = reply.read()
            self.server.proxy._count_forwarded(info)  # before the client can see the answer
            self.send_response(reply.status, reply.reason)
            for name, value in reply.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            # HEAD answers carry the object's length but no body.
            length = reply.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle


def _fault_response(fault: Fault, info: RequestInfo) -> tuple[int, str, bytes, dict[str, str]]:
    """(status, content type, body, extra headers) in the protocol of the failing service."""
    request_id = uuid.uuid4().hex
    if fault.kind == "error" and fault.code is None:
        return fault.status, "text/plain", b"", {}
    if fault.kind == "error":
        code, status, message = fault.code, fault.status, "injected by the fault proxy"
    elif info.service == "s3" or fault.kind == "slowdown":
        code, status, message = "SlowDown", 503, "Please reduce your request rate."
    elif info.service == "dynamodb":
        code, status, message = "ThrottlingException", 400, "Rate of requests exceeds the allowed throughput."
    elif info.service == "monitoring":
        return 503, "text/plain", b"", {}  # CBOR protocol: an empty 503 reads as a transient error
    else:
        code, status, message = "Throttling" if info.service != "sqs" else "ThrottlingException", 400, "Rate exceeded"
    if info.service == "s3":
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>{request_id}</RequestId></Error>")
        return status, "application/xml", body.encode(), {}
    if info.service in ("dynamodb", "sqs"):  # AWS JSON protocol
        namespace = "com.amazonaws.dynamodb.v20120810" if info.service == "dynamodb" else "com.amazonaws.sqs"
        body = json.dumps({"__type": f"{namespace}#{code}", "message": message})
        return status, "application/x-amz-json-1.0", body.encode(), {"x-amzn-query-error": f"{code};Sender"}
    body = (  # AWS query protocol (SNS, STS)
        f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
        f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
    )
    return status, "text/xml", body.encode(), {}


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: FaultProxy


class FaultProxy:
    """A proxy on 127.0.0.1 (free port unless given) in front of `upstream`."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        if self.upstream.scheme != "http" or not self.upstream.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, got {upstream!r}")
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.stats = ProxyStats()
        self._server = _ProxyServer((host, port), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- rules ---------------------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail_for(self, seconds: float, kind: FaultKind = "slowdown", **match: str) -> Fault:
        """Fail every matching request for the next `seconds`."""
        return self.add(Fault(kind, until=time.monotonic() + seconds, **match))  # type: ignore[arg-type]

    def hold(self, kind: FaultKind = "slowdown", **match: str) -> Fault:
        """Fail every matching request until `lift(fault)`: a test lifts it on an observed state
        (a worker logged that it spooled), not after a guessed duration."""
        return self.add(Fault(kind, **match))  # type: ignore[arg-type]

    def lift(self, fault: Fault) -> None:
        """Stop applying one rule (its `hits` stay readable)."""
        with self._lock:
            if fault in self._faults:
                self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.stats = ProxyStats()

    def _match(self, info: RequestInfo, *, before_body: bool) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if before_body and (fault.kind == "delay" or fault.applied):
                    continue  # these apply once the request is complete
                if fault.matches(info):
                    fault.hits += 1
                    return fault
        return None

    def _count_injected(self, fault: Fault, info: RequestInfo) -> None:
        with self._lock:
            self.stats.injected[(fault.kind, info.service)] += 1

    def _count_expect(self, *, refused: bool) -> None:
        with self._lock:
            if refused:
                self.stats.refused_before_body += 1
            else:
                self.stats.continued += 1

    def _count_forwarded(self, info: RequestInfo) -> None:
        with self._lock:
            self.stats.forwarded[(info.service, info.operation)] += 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Forward to UPSTREAM; add faults from Python.")
    parser.add_argument("upstream", help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--slowdown-s3-for", type=float, default=0.0, help="fail S3 with SlowDown for N seconds")
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, port=args.port)
    if args.slowdown_s3_for:
        proxy.fail_for(args.slowdown_s3_for, "slowdown", service="s3")
    print(f"fault proxy on {proxy.url} -> {args.upstream}", flush=True)
    proxy.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
