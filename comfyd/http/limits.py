"""Request body size limits, enforced while the body streams in (pure ASGI middleware).

A declared Content-Length over the limit is refused before a byte is read; a chunked body is
counted as it arrives and refused as soon as it passes the limit. Uploads get their own,
larger limit. Either way: 413 with a body naming the limit.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_PATHS = frozenset({"/upload/image", "/api/upload/image", "/upload/mask", "/api/upload/mask", "/api/v2/assets"})


class _TooLarge(Exception):
    pass


def _payload_too_large(limit: int, what: str) -> bytes:
    setting = "COMFYD_MAX_UPLOAD_BYTES" if "upload" in what else "COMFYD_MAX_BODY_BYTES"
    body = {
        "error": {
            "type": "PayloadTooLarge",
            "message": f"{what} is larger than the limit of {limit} bytes ({setting} raises it)",
            "details": {"limit_bytes": limit},
        }
    }
    return json.dumps(body).encode()


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope.get("path", "") in UPLOAD_PATHS
        limit = self.max_upload_bytes if is_upload else self.max_body_bytes
        what = "the upload" if is_upload else "the request body"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_413(send, limit, what)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not response_started:
                await _send_413(send, limit, what)
        except Exception as exc:  # an app may wrap our exception (multipart parser, say)
            if _caused_by_too_large(exc) and not response_started:
                await _send_413(send, limit, what)
            else:
                raise


def _caused_by_too_large(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, _TooLarge):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Send, limit: int, what: str) -> None:
    body = _payload_too_large(limit, what)
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                          (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
