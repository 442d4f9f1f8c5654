"""Runs a validated workflow: deterministic order, node-output cache, events, interrupts.

One `Executor` serves a whole process; `execute` is thread-safe (all per-job state lives in a
`_JobRun`) and several jobs may run at once sharing one `NodeCache`.

Per job, in ComfyUI's order: execution_start; execution_cached (every needed node whose output
is cached, and `executed` again for cached output nodes); then per node executing, progress...,
executed (when it has UI output); finally execution_success, execution_error or
execution_interrupted. The closing `executing {node: null}` is the job layer's, sent after it
has stored the history.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from comfyd.engine import events
from comfyd.engine.cache import NodeCache, canonical_json, make_cache_key
from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.errors import ExecutionInterrupted, WorkflowValidationError, is_retryable
from comfyd.engine.events import Listener, SafeListener, format_value, full_type_name, timestamp_ms
from comfyd.engine.graph import Link, WorkflowRequest
from comfyd.engine.schema import Node, NodeOutput, NodeRegistry, NodeSchema
from comfyd.engine.topo import node_sort_key
from comfyd.engine.validate import ServiceLimits, WorkflowPlan, plan_workflow

log = logging.getLogger(__name__)

ExecutionStatus = Literal["success", "error", "interrupted"]

# Hidden inputs: schema name -> keyword the node's run() receives.
HIDDEN_KWARGS = {"PROMPT": "prompt", "EXTRA_PNGINFO": "extra_pnginfo", "UNIQUE_ID": "unique_id"}


@dataclass
class ExecutionResult:
    status: ExecutionStatus
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> UI output
    node_timings: dict[str, float] = field(default_factory=dict)  # node id -> seconds (nodes run)
    cached: list[str] = field(default_factory=list)  # nodes whose outputs came from the cache
    error: dict[str, Any] | None = None  # {type, message, node_id, node_type, traceback, retryable}
    values: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # followed node + output nodes
    executed: list[str] = field(default_factory=list)  # nodes run or taken from the cache, in order


class Executor:
    def __init__(
        self,
        registry: NodeRegistry,
        env: NodeEnvironment,
        cache: NodeCache | None = None,
        *,
        limits: ServiceLimits | None = None,
        max_workers: int = 4,
        cache_output_nodes: bool = False,
    ) -> None:
        """`cache` defaults to one bounded by `settings.node_cache_bytes`. `max_workers` bounds
        the nodes one job runs at once in parallel mode.

        Output nodes (SaveImage, PreviewImage) run on every job by default, so every job gets its
        own files even when all its inputs are cached; ComfyUI caches them like any other node
        (an identical prompt then writes nothing): `cache_output_nodes=True` does that.
        """
        self.registry = registry
        self.env = env
        if cache is None:
            cache = NodeCache(max_bytes=getattr(env.settings, "node_cache_bytes", 2 * 1024**3))
        self.cache = cache
        self.limits = limits
        self.max_workers = max(1, max_workers)
        self.cache_output_nodes = cache_output_nodes

    def execute(
        self,
        req: WorkflowRequest,
        job_id: str,
        listener: Listener | None = None,
        interrupt: threading.Event | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """Run the workflow; never raises for a node's failure (see ExecutionResult.status)."""
        run = _JobRun(
            executor=self,
            req=req,
            job_id=job_id,
            emit=SafeListener(listener),
            interrupt=interrupt if interrupt is not None else threading.Event(),
            extra_data=extra_data if extra_data is not None else req.extra_data,
        )
        return run.execute()


@dataclass
class _Failure:
    node_id: str | None
    exc: BaseException
    traceback: list[str]
    inputs: dict[str, Any]


class _JobRun:
    """All state of one execution of one workflow."""

    def __init__(
        self,
        executor: Executor,
        req: WorkflowRequest,
        job_id: str,
        emit: SafeListener,
        interrupt: threading.Event,
        extra_data: dict[str, Any],
    ) -> None:
        self.ex = executor
        self.req = req
        # This run's copy of the API prompt: the nodes read it (PNG metadata), and it gains
        # "is_changed" values the caller's dict should not (see _record_is_changed).
        self.prompt: dict[str, Any] = dict(req.prompt) if isinstance(req.prompt, dict) else {}
        self.job_id = job_id
        self.emit = emit
        self.interrupt = interrupt
        self.extra_pnginfo = extra_data.get("extra_pnginfo")
        self.plan: WorkflowPlan | None = None
        self.schemas: dict[str, NodeSchema] = {}
        self.instances: dict[str, Node] = {}
        self.contexts: dict[str, NodeContext] = {}
        self.keys: dict[str, str] = {}
        self.cacheable: set[str] = set()
        # Results so far; guarded by _lock because parallel nodes finish on pool threads.
        self._lock = threading.Lock()
        self.values: dict[str, tuple[Any, ...]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.timings: dict[str, float] = {}
        self.executed: list[str] = []
        self.cached: list[str] = []

    # ---------------------------------------------------------------------------- driver

    def execute(self) -> ExecutionResult:
        self._send(events.EXECUTION_START, {"prompt_id": self.job_id, "timestamp": timestamp_ms()})
        try:
            return self._execute()
        except Exception as exc:  # a bug of the engine itself: still a result, never a raise
            log.exception("job %s: unexpected engine error", self.job_id)
            return self._failed(_Failure(None, exc, traceback.format_tb(exc.__traceback__), {}))

    def _execute(self) -> ExecutionResult:
        try:
            self.plan = plan_workflow(self.req, self.ex.registry, self.ex.env, self.ex.limits)
        except WorkflowValidationError as exc:
            return self._validation_failed(exc)
        plan = self.plan
        for node_id in plan.order:
            node_cls = self.ex.registry.get(self.req.graph.nodes[node_id].class_type)
            assert node_cls is not None  # validated
            self.schemas[node_id] = node_cls.schema
            try:
                self.instances[node_id] = node_cls()
            except Exception as exc:
                return self._failed(_Failure(node_id, exc, traceback.format_tb(exc.__traceback__), {}))
            self.contexts[node_id] = self._context(node_id)

        self._compute_keys()
        hits = {n: e for n in plan.order if n in self.cacheable and (e := self.ex.cache.get(self.keys[n]))}
        to_run = self._nodes_to_run(set(hits))
        self.cached = [n for n in plan.order if n in hits]
        self._send(
            events.EXECUTION_CACHED,
            {"nodes": list(self.cached), "prompt_id": self.job_id, "timestamp": timestamp_ms()},
        )
        for node_id in self.cached:
            entry = hits[node_id]
            self.values[node_id] = entry.values
            self.executed.append(node_id)
            if entry.ui is not None and self.schemas[node_id].output_node:
                self.outputs[node_id] = entry.ui
                self._send_executed(node_id, entry.ui)

        order = [n for n in plan.order if n in to_run]
        if self.req.execution_mode == "parallel" and len(order) > 1:
            failure = self._run_parallel(order)
        else:
            failure = self._run_sequential(order)

        if failure is None:
            self._send(events.EXECUTION_SUCCESS, {"prompt_id": self.job_id, "timestamp": timestamp_ms()})
            return self._result("success")
        if isinstance(failure.exc, ExecutionInterrupted):
            return self._interrupted(failure)
        return self._failed(failure)

    def _nodes_to_run(self, cached: set[str]) -> set[str]:
        """Nodes the targets need that are not cached; a cached node's inputs are not needed."""
        assert self.plan is not None
        needed: set[str] = set()
        stack = list(self.plan.targets)
        while stack:
            node_id = stack.pop()
            if node_id in needed or node_id in cached:
                continue
            needed.add(node_id)
            stack.extend(self.plan.deps[node_id])
        return needed

    def _run_sequential(self, order: list[str]) -> _Failure | None:
        for node_id in order:
            failure = self._run_node(node_id)
            if failure is not None:
                return failure
        return None

    def _run_parallel(self, order: list[str]) -> _Failure | None:
        """Run every node whose inputs are ready at once (up to max_workers); same results."""
        assert self.plan is not None
        to_run = set(order)
        waiting = {n: {d for d in self.plan.deps[n] if d in to_run} for n in order}
        dependents: dict[str, list[str]] = {n: [] for n in order}
        for node_id, needs in waiting.items():
            for dep in needs:
                dependents[dep].append(node_id)
        ready = [n for n in order if not waiting[n]]
        failure: _Failure | None = None
        running: dict[Future[_Failure | None], str] = {}
        workers = min(self.ex.max_workers, len(order))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"comfyd-{self.job_id[:8]}") as pool:
            while ready or running:
                while ready and failure is None and len(running) < workers:
                    node_id = ready.pop(0)
                    running[pool.submit(self._run_node, node_id)] = node_id
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: node_sort_key(running[f])):
                    node_id = running.pop(future)
                    outcome = future.result()
                    if outcome is not None:
                        failure = failure or outcome
                        continue
                    for child in dependents[node_id]:
                        waiting[child].discard(node_id)
                        if not waiting[child]:
                            ready.append(child)
                ready.sort(key=node_sort_key)
                if failure is not None:
                    ready.clear()
        return failure

    # ---------------------------------------------------------------------------- one node

    def _run_node(self, node_id: str) -> _Failure | None:
        """Run one node; its exception comes back as a _Failure, never raised."""
        kwargs: dict[str, Any] = {}
        try:
            self.contexts[node_id].check_interrupted()
            kwargs = self._kwargs(node_id)
            self._send(events.EXECUTING, {"node": node_id, "display_node": node_id, "prompt_id": self.job_id})
            started = time.perf_counter()
            raw = self.instances[node_id].run(self.contexts[node_id], **kwargs)
            output = self._normalise(node_id, raw)
            elapsed = time.perf_counter() - started
        except Exception as exc:
            return _Failure(node_id, exc, traceback.format_tb(exc.__traceback__), kwargs)
        with self._lock:
            self.values[node_id] = output.values
            self.timings[node_id] = elapsed
            self.executed.append(node_id)
            if output.ui is not None:
                self.outputs[node_id] = output.ui
        if output.ui is not None:
            self._send_executed(node_id, output.ui)
        if node_id in self.cacheable and (
            self.ex.cache_output_nodes or not self.schemas[node_id].output_node
        ):
            self.ex.cache.put(self.keys[node_id], output.values, output.ui)
        return None

    def _kwargs(self, node_id: str) -> dict[str, Any]:
        assert self.plan is not None
        kwargs: dict[str, Any] = {}
        for name, value in self.plan.inputs[node_id].items():
            if isinstance(value, Link):
                with self._lock:
                    kwargs[name] = self.values[value.node_id][value.output]
            else:
                kwargs[name] = value
        kwargs.update(self._hidden(node_id))
        return kwargs

    def _hidden(self, node_id: str) -> dict[str, Any]:
        available = {"PROMPT": self.prompt, "EXTRA_PNGINFO": self.extra_pnginfo, "UNIQUE_ID": node_id}
        return {HIDDEN_KWARGS[h]: available[h] for h in self.schemas[node_id].hidden if h in HIDDEN_KWARGS}

    def _normalise(self, node_id: str, raw: Any) -> NodeOutput:
        schema = self.schemas[node_id]
        if isinstance(raw, NodeOutput):
            output = NodeOutput(values=tuple(raw.values), ui=raw.ui)
        elif isinstance(raw, tuple | list):
            output = NodeOutput(values=tuple(raw))
        elif raw is None:
            output = NodeOutput()
        else:
            raise TypeError(
                f"{schema.class_type}.run returned {type(raw).__name__}; expected NodeOutput or a tuple of values"
            )
        if len(output.values) != len(schema.outputs):
            raise TypeError(
                f"{schema.class_type}.run returned {len(output.values)} value(s) "
                f"but its schema declares {len(schema.outputs)} output(s)"
            )
        return output

    def _context(self, node_id: str) -> NodeContext:
        def on_progress(value: int, total: int, preview: Any = None) -> None:
            data = {"value": value, "max": total, "prompt_id": self.job_id, "node": node_id}
            if preview is not None:
                # The step's x0 latent; listeners that send JSON must pop it (jobs.run_job does).
                data["preview"] = preview
            self._send(events.PROGRESS, data)

        return NodeContext(
            env=self.ex.env,
            job_id=self.job_id,
            node_id=node_id,
            class_type=self.req.graph.nodes[node_id].class_type,
            prompt=self.prompt,
            extra_pnginfo=self.extra_pnginfo,
            interrupt=self.interrupt,
            on_progress=on_progress,
            on_emit=self._send,
            priority=int(getattr(self.req, "priority", 1) or 1),
        )

    # ---------------------------------------------------------------------------- cache keys

    def _compute_keys(self) -> None:
        """Keys in topological order: each node's key folds in its upstream nodes' keys."""
        assert self.plan is not None
        for node_id in self.plan.order:
            inputs = self.plan.inputs[node_id]
            literals = {k: v for k, v in inputs.items() if not isinstance(v, Link)}
            links = {k: v for k, v in inputs.items() if isinstance(v, Link)}
            cacheable = all(link.node_id in self.cacheable for link in links.values())
            fingerprint = None
            instance = self.instances[node_id]
            if cacheable or instance.fingerprint_is_comfyui_is_changed:
                try:
                    fingerprint = instance.fingerprint(self.contexts[node_id], **literals)
                except Exception:
                    log.warning("fingerprint of node %s failed; not cached", node_id, exc_info=True)
                    cacheable = False
                else:
                    self._record_is_changed(node_id, fingerprint)
            if not cacheable:
                self.keys[node_id] = f"uncacheable:{uuid.uuid4().hex}"
                continue
            hidden = {k: canonical_json(v) for k, v in self._hidden(node_id).items()}
            self.keys[node_id] = make_cache_key(
                self.schemas[node_id].class_type,
                literals,
                {name: (self.keys[link.node_id], link.output) for name, link in links.items()},
                {"fingerprint": fingerprint, "hidden": hidden},
            )
            self.cacheable.add(node_id)

    def _record_is_changed(self, node_id: str, fingerprint: Any) -> None:
        """Write the value into the prompt as ComfyUI does for IS_CHANGED nodes (see Node).

        Keys are computed in topological order, so nodes that read the prompt (SaveImage's
        hidden PROMPT) come later and see it, in their cache keys as in the PNG they write.
        """
        if not self.instances[node_id].fingerprint_is_comfyui_is_changed:
            return
        node = self.prompt.get(node_id)
        if isinstance(node, dict):
            self.prompt[node_id] = {**node, "is_changed": [fingerprint]}

    # ---------------------------------------------------------------------------- outcomes

    def _send(self, event: str, data: dict[str, Any]) -> None:
        self.emit(event, data)

    def _send_executed(self, node_id: str, ui: dict[str, Any]) -> None:
        self._send(
            events.EXECUTED,
            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.job_id},
        )

    def _result(self, status: ExecutionStatus, error: dict[str, Any] | None = None) -> ExecutionResult:
        wanted = set(self.plan.targets) if self.plan is not None else set()
        with self._lock:
            return ExecutionResult(
                status=status,
                outputs=dict(self.outputs),
                node_timings=dict(self.timings),
                cached=list(self.cached),
                error=error,
                values={n: v for n, v in self.values.items() if n in wanted},
                executed=list(self.executed),
            )

    def _class_type(self, node_id: str | None) -> str | None:
        node = self.req.graph.nodes.get(node_id) if node_id is not None else None
        return node.class_type if node is not None else None

    def _failed(self, failure: _Failure) -> ExecutionResult:
        exc = failure.exc
        node_type = self._class_type(failure.node_id)
        with self._lock:
            executed = list(self.executed)
            current_outputs = list(self.values)
        self._send(
            events.EXECUTION_ERROR,
            {
                "prompt_id": self.job_id,
                "node_id": failure.node_id,
                "node_type": node_type,
                "executed": executed,
                "exception_message": str(exc),
                "exception_type": full_type_name(type(exc)),
                "traceback": failure.traceback,
                "current_inputs": {
                    k: [format_value(v)] for k, v in failure.inputs.items() if k not in _HIDDEN
                },
                "current_outputs": current_outputs,
                "timestamp": timestamp_ms(),
            },
        )
        error = {
            "type": full_type_name(type(exc)),
            "message": str(exc),
            "node_id": failure.node_id,
            "node_type": node_type,
            "traceback": failure.traceback,
            "retryable": is_retryable(exc),
        }
        return self._result("error", error)

    def _interrupted(self, failure: _Failure) -> ExecutionResult:
        node_type = self._class_type(failure.node_id)
        with self._lock:
            executed = list(self.executed)
        self._send(
            events.EXECUTION_INTERRUPTED,
            {
                "prompt_id": self.job_id,
                "node_id": failure.node_id,
                "node_type": node_type,
                "executed": executed,
                "timestamp": timestamp_ms(),
            },
        )
        error = {
            "type": "interrupted",
            "message": str(failure.exc) or "interrupted",
            "node_id": failure.node_id,
            "node_type": node_type,
            "traceback": [],
            "retryable": False,
        }
        return self._result("interrupted", error)

    def _validation_failed(self, exc: WorkflowValidationError) -> ExecutionResult:
        """Validated at submission, invalid now (a model file removed since, say)."""
        message = str(exc)
        self._send(
            events.EXECUTION_ERROR,
            {
                "prompt_id": self.job_id,
                "node_id": None,
                "node_type": None,
                "executed": [],
                "exception_message": message,
                "exception_type": full_type_name(type(exc)),
                "traceback": [],
                "current_inputs": {},
                "current_outputs": [],
                "timestamp": timestamp_ms(),
            },
        )
        error = {
            "type": "validation_error",
            "message": message,
            "node_id": None,
            "node_type": None,
            "traceback": [],
            "retryable": False,
            "body": exc.body,
        }
        return self._result("error", error)


_HIDDEN = frozenset(HIDDEN_KWARGS.values())
