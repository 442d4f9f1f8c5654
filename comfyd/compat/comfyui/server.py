"""ComfyUI's `server.PromptServer`, as far as packs touch it at import and run time.

`send_sync` sends the event on the running job's channel (the websocket, like ComfyUI). Routes a
pack declares with `PromptServer.instance.routes.get(...)` are recorded, not served: comfyd does
not run packs' HTTP handlers (see docs/nodes.md).
"""

from __future__ import annotations

import logging
import uuid  # noqa: F401  (packs use server.uuid)
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from comfyd.compat import state

log = logging.getLogger("comfyd.compat")


class BinaryEventTypes(IntEnum):
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


class _Routes:
    """aiohttp's RouteTableDef surface; every route is remembered and left unserved."""

    # aiohttp's "no more routes may be added": packs that check it skip their static routes.
    frozen = True

    def __init__(self) -> None:
        self.declared: list[tuple[str, str]] = []

    def _decorator(self, method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def record(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.declared.append((method, path))
            return handler

        return record

    def get(self, path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._decorator("GET", path)

    def post(self, path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._decorator("POST", path)

    def put(self, path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._decorator("PUT", path)

    def delete(self, path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._decorator("DELETE", path)

    def patch(self, path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._decorator("PATCH", path)

    def static(self, prefix: str, path: str, **_: Any) -> None:
        self.declared.append(("STATIC", prefix))

    def route(self, method: str, path: str, **_: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._decorator(method.upper(), path)


class _App:
    def __init__(self, routes: _Routes) -> None:
        self.router = routes

    def add_routes(self, routes: Any) -> None:
        pass


class PromptServer:
    instance: PromptServer

    def __init__(self) -> None:
        self.routes = _Routes()
        self.app = _App(self.routes)
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.supports = ["custom_nodes_from_web"]
        self.sockets: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        # ComfyUI server internals (prompt_queue, number, ...): a placeholder failing on use.
        if name.startswith("__"):
            raise AttributeError(name)
        from comfyd.compat.aliases import missing

        return missing(f"server.PromptServer.instance.{name}")

    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        if isinstance(event, str):
            state.emit(event, data)
        # Binary frames (previews, text) have no JSON form; comfyd's own nodes send previews.

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def add_on_prompt_handler(self, handler: Callable[..., Any]) -> None:
        log.info("a pack registered an on-prompt handler; comfyd does not call it")

    def send_progress_text(self, text: str, node_id: str | None = None, sid: str | None = None) -> None:
        ctx = state.current_context()
        if ctx is not None:
            ctx.emit("progress_text", {"node_id": node_id or ctx.node_id, "text": str(text)})


PromptServer.instance = PromptServer()


def __getattr__(name: str) -> Any:
    # A name ComfyUI has and comfyd lacks: a placeholder that fails when used (aliases.missing).
    if name.startswith("__"):
        raise AttributeError(name)
    from comfyd.compat.aliases import missing

    return missing(f"server.{name}")
