"""Webhook URLs: public addresses only unless allowed (comfyd.backends.webhook_guard)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from comfyd.backends.webhook_guard import (
    ForbiddenWebhook,
    PinnedBackend,
    UnresolvableWebhook,
    WebhookPolicy,
    pinned_transport,
)
from comfyd.backends.webhooks import WebhookNotifier


def fixed(mapping: dict[str, list[str]]):
    def resolver(host: str, port: int) -> list[str]:
        if host not in mapping:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return mapping[host]

    return resolver


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1:8188/prompt", "loopback"),
        ("http://localhost./x", "loopback"),
        ("http://10.1.2.3/x", "private"),
        ("http://172.16.0.9/x", "private"),
        ("http://192.168.1.1/x", "private"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://[::1]/x", "loopback"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://[fd00::1]/x", "private"),
        ("http://[::ffff:169.254.169.254]/x", "link-local"),
        ("http://224.0.0.1/x", "multicast"),
        ("http://100.64.0.1/x", "non-public"),
        ("http://240.0.0.1/x", "private|reserved"),  # Python files 240/4 under both
        ("http://[::ffff:127.0.0.1]/x", "loopback"),
        ("http://[fc00::5]/x", "private"),
        ("http://[ff02::1]/x", "multicast"),
        ("http://[::]/x", "unspecified"),
        ("http://[64:ff9b::a9fe:a9fe]/x", "link-local"),  # NAT64 form of 169.254.169.254
        ("http://[2002:a00:1::1]/x", "private"),  # 6to4 form of 10.0.0.1
    ],
)
def test_non_public_addresses_are_refused(url: str, kind: str) -> None:
    policy = WebhookPolicy(resolver=fixed({"localhost": ["127.0.0.1", "::1"]}))
    with pytest.raises(ForbiddenWebhook, match=kind):
        policy.check(url)


def test_public_addresses_pass() -> None:
    policy = WebhookPolicy(resolver=fixed({"hooks.example.com": ["93.184.215.14", "2606:2800:21f:cb07::1"]}))
    policy.check("https://hooks.example.com/comfyd")
    policy.check("http://8.8.8.8:8080/x")


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    policy = WebhookPolicy(resolver=fixed({"rebind.example": ["93.184.215.14", "10.0.0.5"]}))
    with pytest.raises(ForbiddenWebhook, match=r"resolves to 10\.0\.0\.5, a private address"):
        policy.check("https://rebind.example/hook")


def test_unresolvable_hosts_and_bad_urls_are_refused() -> None:
    policy = WebhookPolicy(resolver=fixed({}))
    with pytest.raises(ForbiddenWebhook, match="does not resolve"):
        policy.check("https://nowhere.invalid/hook")
    for url in ("file:///etc/passwd", "ftp://example.com/x", "http:///path", "https://example.com:99999/x"):
        with pytest.raises(ForbiddenWebhook):
            policy.check(url)


def test_allowed_hosts_names_patterns_and_networks() -> None:
    resolver = fixed({"hooks.internal": ["10.0.0.7"], "a.svc.internal": ["10.9.0.1"], "other": ["10.0.0.8"]})
    policy = WebhookPolicy(allowed_hosts=("hooks.internal", "*.svc.internal", "192.168.0.0/16", "::1"),
                           resolver=resolver)
    policy.check("http://hooks.internal/x")
    policy.check("http://HOOKS.internal./x")
    policy.check("http://a.svc.internal/x")
    policy.check("http://192.168.4.4/x")
    policy.check("http://[::1]:8000/x")
    with pytest.raises(ForbiddenWebhook, match="COMFYD_WEBHOOK_ALLOWED_HOSTS"):
        policy.check("http://other/x")
    with pytest.raises(ForbiddenWebhook):
        policy.check("http://127.0.0.1/x")  # ::1 allowed does not allow 127.0.0.1


def test_allow_private_allows_everything_http() -> None:
    policy = WebhookPolicy(allow_private=True, resolver=fixed({}))
    policy.check("http://169.254.169.254/")
    with pytest.raises(ForbiddenWebhook):
        policy.check("gopher://x/")


def test_settings_parse_a_comma_list() -> None:
    from comfyd.settings import Settings

    settings = Settings(webhook_allowed_hosts="127.0.0.1, hooks.internal")
    assert WebhookPolicy.from_settings(settings).allowed_hosts == ("127.0.0.1", "hooks.internal")


def test_the_sender_checks_again_and_never_calls_a_forbidden_host() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        return httpx.Response(200)

    # The name resolved publicly at submission; by delivery time it points inside.
    notifier = WebhookNotifier(None, transport=httpx.MockTransport(handler),
                               policy=WebhookPolicy(resolver=fixed({"rebind.example": ["169.254.169.254"]})))
    try:
        notifier.publish("job.completed", {"id": "j1"}, {"webhook": "http://rebind.example/hook", "job_id": "j1"})
        assert notifier.flush(5)
        assert calls == [] and notifier.failed == 1 and notifier.delivered == 0
    finally:
        notifier.close()


def _prediction(url: str, workflow) -> dict:
    return {"input": {"workflow_json": workflow(0.0, 1)}, "webhook": url}


def test_forbidden_webhooks_get_422_naming_the_field(start_server, workflow) -> None:
    srv = start_server()
    with srv.client() as http:
        for path, body, location in [
            ("/predictions", _prediction("http://169.254.169.254/latest/meta-data/", workflow), "webhook"),
            ("/v1/generate", {"prompt": "x", "webhook": "http://127.0.0.1:9/hook"}, "webhook"),
            ("/prompt", {"prompt": workflow(0.0, 1), "extra_data": {"webhook": "http://10.0.0.1/h"}},
             "extra_data.webhook"),
        ]:
            answer = http.post(path, json=body)
            assert answer.status_code == 422, (path, answer.text)
            text = answer.text
            assert location in text and "public addresses only" in text, text
        assert http.get("/queue").json()["queue_pending"] == []  # nothing was queued


def test_an_allowed_local_receiver_still_gets_its_webhook(start_server, workflow) -> None:
    received: list[bytes] = []
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        srv = start_server(webhook_allowed_hosts=["127.0.0.1"])
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        with srv.client() as http:
            answer = http.post("/predictions", json={**_prediction(url, workflow), "webhook_events_filter": ["completed"]})
            assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received and b'"succeeded"' in received[0]
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- messages, real resolution (socket.getaddrinfo faked), send-time behaviour ------------------

REAL_GETADDRINFO = socket.getaddrinfo


def fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[list[str]]]) -> list[str]:
    """Patch socket.getaddrinfo: names in `table` get its answers in turn (the last one repeats;
    an empty answer fails); anything else (numeric hosts) resolves as usual. Returns the names asked."""
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> list:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in table:
            return REAL_GETADDRINFO(host, port, family, type, proto, flags)
        asked.append(name)
        answers = table[name]
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        port = int(port or 0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answer]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_messages_say_what_the_host_is_or_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"meta.example": [["169.254.169.254"]], "mapped.example": [["::ffff:10.0.0.1"]]})
    policy = WebhookPolicy()
    with pytest.raises(ForbiddenWebhook) as literal:
        policy.check("http://169.254.169.254/latest/meta-data/")
    assert str(literal.value).startswith("webhook host '169.254.169.254' is a link-local address;")
    with pytest.raises(ForbiddenWebhook) as named:
        policy.check("http://meta.example/hook")
    assert "resolves to 169.254.169.254, a link-local address" in str(named.value)
    assert "COMFYD_WEBHOOK_ALLOWED_HOSTS" in str(named.value)
    with pytest.raises(ForbiddenWebhook, match=r"resolves to ::ffff:a00:1 \(10\.0\.0\.1\), a private address"):
        policy.check("http://mapped.example/hook")


def test_the_default_resolver_checks_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = fake_dns(monkeypatch, {"public.example": [["93.184.215.14", "2606:2800:21f:cb07::1"]],
                                   "mixed.example": [["93.184.215.14", "fd12::1"]], "gone.example": [[]]})
    policy = WebhookPolicy()
    policy.check("https://public.example/hook")
    with pytest.raises(ForbiddenWebhook, match="fd12::1, a private address"):
        policy.check("https://mixed.example/hook")
    with pytest.raises(UnresolvableWebhook, match="'gone.example' does not resolve"):
        policy.check("https://gone.example/hook")
    assert asked == ["public.example", "mixed.example", "gone.example"]


def test_an_allowed_network_covers_the_mapped_form_and_ipv6() -> None:
    policy = WebhookPolicy(allowed_hosts=("10.0.0.0/8", "fd00::/8"), resolver=fixed({"n": ["::ffff:10.1.1.1", "fd00::9"]}))
    policy.check("http://n/x")
    policy.check("http://[::ffff:10.2.2.2]/x")
    with pytest.raises(ForbiddenWebhook):
        policy.check("http://[fe80::1]/x")


class Receiver:
    """A webhook endpoint on 127.0.0.1 recording (Host header, body) of each POST."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                received.append((self.headers["host"], self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def _deliver(notifier: WebhookNotifier, url: str) -> None:
    try:
        notifier.publish("job.completed", {"id": "j1", "status": "succeeded"}, {"webhook": url, "job_id": "j1"})
        assert notifier.flush(10)
    finally:
        notifier.close()


@pytest.mark.parametrize("pinned", [True, False])
def test_dns_rebinding_after_the_check_is_caught_at_connect(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, local_receiver: Receiver, pinned: bool
) -> None:
    # The name answers a public address to the check, then loopback to whoever resolves next.
    fake_dns(monkeypatch, {"rebind.example": [["93.184.215.14"], ["127.0.0.1"]]})
    transport = None if pinned else httpx.HTTPTransport()  # control: httpx resolving on its own
    notifier = WebhookNotifier(None, transport=transport, max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="comfyd.webhooks"):
        _deliver(notifier, f"http://rebind.example:{local_receiver.port}/hook")
    if pinned:
        assert local_receiver.received == [] and notifier.failed == 1
        assert any("not sent" in r.getMessage() and "127.0.0.1, a loopback" in r.getMessage() for r in caplog.records)
    else:  # the window the pinning closes: an unpinned client lands on loopback
        assert len(local_receiver.received) == 1


def test_a_pinned_connection_keeps_the_host_header(monkeypatch: pytest.MonkeyPatch, local_receiver: Receiver) -> None:
    asked = fake_dns(monkeypatch, {"hooks.internal": [["127.0.0.1"]]})
    notifier = WebhookNotifier(None, policy=WebhookPolicy(allowed_hosts=("127.0.0.0/8",)))
    _deliver(notifier, f"http://hooks.internal:{local_receiver.port}/hook")
    assert notifier.delivered == 1
    [(host, body)] = local_receiver.received
    assert host == f"hooks.internal:{local_receiver.port}" and b'"succeeded"' in body
    assert asked.count("hooks.internal") == 2  # the pre-check and the connection, nothing else


class _TlsRecordingStream(httpcore.MockStream):
    server_hostname: str | None = None

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        _TlsRecordingStream.server_hostname = server_hostname
        return self


class _RecordingBackend(httpcore.MockBackend):
    def __init__(self) -> None:
        super().__init__([b"HTTP/1.1 204 No Content\r\n\r\n"])
        self.connected: list[str] = []

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        self.connected.append(host)
        return _TlsRecordingStream(list(self._buffer))


def test_pinned_https_connects_to_the_checked_address_and_verifies_the_name() -> None:
    policy = WebhookPolicy(resolver=fixed({"hooks.example": ["93.184.215.14"]}))
    transport = pinned_transport(policy)
    backend = transport._pool._network_backend
    assert isinstance(backend, PinnedBackend)
    backend.inner = recording = _RecordingBackend()
    with httpx.Client(transport=transport) as client:
        assert client.post("https://hooks.example/hook", content=b"{}").status_code == 204
    assert recording.connected == ["93.184.215.14"]
    assert _TlsRecordingStream.server_hostname == "hooks.example"


def test_an_unresolvable_host_at_send_time_is_retried() -> None:
    answers = iter([OSError("temporary failure in name resolution")])

    def flaky(host: str, port: int) -> list[str]:
        for error in answers:
            raise error
        return ["93.184.215.14"]

    calls: list[str] = []
    notifier = WebhookNotifier(None, transport=httpx.MockTransport(lambda r: calls.append(str(r.url)) or httpx.Response(200)),
                               backoff_s=0.01, policy=WebhookPolicy(resolver=flaky))
    _deliver(notifier, "https://hooks.example/hook")
    assert calls == ["https://hooks.example/hook"] and notifier.delivered == 1 and notifier.failed == 0


def test_unresolvable_and_named_private_hosts_get_422(start_server, workflow, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"gone.example": [[]], "meta.example": [["169.254.169.254"]]})
    srv = start_server()
    with srv.client() as http:
        gone = http.post("/predictions", json=_prediction("https://gone.example/hook", workflow))
        meta = http.put("/predictions/p1", json=_prediction("http://meta.example/hook", workflow))
    assert gone.status_code == 422, gone.text
    assert gone.json()["error"]["details"] == {"location": "webhook"}
    assert "'gone.example' does not resolve" in gone.json()["error"]["message"]
    assert meta.status_code == 422, meta.text
    message = meta.json()["error"]["message"]
    assert "resolves to 169.254.169.254, a link-local address" in message and "COMFYD_WEBHOOK_ALLOWED_HOSTS" in message
    assert srv.job("p1") is None


def test_a_webhook_refused_at_send_time_does_not_fail_the_job(
    start_server, workflow, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Public when submitted, the metadata address by the time the job ends.
    fake_dns(monkeypatch, {"rebind.example": [["93.184.215.14"], ["169.254.169.254"]]})
    srv = start_server()
    body = {**_prediction("http://rebind.example/hook", workflow), "webhook_events_filter": ["completed"]}
    with caplog.at_level(logging.WARNING, logger="comfyd.webhooks"), srv.client() as http:
        answer = http.put("/predictions/p2", json=body)
        assert answer.status_code == 200 and answer.json()["status"] == "succeeded", answer.text
        notifier = srv.services.notifier
        assert notifier.flush(10)
        assert notifier.failed == 1 and notifier.delivered == 0
        assert http.get("/predictions/p2").json()["status"] == "succeeded"
    assert any("not sent" in r.getMessage() and "link-local" in r.getMessage() for r in caplog.records)
