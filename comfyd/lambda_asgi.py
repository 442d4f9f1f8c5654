"""API Gateway proxy events <-> ASGI, so the Lambda function serves the server's own routes.

Two event shapes arrive from API Gateway's Lambda proxy integration:
- REST API (payload v1): `httpMethod`, `path` (still percent-encoded), `multiValueHeaders`,
  `multiValueQueryStringParameters` (decoded values), `body`, `isBase64Encoded`.
- HTTP API (payload v2, `"version": "2.0"`): `requestContext.http.method`, `rawPath` (already
  decoded by API Gateway, and prefixed with the stage unless the stage is `$default`),
  `rawQueryString`, `headers` (repeats joined by commas), `cookies`, `body`, `isBase64Encoded`.

`ProxyRequest.from_event` reads either into one neutral request; `AsgiBridge` runs it through an
ASGI application on an event loop it keeps for the life of the execution environment (lifespan
startup runs once, at the first request) and `ProxyResponse.to_event` writes the answer in the
shape the event's API expects. Only plain HTTP: API Gateway's proxy integration has no websocket.

This module imports nothing heavy (no FastAPI, no torch): it is on the cold-start path.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode

AsgiMessage = MutableMapping[str, Any]
AsgiApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[AsgiMessage]], Callable[[AsgiMessage], Awaitable[None]]],
    Awaitable[None],
]

# Responses with these content types go back as text; everything else is base64 (images, zips).
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "application/x-www-form-urlencoded")
_TEXT_SUFFIXES = ("+json", "+xml")


class ProxyEventError(ValueError):
    """The event claims to be an API Gateway proxy event but lacks a field it needs."""


def is_rest_api_event(event: dict[str, Any]) -> bool:
    return "httpMethod" in event and "requestContext" in event


def is_http_api_event(event: dict[str, Any]) -> bool:
    return event.get("version") == "2.0" and isinstance(event.get("requestContext", {}).get("http"), dict)


@dataclass
class ProxyRequest:
    """One HTTP request, independent of the API Gateway payload version it came in."""

    version: str  # "1.0" (REST API) | "2.0" (HTTP API)
    method: str
    path: str  # decoded, without the stage prefix
    raw_path: bytes  # percent-encoded form of `path`
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    source_ip: str
    host: str

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ProxyRequest:
        if is_http_api_event(event):
            return cls._from_http_api(event)
        if is_rest_api_event(event):
            return cls._from_rest_api(event)
        raise ProxyEventError("not an API Gateway proxy event: expected `httpMethod` (REST API) or version 2.0 (HTTP API)")

    @classmethod
    def _from_rest_api(cls, event: dict[str, Any]) -> ProxyRequest:
        context = event.get("requestContext") or {}
        encoded_path = event.get("path") or "/"
        stage = context.get("stage") or ""
        resource = event.get("resource") or ""
        # Through a custom domain's base path mapping `path` carries the stage; the route does not.
        if stage and encoded_path.startswith(f"/{stage}/") and not resource.startswith(f"/{stage}"):
            encoded_path = encoded_path[len(stage) + 1 :]
        headers = _pairs_from_multi(event.get("multiValueHeaders"), event.get("headers"))
        query = _query_from_multi(event.get("multiValueQueryStringParameters"), event.get("queryStringParameters"))
        return cls(
            version="1.0",
            method=_required(event, "httpMethod").upper(),
            path=unquote(encoded_path),
            raw_path=encoded_path.encode("latin-1", "replace"),
            query_string=query.encode("ascii", "replace"),
            headers=headers,
            body=_decode_body(event),
            source_ip=(context.get("identity") or {}).get("sourceIp") or "0.0.0.0",
            host=_header_value(headers, b"host") or context.get("domainName") or "lambda",
        )

    @classmethod
    def _from_http_api(cls, event: dict[str, Any]) -> ProxyRequest:
        context = event["requestContext"]
        http = context["http"]
        path = event.get("rawPath") or http.get("path") or "/"
        stage = context.get("stage") or "$default"
        if stage != "$default" and (path == f"/{stage}" or path.startswith(f"/{stage}/")):
            path = path[len(stage) + 1 :] or "/"
        headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1", "replace")) for k, v in (event.get("headers") or {}).items()]
        cookies = event.get("cookies") or []
        if cookies:
            headers = [h for h in headers if h[0] != b"cookie"]
            headers.append((b"cookie", "; ".join(cookies).encode("latin-1", "replace")))
        return cls(
            version="2.0",
            method=_required(http, "method").upper(),
            path=path,
            raw_path=quote(path, safe="/:@!$&'()*+,;=-._~").encode("ascii"),
            query_string=(event.get("rawQueryString") or "").encode("ascii", "replace"),
            headers=headers,
            body=_decode_body(event),
            source_ip=http.get("sourceIp") or "0.0.0.0",
            host=_header_value(headers, b"host") or context.get("domainName") or "lambda",
        )

    def scope(self, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": _header_value(self.headers, b"x-forwarded-proto") or "https",
            "path": self.path,
            "raw_path": self.raw_path,
            "query_string": self.query_string,
            "root_path": "",
            "headers": self.headers,
            "client": (self.source_ip, 0),
            "server": (self.host, 443),
            # Lifespan state (Starlette's request.state), copied per request as the ASGI spec asks.
            "state": dict(state),
        }


@dataclass
class ProxyResponse:
    status: int = 500
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def to_event(self, version: str) -> dict[str, Any]:
        """The Lambda result API Gateway turns into the HTTP response."""
        text = _is_text(self.header("content-type"), self.header("content-encoding"))
        if text:
            try:
                body, is_base64 = self.body.decode("utf-8"), False
            except UnicodeDecodeError:
                body, is_base64 = base64.b64encode(self.body).decode("ascii"), True
        else:
            body, is_base64 = base64.b64encode(self.body).decode("ascii"), True
        result: dict[str, Any] = {"statusCode": self.status, "body": body, "isBase64Encoded": is_base64}
        if version == "2.0":
            # HTTP API: one value per header (repeats comma-joined), Set-Cookie as a list.
            joined: dict[str, str] = {}
            for k, v in self.headers:
                if k.lower() == "set-cookie":
                    continue
                joined[k] = f"{joined[k]}, {v}" if k in joined else v
            result["headers"] = joined
            cookies = [v for k, v in self.headers if k.lower() == "set-cookie"]
            if cookies:
                result["cookies"] = cookies
        else:
            multi: dict[str, list[str]] = {}
            for k, v in self.headers:
                multi.setdefault(k, []).append(v)
            result["multiValueHeaders"] = multi
        return result


class AsgiBridge:
    """Calls an ASGI app in-process, one request at a time, on a loop kept between invocations."""

    def __init__(self, app: AsgiApp, startup_timeout_s: float = 120.0) -> None:
        self.app = app
        self.startup_timeout_s = startup_timeout_s
        self.loop = asyncio.new_event_loop()
        self.state: dict[str, Any] = {}
        self._started = False
        self._lifespan_task: asyncio.Task[None] | None = None
        self._lifespan_queue: asyncio.Queue[AsgiMessage] | None = None
        self._lifespan_replies: asyncio.Queue[AsgiMessage] | None = None

    def start(self) -> None:
        """Run the app's lifespan startup (once; `handle` does it too when it was not done)."""
        if not self._started:
            self.loop.run_until_complete(self._startup())
            self._started = True

    def handle(self, request: ProxyRequest) -> ProxyResponse:
        self.start()
        return self.loop.run_until_complete(self._request(request))

    def close(self) -> None:
        """Run lifespan shutdown (tests; Lambda simply freezes and discards the environment)."""
        if self._started and self._lifespan_task is not None:
            self.loop.run_until_complete(self._shutdown())
        self.loop.close()

    async def _startup(self) -> None:
        to_app: asyncio.Queue[AsgiMessage] = asyncio.Queue()
        from_app: asyncio.Queue[AsgiMessage] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}

        async def run() -> None:
            try:
                await self.app(scope, to_app.get, from_app.put)
            except BaseException as exc:  # an app without lifespan support raises: that is allowed
                await from_app.put({"type": "lifespan.unsupported", "error": repr(exc)})

        self._lifespan_queue = to_app
        self._lifespan_task = self.loop.create_task(run())
        await to_app.put({"type": "lifespan.startup"})
        self._lifespan_replies = from_app
        message = await asyncio.wait_for(from_app.get(), self.startup_timeout_s)
        if message["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"the application failed to start: {message.get('message', '')}")
        if message["type"] == "lifespan.unsupported":
            self._lifespan_task = None  # nothing to shut down

    async def _shutdown(self) -> None:
        if self._lifespan_task is None or self._lifespan_queue is None or self._lifespan_replies is None:
            return
        if self._lifespan_task.done():
            return
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._lifespan_replies.get(), 30)
        except TimeoutError:
            self._lifespan_task.cancel()

    async def _request(self, request: ProxyRequest) -> ProxyResponse:
        response = ProxyResponse()
        chunks: list[bytes] = []
        body_sent = False
        done = asyncio.Event()

        async def receive() -> AsgiMessage:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await done.wait()  # the client "disconnects" only once the response is complete
            return {"type": "http.disconnect"}

        async def send(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                response.status = int(message["status"])
                response.headers = [
                    (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in message.get("headers", [])
                ]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    done.set()

        await self.app(request.scope(self.state), receive, send)
        done.set()
        response.body = b"".join(chunks)
        return response


# --- helpers ------------------------------------------------------------------------------
def _required(mapping: dict[str, Any], key: str) -> Any:
    value = mapping.get(key)
    if not value:
        raise ProxyEventError(f"API Gateway event lacks `{key}`")
    return value


def _decode_body(event: dict[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError as exc:
            raise ProxyEventError(f"API Gateway event body is flagged base64 but is not: {exc}") from exc
    return str(body).encode("utf-8")


def _pairs_from_multi(multi: dict[str, list[str]] | None, single: dict[str, str] | None) -> list[tuple[bytes, bytes]]:
    pairs: list[tuple[bytes, bytes]] = []
    if multi:
        for key, values in multi.items():
            for value in values or []:
                pairs.append((key.lower().encode("latin-1"), str(value).encode("latin-1", "replace")))
    elif single:
        for key, value in single.items():
            pairs.append((key.lower().encode("latin-1"), str(value).encode("latin-1", "replace")))
    return pairs


def _query_from_multi(multi: dict[str, list[str]] | None, single: dict[str, str] | None) -> str:
    # REST API hands over decoded values; re-encode them so the app decodes each exactly once.
    if multi:
        return urlencode([(k, v) for k, values in multi.items() for v in values or []])
    if single:
        return urlencode(list(single.items()))
    return ""


def _header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _is_text(content_type: str | None, content_encoding: str | None) -> bool:
    if content_encoding and content_encoding.lower() not in ("identity", ""):
        return False  # gzip etc. are bytes whatever the type says
    if not content_type:
        return True  # empty bodies and bare error strings
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(_TEXT_SUFFIXES)
