"""GET /ws: ComfyUI's websocket, fed by the job layer's events.

Each connection has a client id (`?clientId=`, or a fresh one, returned as `sid` in the first
`status` message). A job's events go to the client that submitted it (its `client_id`); a job
submitted without one is announced to every client, as ComfyUI does. Queue status goes to all.

Events arrive on worker threads; `send_*` hand them to the event loop (call_soon_threadsafe) and
each connection's sender task writes them in order. A client that stops reading loses messages
beyond `MAX_BACKLOG` rather than growing the server's memory.

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

log = logging.getLogger("comfyd.ws")

MAX_BACKLOG = 4096
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
    outbox: asyncio.Queue[str | bytes] = field(default_factory=lambda: asyncio.Queue(MAX_BACKLOG))
    dropped: int = 0

    def offer(self, message: str | bytes) -> None:
        try:
            self.outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 100, 10_000):
                log.warning("websocket %s is not reading; %d message(s) dropped", self.client_id, self.dropped)


class WebSocketHub:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: dict[str, set[_Connection]] = {}

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
            text = json.dumps({"type": event, "data": data}, default=_json_default)
        except (TypeError, ValueError):
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
            connection.offer(message)

    async def serve(self, websocket: WebSocket, client_id: str | None, hello: list[tuple[str, dict[str, Any]]]) -> None:
        """Run one accepted connection until it closes; `hello` = first messages (status, ...)."""
        sid = client_id or uuid.uuid4().hex
        connection = _Connection(sid, websocket)
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
            conns = self._connections.get(sid)
            if conns is not None:
                conns.discard(connection)
                if not conns:
                    self._connections.pop(sid, None)

    async def _sender(self, connection: _Connection) -> None:
        websocket = connection.websocket
        try:
            while True:
                message = await connection.outbox.get()
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
