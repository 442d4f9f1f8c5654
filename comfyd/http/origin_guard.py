"""Browser-borne attacks on a server without API keys (pure ASGI middleware).

Without keys comfyd listens on loopback only, but any web page the user opens can still make
the browser talk to it: a cross-site form or `fetch(..., {mode: "no-cors"})` can POST /prompt
with a `text/plain` or form body, and a DNS-rebinding page can read answers through a hostile
name that resolves to 127.0.0.1. So, when no keys are configured:

- the Host header must name a loopback host (`localhost`, `127.0.0.1`, `[::1]`, ...) or one of
  `allowed_hosts` (403 InvalidHost): a rebinding page's name is refused;
- an Origin header, where a browser sends one, must be the server's own origin or listed in
  `cors_origins` (403 ForbiddenOrigin); this covers websocket handshakes too;
- a request that sends a body to a JSON route must say `Content-Type: application/json`
  (415), which a browser cannot send cross-site without a CORS preflight; uploads are
  multipart and rely on the Origin check.

With API keys the key is the guard (a browser never attaches it to a cross-site request).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from comfyd.http.auth import is_loopback
from comfyd.http.limits import UPLOAD_PATHS

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def host_name(host_header: str) -> str:
    """The host part of a Host header: "[::1]:8188" -> "::1", "localhost:80" -> "localhost"."""
    text = host_header.strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text[1:]
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class OriginGuardMiddleware:
    def __init__(self, app: ASGIApp, cors_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}
        self.allowed_hosts = {h.strip().lower() for h in allowed_hosts if h.strip()}

    def _host_ok(self, host_header: str | None) -> bool:
        if host_header is None:  # HTTP/1.0 without Host: no name to rebind
            return True
        name = host_name(host_header)
        return name in self.allowed_hosts or is_loopback(name)

    def _origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:
            return True  # not a browser, or a same-origin GET
        origin = origin.strip().rstrip("/").lower()
        if origin in self.cors_origins:
            return True
        if host_header is None or origin == "null":
            return False
        own = {f"http://{host_header.strip().lower()}", f"https://{host_header.strip().lower()}"}
        return origin in own

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        origin = _header(scope, b"origin")
        problem: tuple[int, str, str] | None = None
        if not self._host_ok(host):
            problem = (403, "InvalidHost", f"Host {host!r} is not a loopback name; without API keys comfyd answers "
                       "only requests addressed to localhost (set COMFYD_ALLOWED_HOSTS to add names)")
        elif not self._origin_ok(origin, host):
            problem = (403, "ForbiddenOrigin", f"cross-origin request from {origin!r} refused; list the origin in "
                       "COMFYD_CORS_ORIGINS to allow it")
        elif scope["type"] == "http" and scope.get("method") in _BODY_METHODS and scope.get("path") not in UPLOAD_PATHS:
            content_type = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
            has_body = (_header(scope, b"content-length") or "0").strip() not in ("", "0") or \
                _header(scope, b"transfer-encoding") is not None
            if (content_type or has_body) and content_type != "application/json":
                problem = (415, "UnsupportedMediaType",
                           f"send JSON with 'Content-Type: application/json' (got {content_type or 'none'!r})")
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, kind, message = problem
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
            return
        body = json.dumps({"error": {"type": kind, "message": message}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
