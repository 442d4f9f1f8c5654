"""A fast stand-in for the real executor, for worker tests (in-process and `--runtime`).

The workflow's node "1" says what to do: `seconds` to run (interruptible), `fail` to raise a
node error (`"SlowDown"` in the message makes it retryable), `fail_times` to fail only the first
N attempts (counted in a file beside the outputs). It writes one PNG-looking output per job into
settings.output_dir, as SaveImage would, and counts executions per job there.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from comfyd.engine.context import NodeEnvironment
from comfyd.engine.jobs import JobRuntime
from comfyd.engine.schema import NodeRegistry
from comfyd.settings import Settings


def workflow(seconds: float = 0.0, seed: int = 0, fail: str | None = None, fail_times: int = 0) -> dict:
    inputs: dict[str, Any] = {"seconds": seconds, "seed": seed}
    if fail:
        inputs["fail"] = fail
        inputs["fail_times"] = fail_times
    return {"1": {"class_type": "FakeSave", "inputs": inputs}}


def executions(output_dir: Path, job_id: str) -> int:
    marker = Path(output_dir) / f"{job_id}.runs"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


class FakeExecutor:
    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def execute(self, req: Any, job_id: str, listener=None, interrupt: threading.Event | None = None,
                extra_data: dict | None = None) -> Any:
        emit = listener or (lambda event, data: None)
        inputs = req.prompt["1"]["inputs"]
        with self._lock:
            with open(self.output_dir / f"{job_id}.runs", "a") as fh:
                fh.write(f"{time.time()}\n")
            attempt = executions(self.output_dir, job_id)
        emit("execution_start", {"prompt_id": job_id})
        emit("executing", {"node": "1", "display_node": "1", "prompt_id": job_id})
        started = time.monotonic()
        while time.monotonic() - started < float(inputs.get("seconds", 0)):
            if interrupt is not None and interrupt.is_set():
                emit("execution_interrupted", {"prompt_id": job_id, "node_id": "1"})
                return SimpleNamespace(status="interrupted", outputs={}, node_timings={}, error=None)
            time.sleep(0.02)
        if inputs.get("fail") and attempt <= int(inputs.get("fail_times", 0) or 10**9):
            error = {"type": "execution_error", "exception_type": "RuntimeError", "exception_message": inputs["fail"],
                     "node_id": "1", "node_type": "FakeSave", "traceback": []}
            emit("execution_error", {"prompt_id": job_id, **error})
            return SimpleNamespace(status="error", outputs={}, node_timings={"1": 0.01}, error=error)
        filename = f"{job_id}_00001_.png"
        payload = b"\x89PNG\r\n\x1a\n" + json.dumps({"job": job_id, "seed": inputs.get("seed")}).encode()
        (self.output_dir / filename).write_bytes(payload)
        ui = {"images": [{"filename": filename, "subfolder": "", "type": "output"}]}
        emit("executed", {"node": "1", "output": ui, "prompt_id": job_id})
        emit("execution_success", {"prompt_id": job_id})
        return SimpleNamespace(status="success", outputs={"1": ui}, node_timings={"1": time.monotonic() - started},
                               error=None)


def build(settings: Settings) -> JobRuntime:
    """`python -m comfyd.worker --runtime fake_runtime:build` (with this folder on PYTHONPATH)."""
    return JobRuntime(registry=NodeRegistry(), env=NodeEnvironment(settings),
                      executor=FakeExecutor(Path(settings.output_dir)), validator=lambda req, reg, env: ["1"])
