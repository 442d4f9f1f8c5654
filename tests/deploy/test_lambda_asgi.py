"""The API Gateway <-> ASGI translation, checked field by field against a recording ASGI app.

The events are the realistic captures in events/ (REST API payload v1, HTTP API payload v2),
varied per case; the app records the scope and body it was given and answers what the case asks.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from comfyd.lambda_asgi import AsgiBridge, ProxyEventError, ProxyRequest

EVENTS = Path(__file__).parent / "events"
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def rest_event(**changes: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / "apigw_rest_v1.json").read_text())
    event.update(changes)
    return event


def http_event(**changes: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / "apigw_http_v2.json").read_text())
    event.update(changes)
    return event


class RecordingApp:
    """An ASGI app that records what it received and answers with a canned response."""

    def __init__(self, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"{}",
                 lifespan: str = "ok") -> None:
        self.status = status
        self.headers = headers or [(b"content-type", b"application/json")]
        self.body = body
        self.lifespan = lifespan  # ok | unsupported | fail
        self.scopes: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.lifespan_events: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            if self.lifespan == "unsupported":
                raise RuntimeError("no lifespan here")
            while True:
                message = await receive()
                self.lifespan_events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    if self.lifespan == "fail":
                        await send({"type": "lifespan.startup.failed", "message": "models missing"})
                        return
                    scope["state"]["started"] = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        half = len(self.body) // 2  # two chunks: the bridge must join them
        await send({"type": "http.response.body", "body": self.body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": self.body[half:], "more_body": False})


def serve(app: RecordingApp, event: dict[str, Any]) -> dict[str, Any]:
    bridge = AsgiBridge(app)
    try:
        request = ProxyRequest.from_event(event)
        return bridge.handle(request).to_event(request.version)
    finally:
        bridge.close()


def header(scope: dict[str, Any], name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k == name]


# --- REST API (v1) ------------------------------------------------------------------------------


def test_rest_event_becomes_an_http_scope() -> None:
    app = RecordingApp()
    result = serve(app, rest_event())
    scope = app.scopes[0]
    assert (scope["method"], scope["path"], scope["raw_path"]) == ("GET", "/history", b"/history")
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert header(scope, b"host") == [b"a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com"]
    assert result["statusCode"] == 200 and result["body"] == "{}" and result["isBase64Encoded"] is False
    assert result["multiValueHeaders"] == {"content-type": ["application/json"]}


def test_rest_query_values_are_decoded_once() -> None:
    app = RecordingApp()
    event = rest_event(
        queryStringParameters={"max_items": "5", "filename": "a b&c=%2e.png"},
        multiValueQueryStringParameters={"max_items": ["5"], "filename": ["a b&c=%2e.png"], "tag": ["x", "y"]},
    )
    serve(app, event)
    query = parse_qs(app.scopes[0]["query_string"].decode(), strict_parsing=True)
    # "%2e" arrived decoded-once already: it must reach the app literally, not as "."
    assert query == {"max_items": ["5"], "filename": ["a b&c=%2e.png"], "tag": ["x", "y"]}


def test_rest_path_keeps_its_encoding_in_raw_path() -> None:
    app = RecordingApp()
    serve(app, rest_event(path="/view/sub%20dir/a%2Fb.png"))
    assert app.scopes[0]["path"] == "/view/sub dir/a/b.png"
    assert app.scopes[0]["raw_path"] == b"/view/sub%20dir/a%2Fb.png"


def test_rest_custom_domain_stage_prefix_is_removed() -> None:
    app = RecordingApp()
    serve(app, rest_event(path="/v1/history/abc"))
    assert app.scopes[0]["path"] == "/history/abc"


def test_rest_base64_body_is_decoded() -> None:
    app = RecordingApp()
    body = json.dumps({"prompt": {"3": {"class_type": "KSampler", "inputs": {}}}}).encode()
    serve(app, rest_event(httpMethod="POST", path="/prompt", body=base64.b64encode(body).decode(), isBase64Encoded=True))
    assert app.scopes[0]["method"] == "POST"
    assert app.bodies[0] == body


def test_rest_repeated_response_headers_stay_separate() -> None:
    app = RecordingApp(headers=[(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
                       body=b"ok")
    result = serve(app, rest_event())
    assert result["multiValueHeaders"]["set-cookie"] == ["a=1", "b=2"]
    assert result["body"] == "ok"


# --- HTTP API (v2) ------------------------------------------------------------------------------


def test_http_event_becomes_an_http_scope_with_cookies() -> None:
    app = RecordingApp()
    result = serve(app, http_event(rawQueryString="max_items=2&filename=a%26b.png"))
    scope = app.scopes[0]
    assert (scope["method"], scope["path"]) == ("GET", "/history")
    assert parse_qs(scope["query_string"].decode()) == {"max_items": ["2"], "filename": ["a&b.png"]}
    assert header(scope, b"cookie") == [b"theme=dark; session=abc123"]
    assert scope["client"] == ("198.51.100.23", 0)
    assert result == {"statusCode": 200, "body": "{}", "isBase64Encoded": False,
                      "headers": {"content-type": "application/json"}}


def test_http_named_stage_prefix_is_removed_and_default_kept() -> None:
    app = RecordingApp()
    event = http_event(rawPath="/prod/history/abc")
    event["requestContext"]["stage"] = "prod"
    serve(app, event)
    assert app.scopes[0]["path"] == "/history/abc"
    serve(app, http_event(rawPath="/prod/history"))  # $default stage: nothing to strip
    assert app.scopes[-1]["path"] == "/prod/history"


def test_http_decoded_path_gets_an_encoded_raw_path() -> None:
    app = RecordingApp()
    serve(app, http_event(rawPath="/view/sub dir/ü.png"))
    assert app.scopes[0]["path"] == "/view/sub dir/ü.png"
    assert app.scopes[0]["raw_path"] == b"/view/sub%20dir/%C3%BC.png"


def test_http_cookies_and_repeated_headers_in_the_response() -> None:
    app = RecordingApp(headers=[(b"content-type", b"application/json"), (b"vary", b"Accept"),
                                (b"vary", b"Origin"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")])
    result = serve(app, http_event())
    assert result["headers"] == {"content-type": "application/json", "vary": "Accept, Origin"}
    assert result["cookies"] == ["a=1", "b=2"]


# --- bodies, both versions ------------------------------------------------------------------------


@pytest.mark.parametrize("make_event", [rest_event, http_event])
def test_binary_response_is_base64(make_event: Any) -> None:
    app = RecordingApp(headers=[(b"content-type", b"image/png")], body=PNG_BYTES)
    result = serve(app, make_event())
    assert result["isBase64Encoded"] is True
    assert base64.b64decode(result["body"]) == PNG_BYTES


@pytest.mark.parametrize("make_event", [rest_event, http_event])
def test_compressed_text_is_base64(make_event: Any) -> None:
    app = RecordingApp(headers=[(b"content-type", b"application/json"), (b"content-encoding", b"gzip")],
                       body=b"\x1f\x8b\x08\x00binary")
    result = serve(app, make_event())
    assert result["isBase64Encoded"] is True
    assert base64.b64decode(result["body"]) == b"\x1f\x8b\x08\x00binary"


def test_body_flagged_base64_but_not_base64_is_rejected() -> None:
    with pytest.raises(ProxyEventError, match="base64"):
        ProxyRequest.from_event(rest_event(httpMethod="POST", body="not base64!!", isBase64Encoded=True))


def test_event_without_method_is_rejected() -> None:
    event = http_event()
    del event["requestContext"]["http"]["method"]
    with pytest.raises(ProxyEventError, match="method"):
        ProxyRequest.from_event(event)


# --- lifespan -------------------------------------------------------------------------------------


def test_lifespan_starts_once_and_its_state_reaches_requests() -> None:
    app = RecordingApp()
    bridge = AsgiBridge(app)
    for _ in range(3):
        bridge.handle(ProxyRequest.from_event(copy.deepcopy(rest_event())))
    bridge.close()
    assert app.lifespan_events == ["lifespan.startup", "lifespan.shutdown"]
    assert all(scope["state"] == {"started": True} for scope in app.scopes)


def test_app_without_lifespan_still_serves() -> None:
    app = RecordingApp(lifespan="unsupported")
    assert serve(app, http_event())["statusCode"] == 200


def test_failed_startup_is_an_error() -> None:
    bridge = AsgiBridge(RecordingApp(lifespan="fail"))
    with pytest.raises(RuntimeError, match="models missing"):
        bridge.handle(ProxyRequest.from_event(http_event()))
    bridge.close()
