"""Job ends a ComfyUI client missed because its websocket was not open yet.

Many ComfyUI clients POST /prompt and only then open `/ws?clientId=`; a short job (a fully
cached rerun takes milliseconds) can end in between, and the client would wait forever for its
`executing {node: null}`. When a job's end is announced while no socket of its client is
connected, its terminal event and the final `executing {node: null}` are kept for a minute and
sent when that client connects. They describe a job whose history is stored, so a client that
then reads /history finds it; nothing is sent for a job that is still running.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from comfyd.engine.interfaces import JobRecord

TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
KEEP_S = 60.0
MAX_CLIENTS = 1024

Message = tuple[str, dict[str, Any]]


class MissedEnds:
    def __init__(self, is_connected: Callable[[str], bool], keep_s: float = KEEP_S) -> None:
        self._is_connected = is_connected
        self._keep_s = keep_s
        self._terminal: OrderedDict[str, Message] = OrderedDict()  # job id -> its terminal event
        self._missed: OrderedDict[str, tuple[float, list[Message]]] = OrderedDict()  # client id -> ends
        self._lock = threading.Lock()

    def on_job_event(self, job: JobRecord, event: str, data: dict[str, Any]) -> None:
        """JobManager listener (worker threads)."""
        client_id = job.client_id
        if not job.id or not client_id or job.source == "v2":  # v2 clients poll or use SSE
            return
        with self._lock:
            if event in TERMINAL_EVENTS:
                self._terminal[job.id] = (event, dict(data))
                while len(self._terminal) > MAX_CLIENTS:
                    self._terminal.popitem(last=False)
                return
            if event != "executing" or data.get("node") is not None:
                return
            terminal = self._terminal.pop(job.id, None)
        if self._is_connected(client_id):
            return
        messages = ([terminal] if terminal else []) + [("executing", dict(data))]
        with self._lock:
            _, earlier = self._missed.pop(client_id, (0.0, []))
            self._missed[client_id] = (time.monotonic(), (earlier + messages)[-8:])
            while len(self._missed) > MAX_CLIENTS:
                self._missed.popitem(last=False)

    def take(self, client_id: str) -> list[Message]:
        """The ends this client missed (fresh ones), once."""
        with self._lock:
            stamped, messages = self._missed.pop(client_id, (0.0, []))
        return messages if time.monotonic() - stamped <= self._keep_s else []
