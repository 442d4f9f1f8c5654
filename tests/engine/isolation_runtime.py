"""The runtime an isolated execution child builds in tests/engine/test_isolation.py
(`IsolatedExecutor(settings, "isolation_runtime:build")`). Node "1"'s `mode` says what to do:
"ok" (emit `steps` progress events, report this process's id), "segfault" (crash the
interpreter in native code), "hang" (sleep, ignoring the interrupt, as native code would)."""

from __future__ import annotations

import ctypes
import os
import time
from types import SimpleNamespace
from typing import Any

from comfyd.engine.context import NodeEnvironment
from comfyd.engine.jobs import JobRuntime
from comfyd.engine.schema import NodeRegistry


class ScriptedExecutor:
    def __init__(self) -> None:
        self.loaded_at = time.time()  # "models": loaded once per process

    def execute(self, req: Any, job_id: str, listener=None, interrupt=None, extra_data=None) -> Any:
        emit = listener or (lambda event, data: None)
        inputs = req.prompt["1"]["inputs"]
        mode = inputs.get("mode", "ok")
        emit("execution_start", {"prompt_id": job_id})
        if mode == "segfault":
            ctypes.string_at(0)  # SIGSEGV
        if mode == "hang":
            while True:
                time.sleep(0.05)
        steps = int(inputs.get("steps", 3))
        for step in range(1, steps + 1):
            if interrupt is not None and interrupt.is_set():
                emit("execution_interrupted", {"prompt_id": job_id, "node_id": "1"})
                return SimpleNamespace(status="interrupted", outputs={}, node_timings={}, error=None)
            emit("progress", {"prompt_id": job_id, "node": "1", "value": step, "max": steps})
            time.sleep(float(inputs.get("step_s", 0)))
        ui = {"pid": [os.getpid()], "loaded_at": [self.loaded_at]}
        emit("executed", {"prompt_id": job_id, "node": "1", "output": ui})
        emit("execution_success", {"prompt_id": job_id})
        return SimpleNamespace(status="success", outputs={"1": ui}, node_timings={"1": 0.001}, error=None)


def build(settings: Any) -> JobRuntime:
    return JobRuntime(registry=NodeRegistry(), env=NodeEnvironment(settings), executor=ScriptedExecutor(),
                      validator=lambda req, reg, env: ["1"])
