"""What a node sees while it runs: its environment (paths, model manager) and its job."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.engine.errors import ExecutionInterrupted

if TYPE_CHECKING:
    from comfyd.settings import Settings


@dataclass
class NodeEnvironment:
    """Long-lived services the edge builds once and hands to every job.

    `models` is the model manager (comfyd.models.manager.ModelManager); typed as Any so the
    engine does not import the models package.
    """

    settings: Settings
    models: Any = None

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.output_dir)

    @property
    def input_dir(self) -> Path:
        return Path(self.settings.input_dir)

    @property
    def temp_dir(self) -> Path:
        return Path(self.settings.temp_dir)


# Internal event (never sent to clients): a node starts or ends loading a model.
MODEL_LOADING = "comfyd.model_loading"

ProgressFn = Callable[[int, int, Any], None]
EmitFn = Callable[[str, dict[str, Any]], None]


@dataclass
class NodeContext:
    """Per node execution. Nodes call `progress` per step and `check_interrupted` between steps."""

    env: NodeEnvironment
    job_id: str
    node_id: str
    class_type: str
    prompt: dict[str, Any] = field(default_factory=dict)
    extra_pnginfo: dict[str, Any] | None = None
    interrupt: threading.Event = field(default_factory=threading.Event)
    on_progress: ProgressFn | None = None
    # Raw event channel, e.g. for binary websocket frames (SaveImageWebsocket, previews).
    on_emit: EmitFn | None = None
    # The job's priority (1..10, higher first): the step batcher never makes a job above the
    # default wait for companions.
    priority: int = 1

    def check_interrupted(self) -> None:
        if self.interrupt.is_set():
            raise ExecutionInterrupted(f"job {self.job_id} interrupted at node {self.node_id}")

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report step `value` of `total`; also the point where an interrupt takes effect."""
        if self.on_progress is not None:
            self.on_progress(value, total, preview)
        self.check_interrupted()

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """Mark a model load: its time does not count against the job's wall-time budget (the
        model is shared; a cold start must not time out the first job), and a crash during it is
        not blamed on this job alone."""
        self.emit(MODEL_LOADING, {"active": True, "node": self.node_id})
        try:
            yield
        finally:
            self.emit(MODEL_LOADING, {"active": False, "node": self.node_id})

    def emit(self, event: str, data: dict[str, Any]) -> None:
        if self.on_emit is not None:
            self.on_emit(event, data)
