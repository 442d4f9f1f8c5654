"""Execution in a child process per device (`COMFYD_ISOLATION=process`), as Cog does it.

`IsolatedExecutor` has the executor's `execute(req, job_id, listener, interrupt, extra_data)`;
the server's and the worker's job layer call it unchanged. The child builds its own runtime
once (nodes, model manager, node cache: models stay loaded between jobs) and runs one workflow
at a time; every event it emits comes back over a pipe, in order, before the result.

What isolation buys:
- a node that crashes the interpreter (a segfault in native code, an abort, the kernel's OOM
  killer) ends the child, not the server or worker: the job fails with
  `exception_type: ChildProcessCrashed` (the signal named) and the next job starts a new child;
- a cancel or a timeout (the job's interrupt switch) that the child does not honour within
  `kill_grace_s` (a node hung in native code) kills the child: the job ends interrupted, and
  the next job starts a new child. A CUDA context left unusable goes with its process.
Costs: one process start and model load per crash or kill, a pickle round trip per event
(`bench/isolation_overhead.py` measures the per-job overhead).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

log = logging.getLogger("comfyd.isolation")

DEFAULT_KILL_GRACE_S = 10.0
START_TIMEOUT_S = 600.0  # building the child's runtime may import torch and run a warm-up


def _load_factory(spec: str | None) -> Any:
    if not spec:
        from comfyd.runtime import build_runtime

        return lambda settings: build_runtime(settings, isolated_child=True)
    module_name, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def _child_main(settings: Any, factory_spec: str | None, conn: Connection, interrupt: Any) -> None:
    """The child: build the runtime once, then run each request it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        runtime = _load_factory(factory_spec)(settings)
    except BaseException as exc:
        conn.send(("setup_failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    current: dict[str, threading.Event] = {}

    def watch() -> None:  # the parent's interrupt (a multiprocessing.Event) -> this job's switch
        while True:
            interrupt.wait()
            switch = current.get("job")
            if switch is not None:
                switch.set()
            time.sleep(0.05)  # the parent clears it when the next job starts

    threading.Thread(target=watch, name="interrupt-watch", daemon=True).start()

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "exit":
            return
        if message[0] == "free":
            if runtime.release is not None:
                runtime.release(*message[1])
            conn.send(("freed", None))
            continue
        _, req, job_id, extra_data = message
        local = current["job"] = threading.Event()

        def listener(event: str, data: dict[str, Any]) -> None:
            conn.send(("event", event, data))

        try:
            raw = runtime.executor.execute(req, job_id=job_id, listener=listener, interrupt=local,
                                           extra_data=extra_data)
            conn.send(("result", str(getattr(raw, "status", "error")), dict(getattr(raw, "outputs", {}) or {}),
                       dict(getattr(raw, "node_timings", {}) or {}), getattr(raw, "error", None)))
        except Exception as exc:
            conn.send(("result", "error", {}, {}, {
                "type": "execution_error", "exception_type": type(exc).__name__, "exception_message": str(exc),
                "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__), "node_id": None,
            }))


class ChildProcessCrashed(RuntimeError):
    """The execution child died mid-job (signal or exit code in the message)."""


class IsolatedExecutor:
    """An executor whose workflows run in one child process (per device), restarted as needed."""

    def __init__(self, settings: Any, factory_spec: str | None = None, kill_grace_s: float = DEFAULT_KILL_GRACE_S,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.settings = settings
        self.factory_spec = factory_spec
        self.kill_grace_s = kill_grace_s
        self.start_timeout_s = start_timeout_s
        self._context = multiprocessing.get_context("spawn")  # no inherited threads or CUDA state
        self._lock = threading.Lock()  # one job at a time per child (per device)
        self._process: Any = None
        self._conn: Connection | None = None
        self._interrupt: Any = None
        self.starts = 0  # children started (the first, then one per crash or kill)

    # --- the child's life ----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def _ensure_child(self) -> Connection:
        if self._process is not None and self._process.is_alive() and self._conn is not None:
            return self._conn
        self._reap()
        parent, child = self._context.Pipe()
        self._interrupt = self._context.Event()
        self._process = self._context.Process(target=_child_main, name="comfyd-exec",
                                              args=(self.settings, self.factory_spec, child, self._interrupt),
                                              daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        self.starts += 1
        if not parent.poll(self.start_timeout_s):
            self._kill()
            raise RuntimeError("the execution process did not start in time")
        try:
            kind, detail = parent.recv()
        except EOFError:
            self._reap()
            raise RuntimeError("the execution process died while starting") from None
        if kind != "ready":
            self._reap()
            raise RuntimeError(f"the execution process could not build its runtime: {detail}")
        log.info("execution process %d ready", self._process.pid)
        return parent

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.join(timeout=10)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None

    def start(self) -> None:
        """Start the child now (build its runtime, run the warm-up) instead of at the first job."""
        with self._lock:
            self._ensure_child()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._process is not None and self._process.is_alive():
                try:
                    self._conn.send(("exit",))
                    self._process.join(timeout=10)
                except (OSError, EOFError):
                    pass
            self._kill()

    def free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            if self._conn is None or self._process is None or not self._process.is_alive():
                return
            self._conn.send(("free", (unload_models, free_memory)))
            self._conn.recv()

    # --- one job -------------------------------------------------------------------------
    def execute(self, req: Any, job_id: str, listener: Any = None, interrupt: threading.Event | None = None,
                extra_data: dict[str, Any] | None = None) -> Any:
        emit = listener or (lambda event, data: None)
        with self._lock:
            conn = self._ensure_child()
            self._interrupt.clear()
            conn.send(("run", req, job_id, dict(extra_data or {})))
            interrupted_at: float | None = None
            while True:
                if interrupt is not None and interrupt.is_set() and interrupted_at is None:
                    interrupted_at = time.monotonic()
                    self._interrupt.set()  # cooperative first: the executor checks between steps
                if interrupted_at is not None and time.monotonic() - interrupted_at > self.kill_grace_s:
                    log.error("job %s: execution process ignored the interrupt for %.0f s; killing it",
                              job_id, self.kill_grace_s)
                    self._kill()
                    emit("execution_interrupted", {"prompt_id": job_id, "node_id": None, "node_type": None,
                                                   "executed": []})
                    return SimpleNamespace(status="interrupted", outputs={}, node_timings={}, error=None)
                try:
                    if not conn.poll(0.05):
                        if not self._process.is_alive():
                            return self._crashed(job_id, emit)
                        continue
                    message = conn.recv()
                except (EOFError, OSError):
                    return self._crashed(job_id, emit)
                if message[0] == "event":
                    emit(message[1], message[2])
                elif message[0] == "result":
                    _, status, outputs, timings, error = message
                    return SimpleNamespace(status=status, outputs=outputs, node_timings=timings, error=error)

    def _crashed(self, job_id: str, emit: Any) -> Any:
        process = self._process
        if process is not None:
            process.join(timeout=10)
        code = process.exitcode if process is not None else None
        self._reap()
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        message = f"the execution process died ({how}) while running the job; a new one serves the next job"
        log.error("job %s: %s", job_id, message)
        error = {"type": "execution_error", "exception_type": ChildProcessCrashed.__name__,
                 "exception_message": message, "node_id": None, "node_type": None, "traceback": [],
                 "retryable": False}
        emit("execution_error", {"prompt_id": job_id, **error})
        return SimpleNamespace(status="error", outputs={}, node_timings={}, error=error)
