"""Server tests: a real uvicorn server on a free loopback port, per test.

Most tests run the real engine (parse, validate, Executor) on small fake nodes registered in a
private NodeRegistry, so queue/limit behaviour is tested in milliseconds; the ComfyUI client
flow also runs on the real nodes with a tiny random-weight checkpoint (test_comfy_flow.py).
"""

from __future__ import annotations

import dataclasses
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from comfyd.engine.cache import NodeCache
from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.errors import RetryableError
from comfyd.engine.executor import Executor
from comfyd.engine.interfaces import JobRecord
from comfyd.engine.jobs import JobRuntime
from comfyd.engine.schema import (
    Combo,
    Float,
    Int,
    Link,
    Node,
    NodeOutput,
    NodeRegistry,
    NodeSchema,
    OutputSpec,
    String,
)
from comfyd.runtime import Services, build_services
from comfyd.safepath import safe_join
from comfyd.server import create_app
from comfyd.settings import Settings

# ---- fake nodes ----------------------------------------------------------------------------------


@dataclass
class Recorder:
    """What the fake nodes did: (job_id, tag, start, end) per TestSleep run; failure counters."""

    runs: list[tuple[str, str, float, float]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, job_id: str, tag: str, start: float, end: float) -> None:
        with self.lock:
            self.runs.append((job_id, tag, start, end))

    def fail_once_more(self, tag: str, times: int) -> bool:
        with self.lock:
            done = self.failures.get(tag, 0)
            if done >= times:
                return False
            self.failures[tag] = done + 1
            return True

    def order(self) -> list[str]:
        with self.lock:
            return [tag for _, tag, _, _ in sorted(self.runs, key=lambda r: r[2])]

    def max_overlap(self) -> int:
        with self.lock:
            events = sorted([(s, 1) for _, _, s, _ in self.runs] + [(e, -1) for _, _, _, e in self.runs])
        best = current = 0
        for _, delta in events:
            current += delta
            best = max(best, current)
        return best


def png_bytes(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_registry(recorder: Recorder) -> NodeRegistry:
    registry = NodeRegistry()

    @registry.register
    class TestSleep(Node):
        """Sleeps `seconds` in `steps` progress steps (interruptible at each step)."""

        schema = NodeSchema(
            class_type="TestSleep",
            inputs=(Float("seconds", 0.0, min=0.0, max=60.0), Int("steps", 2, min=1, max=1000), String("tag", "")),
            outputs=(OutputSpec("INT", "value"),),
        )

        def run(self, ctx: NodeContext, seconds: float, steps: int, tag: str) -> tuple[int]:
            start = time.monotonic()
            try:
                for i in range(steps):
                    time.sleep(seconds / steps)
                    ctx.progress(i + 1, steps)
            finally:
                recorder.record(ctx.job_id, tag, start, time.monotonic())
            return (steps,)

    @registry.register
    class TestFlaky(Node):
        """Fails `fails` times per tag (retryable or a workflow error), then passes `value` on."""

        schema = NodeSchema(
            class_type="TestFlaky",
            inputs=(Link("value", "INT"), Int("fails", 1, min=0, max=100),
                    Combo("kind", ["retryable", "workflow"], default="retryable"), String("tag", "")),
            outputs=(OutputSpec("INT", "value"),),
        )

        def run(self, ctx: NodeContext, value: int, fails: int, kind: str, tag: str) -> tuple[int]:
            if recorder.fail_once_more(tag, fails):
                if kind == "retryable":
                    raise RetryableError("device lost (simulated)")
                raise ValueError("bad workflow value (simulated)")
            return (value,)

    @registry.register
    class TestHang(Node):
        """Ignores interrupts for `seconds` (a node stuck in a kernel)."""

        schema = NodeSchema(
            class_type="TestHang", inputs=(Float("seconds", 1.0, min=0.0, max=60.0),),
            outputs=(OutputSpec("INT", "value"),),
        )

        def run(self, ctx: NodeContext, seconds: float) -> tuple[int]:
            time.sleep(seconds)
            return (1,)

    @registry.register
    class TestSave(Node):
        """Writes a tiny PNG into the output (or temp) folder, as SaveImage/PreviewImage do."""

        schema = NodeSchema(
            class_type="TestSave",
            inputs=(Link("value", "INT"), String("filename_prefix", "test"),
                    Combo("folder", ["output", "temp"], default="output")),
            outputs=(),
            output_node=True,
        )

        def run(self, ctx: NodeContext, value: int, filename_prefix: str, folder: str) -> NodeOutput:
            base = ctx.env.output_dir if folder == "output" else ctx.env.temp_dir
            name = f"{filename_prefix}_{ctx.job_id[:8]}_{value:05}_.png"
            path = safe_join(base, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes())
            return NodeOutput(values=(), ui={"images": [{"filename": name, "subfolder": "", "type": folder}]})

    @registry.register
    class TestWsImage(Node):
        """Streams a PNG over the websocket (as ComfyUI's SaveImageWebsocket)."""

        schema = NodeSchema(
            class_type="TestWsImage", inputs=(Link("value", "INT"),), outputs=(), output_node=True,
        )

        def run(self, ctx: NodeContext, value: int) -> NodeOutput:
            ctx.emit("binary_image", {"image": png_bytes(4, 4), "format": "PNG", "node": ctx.node_id})
            return NodeOutput(values=(), ui=None)

    return registry


def sleep_workflow(
    seconds: float = 0.0, steps: int = 2, tag: str = "", *, flaky: dict[str, Any] | None = None,
    hang: float | None = None, save: str = "output", ws_image: bool = False,
) -> dict[str, Any]:
    """TestSleep "3" -> [TestFlaky "4"] -> TestSave "9" (or TestWsImage), in API format."""
    workflow: dict[str, Any] = {
        "3": {"class_type": "TestSleep", "inputs": {"seconds": seconds, "steps": steps, "tag": tag}},
    }
    source = ["3", 0]
    if flaky is not None:
        workflow["4"] = {"class_type": "TestFlaky", "inputs": {"value": source, "tag": tag, **flaky}}
        source = ["4", 0]
    if hang is not None:
        workflow["5"] = {"class_type": "TestHang", "inputs": {"seconds": hang}}
        workflow["3"]["inputs"]["steps"] = steps
        workflow["6"] = {"class_type": "TestFlaky", "inputs": {"value": ["5", 0], "fails": 0, "kind": "retryable", "tag": tag}}
        source = ["6", 0]
    if ws_image:
        workflow["9"] = {"class_type": "TestWsImage", "inputs": {"value": source}}
    else:
        workflow["9"] = {"class_type": "TestSave", "inputs": {"value": source, "filename_prefix": "t", "folder": save}}
    return workflow


def fake_runtime(settings: Settings, recorder: Recorder) -> JobRuntime:
    registry = make_registry(recorder)
    env = NodeEnvironment(settings, models=None)
    return JobRuntime(registry=registry, env=env, executor=Executor(registry, env, cache=NodeCache(max_bytes=0)))


# ---- the server ------------------------------------------------------------------------------------


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
        models_dir=tmp_path / "models", db_path=tmp_path / "comfyd.db", spool_dir=tmp_path / "spool",
        rate_limit_per_minute=0, retry_backoff_s=0.05, sync_wait_s=10.0, job_timeout_s=30.0,
        metrics="prometheus",
    )
    values.update(overrides)
    for key in ("output_dir", "input_dir", "temp_dir"):
        Path(values[key]).mkdir(parents=True, exist_ok=True)
    return Settings(**values)


@dataclass
class ServerHandle:
    url: str
    settings: Settings
    services: Services
    app: Any
    recorder: Recorder
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> Any:
        return self.app.state.comfyd

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30.0, **kwargs)

    def job(self, job_id: str) -> JobRecord | None:
        return self.services.job_store.get(job_id)

    def wait_job(self, job_id: str, timeout: float = 20.0, terminal: bool = True) -> JobRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job is not None and (job.status.terminal or not terminal):
                return job
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} did not finish in {timeout}s: {self.job(job_id)}")

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_uvicorn(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-uvicorn")
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return f"http://127.0.0.1:{port}", server, thread


ServerFactory = Callable[..., ServerHandle]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start a comfyd server; `start_server(runtime=..., **settings)`. Stopped after the test."""
    handles: list[ServerHandle] = []

    def factory(
        runtime: Callable[[Settings], JobRuntime] | None = None, wait_setup: bool = True, **overrides: Any
    ) -> ServerHandle:
        settings = make_settings(tmp_path / f"srv{len(handles)}", **overrides)
        recorder = Recorder()
        services = build_services(settings)
        if runtime is None:
            services = dataclasses.replace(services, executor_factory=lambda: fake_runtime(settings, recorder))
        else:
            services = dataclasses.replace(services, executor_factory=lambda: runtime(settings))
        app = create_app(settings, services)
        url, server, thread = start_uvicorn(app)
        handle = ServerHandle(url, settings, services, app, recorder, server, thread)
        handles.append(handle)
        if wait_setup:
            handle.wait_until(lambda: handle.state.manager.setup_state != "starting", 120, "executor setup")
        return handle

    yield factory
    for handle in handles:
        handle.stop()
        handle.services.close()


@pytest.fixture
def server(start_server: ServerFactory) -> ServerHandle:
    return start_server()


@pytest.fixture
def workflow() -> Callable[..., dict[str, Any]]:
    """The fake-node workflow builder (see sleep_workflow)."""
    return sleep_workflow


@pytest.fixture
def png() -> Callable[..., bytes]:
    return png_bytes


@dataclass
class LocalRuntime:
    settings: Settings
    runtime: JobRuntime
    recorder: Recorder


@pytest.fixture
def local_runtime(tmp_path: Path) -> LocalRuntime:
    """The fake-node runtime without a server (settings: retry_backoff_s=0.5, retry_attempts=2)."""
    settings = make_settings(tmp_path / "rt", retry_backoff_s=0.5, retry_attempts=2)
    recorder = Recorder()
    return LocalRuntime(settings, fake_runtime(settings, recorder), recorder)


@pytest.fixture
def make_fake_runtime() -> Callable[[Settings], JobRuntime]:
    """Builds the fake-node runtime for given settings (for custom runtime factories)."""
    return lambda settings: fake_runtime(settings, Recorder())
