"""Webhook URLs: public addresses only unless allowed (comfyd.cloud.webhook_guard)."""

from __future__ import annotations

import time

import httpx
import pytest

from comfyd.cloud.webhook_guard import ForbiddenWebhook, WebhookPolicy
from comfyd.cloud.webhooks import WebhookNotifier


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
