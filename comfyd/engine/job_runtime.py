"""What running a job needs from the outside: the executor of workflows (`JobRuntime`) and the
backends a job writes to (`JobBackends`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from comfyd.engine.interfaces import (
    JobRecord,
    JobStore,
    Metrics,
    Notifier,
    OutputStore,
)

if TYPE_CHECKING:
    from comfyd.engine.context import NodeEnvironment
    from comfyd.engine.schema import NodeRegistry


# A listener receives ComfyUI websocket events: (event type, data). Data always has prompt_id.
EventListener = Callable[[str, dict[str, Any]], None]


class WorkflowExecutor(Protocol):
    """comfyd.engine.executor.Executor, or a test double with the same `execute`."""

    def execute(
        self,
        req: Any,
        job_id: str,
        listener: EventListener | None = None,
        interrupt: threading.Event | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> Any: ...


@dataclass
class JobRuntime:
    """What executes workflows in this process: the node registry, the node environment
    (settings + model manager) and the executor. Built once per process by the executor
    factory (`comfyd.runtime.build_runtime`), which imports the nodes (and torch) lazily."""

    registry: NodeRegistry
    env: NodeEnvironment
    executor: WorkflowExecutor
    # Validation function; defaults to comfyd.engine.validate.validate_workflow.
    validator: Callable[[Any, NodeRegistry, NodeEnvironment], list[str]] | None = None
    # Frees cached models / node outputs (POST /free); optional.
    release: Callable[[bool, bool], None] | None = None

    def parse(self, body: Any) -> Any:
        """A WorkflowRequest from a request body (either accepted form)."""
        from comfyd.engine.graph import parse_workflow

        return parse_workflow(body)

    def validate(self, req: Any) -> list[str]:
        """Output node ids to execute; raises WorkflowValidationError with ComfyUI's 400 body."""
        if self.validator is not None:
            return self.validator(req, self.registry, self.env)
        from comfyd.engine.validate import validate_workflow

        return validate_workflow(req, self.registry, self.env)

    def request_for(self, job: JobRecord) -> Any:
        """The WorkflowRequest to execute for a stored job."""
        body: dict[str, Any] = {"prompt": job.workflow, "extra_data": job.extra_data, "client_id": job.client_id}
        targets = job.extra_data.get("partial_execution_targets")
        if isinstance(targets, list):
            body["partial_execution_targets"] = targets
        req = self.parse(body)
        return replace(
            req, node_id=job.node_id or req.node_id, execution_mode=job.execution_mode, priority=job.priority,
        )

    def output_nodes(self, job: JobRecord) -> list[str]:
        """ComfyUI's outputs_to_execute for views: the requested targets, or every output node."""
        targets = job.extra_data.get("partial_execution_targets")
        if isinstance(targets, list):
            return [str(t) for t in targets]
        found = []
        for node_id, node in job.workflow.items():
            cls = self.registry.get(node.get("class_type", "")) if isinstance(node, dict) else None
            if cls is not None and cls.schema.output_node:
                found.append(node_id)
        return found

    def free(self, unload_models: bool, free_memory: bool) -> None:
        if self.release is not None:
            self.release(unload_models, free_memory)


class JobBackends(Protocol):
    """The backends run_job writes to. `comfyd.backends.Services` has these attributes."""

    job_store: JobStore
    output_store: OutputStore
    metrics: Metrics
    notifier: Notifier
