"""Webhooks: Standard Webhooks signatures, retries with backoff, throttling, never blocking the server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from comfyd.backends.webhook_guard import WebhookPolicy
from comfyd.backends.webhooks import WebhookNotifier, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example of the Standard Webhooks specification.
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_rejects_tampering_and_stale_timestamps() -> None:
    now = int(time.time())
    body = b'{"id": "x"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(SECRET, "msg_1", now, body)}
    assert verify(SECRET, headers, body)
    assert not verify(SECRET, headers, b'{"id": "y"}')
    assert not verify("whsec_" + "QUJD", headers, body)
    old = now - 3600
    stale = {**headers, "webhook-timestamp": str(old), "webhook-signature": sign(SECRET, "msg_1", old, body)}
    assert not verify(SECRET, stale, body)


@dataclass
class Receiver:
    """A local webhook endpoint: fails the first `fail_first` deliveries of each event kind with 500."""

    fail_first: dict[str, int] = field(default_factory=dict)
    hang_s: float = 0.0
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def deliveries(self, status: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            items = [(h, b, json.loads(b), code) for h, b, code in self.received]
        return [{"headers": h, "raw": raw, "body": body, "code": code}
                for h, raw, body, code in items if status is None or body["status"] == status]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["content-length"]))
            status = json.loads(body)["status"]
            if state.hang_s:
                time.sleep(state.hang_s)
            with state.lock:
                seen = sum(1 for _, b, _ in state.received if json.loads(b)["status"] == status)
                code = 500 if seen < state.fail_first.get(status, 0) else 200
                state.received.append(({k.lower(): v for k, v in self.headers.items()}, body, code))
            self.send_response(code)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_prediction_webhooks_are_signed_and_retried(start_server, workflow, receiver: Receiver) -> None:
    receiver.fail_first = {"succeeded": 2}
    srv = start_server(webhook_secret=SECRET, webhook_allowed_hosts=["127.0.0.1"])  # the receiver is local
    srv.services.notifier.backoff_s = 0.05  # keep the test fast; the default is 1 s
    body = {"input": {"workflow_json": workflow(0.0, 1)}, "webhook": receiver.url}
    with srv.client() as http:
        answer = http.put("/predictions/hooked", json=body, headers={"Prefer": "respond-async"})
        assert answer.status_code == 202
    wait_for(lambda: any(d["code"] == 200 for d in receiver.deliveries("succeeded")))
    completed = receiver.deliveries("succeeded")
    assert [d["code"] for d in completed] == [500, 500, 200]  # retried until accepted
    assert len({d["headers"]["webhook-id"] for d in completed}) == 1  # one message, three attempts
    for delivery in receiver.deliveries():
        assert delivery["headers"]["webhook-signature"].startswith("v1,")
        assert verify(SECRET, delivery["headers"], delivery["raw"])
        assert not verify(SECRET, delivery["headers"], delivery["raw"] + b" ")
    statuses = [d["body"]["status"] for d in receiver.deliveries()]
    assert statuses[0] == "processing"  # the start event
    final = completed[-1]["body"]
    assert final["id"] == "hooked" and final["output"] and final["output"][0].endswith("type=output")


def test_events_filter_and_unreachable_webhooks_never_block(start_server, workflow, receiver: Receiver) -> None:
    receiver.hang_s = 2.0  # a receiver that takes its time
    srv = start_server(webhook_allowed_hosts=["127.0.0.1"])
    srv.services.notifier.backoff_s = 0.05
    srv.services.notifier.max_attempts = 2
    body = {"input": {"workflow_json": workflow(0.0, 1)}, "webhook": receiver.url,
            "webhook_events_filter": ["completed"]}
    dead = {"input": {"workflow_json": workflow(0.0, 1, "dead")}, "webhook": "http://127.0.0.1:9/nowhere"}
    with srv.client() as http:
        started = time.monotonic()
        slow = http.post("/predictions", json=body)
        unreachable = http.post("/predictions", json=dead)
        assert time.monotonic() - started < 1.8
        assert slow.status_code == unreachable.status_code == 200
        assert slow.json()["status"] == unreachable.json()["status"] == "succeeded"
    wait_for(lambda: len(receiver.deliveries()) == 1, timeout=10)
    assert receiver.deliveries()[0]["body"]["status"] == "succeeded"  # only `completed` was asked for


def test_output_events_are_throttled_and_completed_supersedes() -> None:
    sent: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200)

    notifier = WebhookNotifier(None, transport=httpx.MockTransport(handler), throttle_s=0.3,
                               policy=WebhookPolicy(allow_private=True))  # no real host behind the mock
    attributes = {"webhook": "http://receiver/hook", "job_id": "j1"}
    try:
        notifier.publish("job.output", {"id": "j1", "status": "processing", "n": 0}, attributes)
        wait_for(lambda: len(sent) == 1)
        for i in range(1, 10):
            notifier.publish("job.output", {"id": "j1", "status": "processing", "n": i}, attributes)
        assert notifier.flush(5)
        assert [p["n"] for p in sent] == [0, 9]  # the first at once, then the newest after the throttle
        notifier.publish("job.output", {"id": "j1", "status": "processing", "n": 10}, attributes)
        notifier.publish("job.completed", {"id": "j1", "status": "succeeded"}, attributes)
        notifier.publish("job.output", {"id": "j1", "status": "processing", "n": 11}, attributes)
        assert notifier.flush(5)
        assert sent[-1]["status"] == "succeeded" and all(p.get("n") != 11 for p in sent)
        notifier.publish("job.completed", {"id": "j2", "status": "failed"}, {"job_id": "j2"})  # no webhook
        assert notifier.flush(1) and len(sent) == 3
    finally:
        notifier.close()


def test_client_errors_are_not_retried_but_server_errors_are() -> None:
    calls: list[int] = []
    codes = iter([400, 503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        code = next(codes)
        calls.append(code)
        return httpx.Response(code, headers={"retry-after": "0"} if code == 503 else None)

    notifier = WebhookNotifier("raw-secret", transport=httpx.MockTransport(handler), backoff_s=0.01,
                               policy=WebhookPolicy(allow_private=True))
    try:
        notifier.publish("job.completed", {"id": "a", "status": "failed"}, {"webhook": "http://r/a", "job_id": "a"})
        assert notifier.flush(5)
        notifier.publish("job.completed", {"id": "b", "status": "failed"}, {"webhook": "http://r/b", "job_id": "b"})
        assert notifier.flush(5)
    finally:
        notifier.close()
    assert calls == [400, 503, 200] and notifier.failed == 1 and notifier.delivered == 1
