"""What v2 knows about running jobs beyond the job store: a progress snapshot, the latest preview,
outputs as they are saved, and a numbered event log per job for SSE streams and their resumption.

`LiveJobs.on_job_event` is a JobManager listener (worker threads). Every event it derives gets
the job's next sequence number, goes into a bounded per-job log (what `Last-Event-ID` resumes
from) and to every open stream of that job (on the event loop). Jobs run by other processes (SQS
workers) have no live events here; their streams follow the store (status and outputs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyd.engine.interfaces import JobRecord

LOG_EVENTS = 512  # events kept per job for resumption
MAX_JOBS = 1024  # jobs whose live state is kept
PROGRESS_INTERVAL_S = 0.5  # progress and preview events: at most ~2/s (the spec's throttle)

# (sequence number, event name, data); data of "output" events holds the raw item to render.
Event = tuple[int, str, dict[str, Any]]


@dataclass
class LiveJob:
    # node id -> class_type: all a progress snapshot needs of the workflow (MAX_JOBS of these
    # are kept, so not the whole workflow).
    node_classes: dict[str, str | None]
    seq: int = 0
    log: deque[Event] = field(default_factory=lambda: deque(maxlen=LOG_EVENTS))
    status: str | None = None
    done: set[str] = field(default_factory=set)
    current_node: str | None = None
    step: int | None = None
    steps: int | None = None
    progress: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    last_progress: float = 0.0
    last_preview: float = 0.0
    subscribers: set[Callable[[Event], None]] = field(default_factory=set)

    def snapshot(self) -> dict[str, Any]:
        """A complete v2 Progress object."""
        nodes = self.node_classes
        total = max(1, len(nodes))
        done = len(self.done)
        partial = 0.0
        if self.current_node is not None and self.current_node not in self.done and self.steps:
            partial = min(1.0, (self.step or 0) / self.steps)
        class_type = self.node_classes.get(self.current_node) if self.current_node else None
        message = f"{class_type} {self.step}/{self.steps}" if class_type and self.steps else class_type
        return {
            "value": round(min(1.0, (done + partial) / total), 4), "nodes_done": done, "nodes_total": len(nodes),
            "current_node": self.current_node, "current_node_class": class_type,
            "step": self.step, "steps": self.steps, "message": message,
        }


class LiveJobs:
    def __init__(self, status_of: Callable[[JobRecord], str]) -> None:
        self._status_of = status_of
        self._jobs: OrderedDict[str, LiveJob] = OrderedDict()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    # ---- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> LiveJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def subscribe(self, job: JobRecord, deliver: Callable[[Event], None], after: int | None
                  ) -> tuple[list[Event] | None, int, Callable[[], None]]:
        """Register `deliver` (called on the event loop) for the job's next events. Returns the
        logged events after `after` (None when `after` is None or the log no longer reaches back
        that far), the current sequence number, and the unsubscribe function."""
        with self._lock:
            live = self._live(job)
            live.subscribers.add(deliver)
            backlog = None
            if after is not None and after <= live.seq:
                kept = [e for e in live.log if e[0] > after]
                first = live.log[0][0] if live.log else live.seq + 1
                if after + 1 >= first or after == live.seq:
                    backlog = kept
            seq = live.seq

        def unsubscribe() -> None:
            with self._lock:
                live.subscribers.discard(deliver)

        return backlog, seq, unsubscribe

    # ---- writing (any thread) ---------------------------------------------------------------

    def publish_status(self, job: JobRecord) -> None:
        """A status event if the job's v2 status changed since the last one."""
        status = self._status_of(job)
        with self._lock:
            live = self._live(job)
            if live.status == status:
                return
            live.status = status
            self._emit(live, "status", {"status": status})

    def on_job_event(self, job: JobRecord, event: str, data: dict[str, Any]) -> None:
        """JobManager listener: derive v2 events from ComfyUI's."""
        if not job.id:
            return  # queue-wide status broadcasts
        now = time.monotonic()
        with self._lock:
            live = self._live(job)
            if event == "execution_start":
                if live.status != "running":
                    live.status = "running"
                    self._emit(live, "status", {"status": "running"})
            elif event == "execution_cached":
                live.done.update(str(n) for n in data.get("nodes") or [])
                self._progress(live, now, force=True)
            elif event == "executing" and data.get("node") is not None:
                if live.current_node is not None:
                    live.done.add(live.current_node)
                live.current_node, live.step, live.steps = str(data["node"]), None, None
                self._progress(live, now, force=True)
            elif event == "progress":
                live.step, live.steps = _int(data.get("value")), _int(data.get("max"))
                if data.get("node") is not None:
                    live.current_node = str(data["node"])
                self._progress(live, now, force=live.step is not None and live.step == live.steps)
            elif event == "executed":
                node = str(data.get("node"))
                live.done.add(node)
                output = data.get("output")
                if isinstance(output, dict):
                    live.outputs[node] = output
                    self._emit(live, "output", {"node_id": node, "output": output})
            elif event == "binary_image" and isinstance(data.get("image"), bytes | bytearray):
                self._preview(live, data, now)
        if event == "executing" and data.get("node") is None:
            self._finish(job)

    def _finish(self, job: JobRecord) -> None:
        with self._lock:
            live = self._jobs.get(job.id)
            if live is not None and live.current_node is not None:
                live.done.add(live.current_node)

    # ---- inside the lock ---------------------------------------------------------------------

    def _live(self, job: JobRecord) -> LiveJob:
        live = self._jobs.get(job.id)
        if live is None:
            live = LiveJob(node_classes=_node_classes(job.workflow))
            self._jobs[job.id] = live
            while len(self._jobs) > MAX_JOBS:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].subscribers:
                    self._jobs.move_to_end(oldest)
                    break
                self._jobs.pop(oldest)
        else:
            self._jobs.move_to_end(job.id)
        return live

    def _progress(self, live: LiveJob, now: float, force: bool) -> None:
        live.progress = live.snapshot()
        if force or now - live.last_progress >= PROGRESS_INTERVAL_S:
            live.last_progress = now
            self._emit(live, "progress", live.progress)

    def _preview(self, live: LiveJob, data: dict[str, Any], now: float) -> None:
        image = bytes(data["image"])
        kind = "image/jpeg" if str(data.get("format") or "").upper() in ("JPEG", "JPG") else "image/png"
        live.preview = {"node_id": str(data.get("node") or live.current_node or ""), "content_type": kind,
                        "data_base64": base64.b64encode(image).decode()}
        if now - live.last_preview >= PROGRESS_INTERVAL_S:
            live.last_preview = now
            self._emit(live, "preview", live.preview)

    def _emit(self, live: LiveJob, name: str, data: dict[str, Any]) -> None:
        live.seq += 1
        event = (live.seq, name, data)
        live.log.append(event)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        for deliver in list(live.subscribers):
            with contextlib.suppress(RuntimeError):  # loop closing during shutdown
                loop.call_soon_threadsafe(deliver, event)


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def _node_classes(workflow: dict[str, Any]) -> dict[str, str | None]:
    classes: dict[str, str | None] = {}
    for node_id, node in workflow.items():
        if isinstance(node, dict):
            class_type = node.get("class_type")
            classes[node_id] = class_type if isinstance(class_type, str) else None
    return classes
