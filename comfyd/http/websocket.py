"""GET /ws: ComfyUI's websocket, fed by the job layer's events.

Each connection has a client id (`?clientId=`, or a fresh one, returned as `sid` in the first
`status` message). A job's events go to the client that submitted it (its `client_id`); a job
submitted without one is announced to every client, as ComfyUI does. Queue status goes to all.

Events arrive on worker threads; `send_*` hand them to the event loop (call_soon_threadsafe) and
each connection's sender task writes them in order. A client that stops reading is bounded in
bytes, not only in messages: once its unsent backlog passes `max_backlog_bytes` (an image frame
is megabytes) the backlog is dropped and the connection closed with code 1013 (Try Again Later,
the close code for overload), and a ComfyUI client reconnects. At most `max_connections`
sockets are open at once; more are refused with HTTP 503 before the upgrade.

Binary frames follow ComfyUI: 4-byte big-endian event type (1 = PREVIEW_IMAGE), then for
images a 4-byte format (1 = JPEG, 2 = PNG), then the image bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from comfyd.http.jsonsafe import scrub

log = logging.getLogger("comfyd.ws")

MAX_BACKLOG = 4096
DEFAULT_MAX_BACKLOG_BYTES = 64 * 1024**2
CLOSE_OVERLOADED = 1013  # RFC 6455: Try Again Later
_CLOSE = object()  # sentinel in an outbox: close the socket
PREVIEW_IMAGE = 1
IMAGE_FORMATS = {"JPEG": 1, "JPG": 1, "PNG": 2}


def image_frame(image: bytes, image_format: str = "PNG") -> bytes:
    """ComfyUI's PREVIEW_IMAGE binary frame."""
    code = IMAGE_FORMATS.get(image_format.upper())
    if code is None:
        raise ValueError(f"unsupported preview image format {image_format!r}; use PNG or JPEG")
    return struct.pack(">II", PREVIEW_IMAGE, code) + image


@dataclass(eq=False)
class _Connection:
    client_id: str
    websocket: WebSocket
    max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES
    outbox: asyncio.Queue[Any] = field(default_factory=lambda: asyncio.Queue(MAX_BACKLOG + 1))
    backlog_bytes: int = 0
    dropped: int = 0
    overloaded: bool = False
    closing: bool = False

    def offer(self, message: str | bytes) -> bool:
        """Queue a message; False when the client is too far behind and must be dropped."""
        if self.overloaded:
            return False
        size = len(message)
        if self.backlog_bytes + size > self.max_backlog_bytes or self.outbox.qsize() >= MAX_BACKLOG:
            self.overloaded = True
            self.dropped += self.outbox.qsize() + 1
            while not self.outbox.empty():  # release the backlog now, not when the socket closes
                self.outbox.get_nowait()
            self.backlog_bytes = 0
            self.outbox.put_nowait(_CLOSE)
            log.warning("websocket %s is not reading (backlog over %d bytes); closing it with %d",
                        self.client_id, self.max_backlog_bytes, CLOSE_OVERLOADED)
            return False
        self.backlog_bytes += size
        self.outbox.put_nowait(message)
        return True


class WebSocketHub:
    def __init__(self, max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES, max_connections: int = 500) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[str, set[_Connection]] = {}
        self.max_backlog_bytes = max_backlog_bytes
        self.max_connections = max_connections
        self._admitted = 0

    def try_admit(self) -> bool:
        """Take a connection slot (before the upgrade); False when all are taken."""
        if self._admitted >= self.max_connections:
            return False
        self._admitted += 1
        return True

    def release(self) -> None:
        self._admitted = max(0, self._admitted - 1)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def client_count(self) -> int:
        return sum(len(c) for c in self._connections.values())

    def is_connected(self, client_id: str) -> bool:
        return bool(self._connections.get(client_id))

    # ---- from any thread -------------------------------------------------------------------

    def send_json(self, client_id: str | None, event: str, data: dict[str, Any]) -> None:
        """Queue `{type, data}` for one client (None: every client)."""
        try:
            text = json.dumps({"type": event, "data": data}, default=_json_default, allow_nan=False)
        except ValueError:  # NaN or Infinity somewhere: send it as strict JSON (null) instead
            text = json.dumps(scrub({"type": event, "data": data}))
        except TypeError:
            log.warning("websocket: event %s has data that is not JSON; not sent", event)
            return
        self._deliver(client_id, text)

    def send_binary(self, client_id: str | None, frame: bytes) -> None:
        self._deliver(client_id, frame)

    def _deliver(self, client_id: str | None, message: str | bytes) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing during shutdown
            loop.call_soon_threadsafe(self._offer, client_id, message)

    # ---- on the event loop -----------------------------------------------------------------

    def _offer(self, client_id: str | None, message: str | bytes) -> None:
        if client_id is None:
            targets = [c for conns in self._connections.values() for c in conns]
        else:
            targets = list(self._connections.get(client_id, ()))
        for connection in targets:
            if not connection.offer(message) and connection.overloaded and not connection.closing:
                connection.closing = True
                self._detach(connection)
                # The sender may be stuck writing to a client that does not read: close from here too.
                asyncio.ensure_future(self._close(connection))

    def _detach(self, connection: _Connection) -> None:
        conns = self._connections.get(connection.client_id)
        if conns is not None:
            conns.discard(connection)
            if not conns:
                self._connections.pop(connection.client_id, None)

    @staticmethod
    async def _close(connection: _Connection) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                connection.websocket.close(code=CLOSE_OVERLOADED, reason="client too slow: backlog limit"), 10.0)

    async def serve(self, websocket: WebSocket, client_id: str | None, hello: list[tuple[str, dict[str, Any]]]) -> None:
        """Run one accepted connection until it closes; `hello` = first messages (status, ...)."""
        sid = client_id or uuid.uuid4().hex
        connection = _Connection(sid, websocket, self.max_backlog_bytes)
        self._connections.setdefault(sid, set()).add(connection)
        try:
            for event, data in hello:
                payload = dict(data)
                if event == "status":
                    payload["sid"] = sid
                await websocket.send_text(json.dumps({"type": event, "data": payload}, default=_json_default))
            sender = asyncio.create_task(self._sender(connection))
            try:
                # ComfyUI clients send little (feature flags); read to notice the close.
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
        except WebSocketDisconnect:
            pass
        finally:
            self._detach(connection)

    async def _sender(self, connection: _Connection) -> None:
        websocket = connection.websocket
        try:
            while True:
                message = await connection.outbox.get()
                if message is _CLOSE:
                    await websocket.close(code=CLOSE_OVERLOADED, reason="client too slow: backlog limit")
                    return
                connection.backlog_bytes = max(0, connection.backlog_bytes - len(message))
                if isinstance(message, bytes):
                    await websocket.send_bytes(message)
                else:
                    await websocket.send_text(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        except Exception:
            log.debug("websocket %s sender stopped", connection.client_id, exc_info=True)

    async def close_all(self) -> None:
        for conns in list(self._connections.values()):
            for connection in list(conns):
                with contextlib.suppress(Exception):
                    await connection.websocket.close(code=1001)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        raise TypeError("bytes are sent as binary frames")
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
