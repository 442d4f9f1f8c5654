"""What the compatibility modules need to know about the running comfyd: the settings of the
process that loaded the packs, and the node being run on this thread.

ComfyUI's modules are global (`folder_paths.get_output_directory()`, `ProgressBar(n)`,
`PromptServer.instance.send_sync(...)`), so the answers come from here: the settings are set
once when packs are loaded, the node context is set by the pack-node adapter around each call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyd.engine.context import NodeContext
    from comfyd.settings import Settings

_settings: list[Settings] = []
_current: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar(
    "comfyd_pack_node", default=None
)


def set_settings(settings: Settings) -> None:
    _settings[:] = [settings]


def settings() -> Settings:
    if not _settings:
        from comfyd.settings import Settings

        _settings.append(Settings())
    return _settings[0]


def current_context() -> NodeContext | None:
    return _current.get()


@contextmanager
def running(ctx: NodeContext) -> Iterator[None]:
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


def emit(event: str, data: Any) -> None:
    """Send a pack's event on the job's channel (websocket), when a node is running."""
    ctx = current_context()
    if ctx is not None and isinstance(data, dict):
        ctx.emit(event, data)


_environment: list[Any] = []


def set_environment(env: Any) -> None:
    _environment[:] = [env]


def environment() -> Any:
    return _environment[0] if _environment else None
