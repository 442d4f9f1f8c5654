"""What a running job tells the outside world: websocket events (held back until its end is
stored), history messages, progress writes, notifier publications and metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from comfyd.engine.context import MODEL_LOADING
from comfyd.engine.interfaces import JobRecord, JobStatus, Metrics
from comfyd.engine.job_runtime import EventListener, JobBackends
from comfyd.engine.job_views import prediction_view
from comfyd.engine.previews import latent_preview_jpeg

log = logging.getLogger("comfyd.jobs")


# Executor events that end a job. run_job holds them back until the job's terminal state is
# stored (and drops them for an attempt that will be retried), then announces them itself.
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
# Events ComfyUI keeps in a history entry's status.messages.
HISTORY_EVENTS = frozenset({"execution_start", "execution_cached"}) | TERMINAL_EVENTS

PROGRESS_WRITE_INTERVAL_S = 1.0  # how often a running job's progress is written to the store


def record_metrics(metrics: Metrics, job: JobRecord, timings: dict[str, float]) -> None:
    status = job.status.value
    metrics.increment("JobsCompleted", status=status)
    if job.status in (JobStatus.FAILED, JobStatus.TIMED_OUT):  # a client's cancel is no error
        error = job.error or {}
        metrics.increment("Errors", error_type=str(error.get("exception_type") or error.get("type") or status))
    if job.started_at is not None and job.finished_at is not None:
        metrics.observe("JobDuration", job.finished_at - job.started_at, "Seconds", status=status)
    for node_id, seconds in timings.items():
        node = job.workflow.get(node_id)
        class_type = node.get("class_type", "unknown") if isinstance(node, dict) else "unknown"
        metrics.observe("NodeExecutionTime", seconds, "Seconds", class_type=str(class_type))


def publish(backends: JobBackends, event: str, job: JobRecord) -> None:
    """Tell the notifier; a notifier failure never fails the job."""
    attributes = {"job_id": job.id, "status": job.status.value, "source": job.source}
    webhook = job.extra_data.get("webhook")
    if isinstance(webhook, str) and webhook:
        attributes["webhook"] = webhook
        events = job.extra_data.get("webhook_events_filter")
        if isinstance(events, list):
            attributes["webhook_events_filter"] = ",".join(str(e) for e in events)
    try:
        # URLs signed now, for this message: a presigned URL stored at job end would die long
        # before the record does.
        backends.notifier.publish(event, prediction_view(job, sign=backends.output_store.url), attributes)
    except Exception:
        log.exception("job %s: notifier failed on %s", job.id, event)


class EventRecorder:
    """The listener handed to the executor for one job.

    Forwards events to the caller's listener, keeps ComfyUI's history messages, writes progress
    to the store now and then, publishes output/log notifications, and holds back the terminal
    event until run_job has stored the job's end.
    """

    def __init__(self, job: JobRecord, listener: EventListener | None, backends: JobBackends) -> None:
        self.job = job
        self.listener = listener
        self.backends = backends
        self.messages: list[list[Any]] = []
        self.progress: dict[str, Any] = {}
        self.partial_outputs: dict[str, Any] = {}
        # Step previews when the client asks (extra_data.preview_method, as ComfyUI's --preview-method).
        self.preview_wanted = str(job.extra_data.get("preview_method", "none")).lower() in ("auto", "latent2rgb")
        self.held: tuple[str, dict[str, Any]] | None = None
        self.ended = threading.Event()  # set once the end was announced (normal or hard timeout)
        self._last_progress_write = 0.0
        self._lock = threading.Lock()
        # "node" while a node computes, "loading" while one loads a model (stored with progress:
        # after a crash, recovery blames the jobs that were computing, not those loading).
        self.phase: str | None = None
        self._loading = 0
        self.on_loading: Callable[[bool], None] | None = None  # the wall-time budget pauses

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.ended.is_set():
            return  # a hard timeout already announced this job's end
        if event == MODEL_LOADING:
            self._on_loading(bool(data.get("active")))
            return
        data = dict(data)
        data.setdefault("prompt_id", self.job.id)
        if event == "executing" and data.get("node") is not None:
            self._set_phase("node" if not self._loading else "loading", data.get("node"))
        if event in HISTORY_EVENTS:
            with self._lock:
                self.messages.append([event, {"timestamp": int(time.time() * 1000), **data}])
        if event in TERMINAL_EVENTS:
            self.held = (event, data)
            return
        if event == "executing" and data.get("node") is None:
            return  # run_job sends the final executing{node: null} after the history is stored
        if event == "progress":
            preview = data.pop("preview", None)  # a latent: never sent as JSON
            self._on_progress(data)
            if preview is not None and self.preview_wanted:
                self._forward_preview(preview, data.get("node"))
        elif event == "executed":
            with self._lock:
                self.partial_outputs[str(data.get("node"))] = data.get("output") or {}
            self._publish_running("job.output")
        elif event == "executing":
            self._publish_running("job.logs")
        self._forward(event, data)

    def _on_loading(self, active: bool) -> None:
        with self._lock:
            self._loading = max(0, self._loading + (1 if active else -1))
            loading = self._loading > 0
        self._set_phase("loading" if loading else "node", self.progress.get("node"))
        if self.on_loading is not None:
            self.on_loading(active)

    def _set_phase(self, phase: str, node: Any) -> None:
        """Store the phase when it changes (one small write per node start or model load)."""
        if phase == self.phase and node == self.progress.get("node"):
            return
        self.phase = phase
        self.progress = {**self.progress, "node": node, "phase": phase}
        try:
            self.backends.job_store.update(self.job.id, progress=self.progress)
        except Exception:
            log.exception("job %s: progress write failed", self.job.id)

    def _on_progress(self, data: dict[str, Any]) -> None:
        self.progress = {**{k: data.get(k) for k in ("value", "max", "node")}, "phase": self.phase}
        now = time.monotonic()
        if now - self._last_progress_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_progress_write = now
            try:
                self.backends.job_store.update(self.job.id, progress=self.progress)
            except Exception:
                log.exception("job %s: progress write failed", self.job.id)

    def _forward_preview(self, latent: Any, node: Any) -> None:
        """A PREVIEW_IMAGE frame for this step (the client asked for previews)."""
        try:
            image = latent_preview_jpeg(latent)
        except (ValueError, TypeError) as exc:
            log.debug("job %s: no preview: %s", self.job.id, exc)
            return
        self._forward("binary_image", {"image": image, "format": "JPEG", "node": node, "prompt_id": self.job.id})

    def _publish_running(self, event: str) -> None:
        """Cog's `output` / `logs` webhook events while the job runs (the notifier throttles them).
        Only jobs with a webhook get them: other notifiers (SNS) see start and completion only."""
        if not self.job.extra_data.get("webhook"):
            return
        with self._lock:
            partial = replace(self.job, status=JobStatus.RUNNING, outputs=dict(self.partial_outputs),
                              messages=list(self.messages), progress=dict(self.progress))
        publish(self.backends, event, partial)

    def _forward(self, event: str, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        try:
            self.listener(event, data)
        except Exception:
            log.exception("job %s: listener failed on %s", self.job.id, event)

    def messages_for(self, status: JobStatus, error: dict[str, Any] | None) -> list[list[Any]]:
        """History messages, ending with the terminal event the client will see."""
        with self._lock:
            messages = [m for m in self.messages if m[0] not in TERMINAL_EVENTS]
        event, data = self._terminal_event(status, error)
        messages.append([event, {**data, "timestamp": int(time.time() * 1000)}])
        return messages

    def _terminal_event(self, status: JobStatus, error: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        held = self.held
        job_id = self.job.id
        if status is JobStatus.SUCCEEDED:
            return held if held and held[0] == "execution_success" else ("execution_success", {"prompt_id": job_id})
        if status is JobStatus.FAILED:
            if held and held[0] == "execution_error":
                return held
            error = error or {}
            return "execution_error", {
                "prompt_id": job_id, "node_id": error.get("node_id"), "node_type": error.get("node_type"),
                "executed": [], "exception_message": error.get("message", ""),
                "exception_type": error.get("exception_type") or "Exception",
                "traceback": error.get("traceback") or [], "current_inputs": {}, "current_outputs": {},
            }
        base = held[1] if held and held[0] == "execution_interrupted" else {
            "prompt_id": job_id, "node_id": self.progress.get("node"), "node_type": None, "executed": [],
        }
        return "execution_interrupted", {**base, "reason": status.value}

    def announce_end(self, job: JobRecord, error: dict[str, Any] | None) -> None:
        """Send the terminal event then `executing {node: null}`: the job's history is stored."""
        if self.ended.is_set():
            return
        self.ended.set()
        event, data = self._terminal_event(job.status, job.error)
        self._forward(event, data)
        self._forward("executing", {"node": None, "display_node": None, "prompt_id": job.id})
