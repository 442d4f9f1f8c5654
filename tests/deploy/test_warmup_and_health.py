"""The warm-up workflow (comfyd.warmup) and the container health probe (comfyd.healthcheck).

The end-to-end case runs the real server under uvicorn on a loopback port, as Dockerfile.gpu
does, with COMFYD_WARMUP_WORKFLOW set, and runs `python -m comfyd.healthcheck` (the image's
HEALTHCHECK) against it until it reports healthy.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from comfyd.healthcheck import main as healthcheck_main
from comfyd.settings import Settings
from comfyd.warmup import WarmupError, load_warmup_workflow, run_warmup

# --- warm-up ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read it"),
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_unreadable_warmup_workflows_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "warmup.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(WarmupError, match=message) as caught:
        load_warmup_workflow(path)
    assert str(path) in str(caught.value)


def test_no_warmup_configured_does_nothing(tmp_path: Path) -> None:
    settings = Settings(warmup_workflow=None, output_dir=tmp_path)
    assert run_warmup(runtime=None, settings=settings) is None  # type: ignore[arg-type]  # never touched


def test_warmup_loads_the_models_and_writes_no_outputs(tmp_path: Path, tiny_models: Path, tiny_workflow: Any) -> None:
    from comfyd.runtime import build_runtime

    workflow = tmp_path / "warmup.json"
    workflow.write_text(json.dumps(tiny_workflow()))
    settings = Settings(models_dir=tiny_models, output_dir=tmp_path / "output", temp_dir=tmp_path / "temp",
                        input_dir=tmp_path / "input", warmup_workflow=workflow, device="cpu")
    runtime = build_runtime(settings)  # the runtime factory runs the warm-up before returning
    loaded = runtime.env.models.stats()["loaded"]
    assert loaded and all(entry["load_seconds"] >= 0 for entry in loaded)
    assert list((tmp_path / "output").iterdir()) == []  # the warm-up image went to a scratch dir
    report = run_warmup(runtime, settings)  # again: models already loaded, so no new loads
    assert report is not None and set(report.node_timings) >= {"3", "8", "9"}
    assert runtime.env.models.stats()["loads"] == len(loaded)


def test_a_failing_warmup_fails_setup(tmp_path: Path, tiny_models: Path, tiny_workflow: Any) -> None:
    from comfyd.runtime import build_runtime

    workflow = tiny_workflow()
    workflow["4"]["inputs"]["ckpt_name"] = "not-on-this-host.safetensors"
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps(workflow))
    settings = Settings(models_dir=tiny_models, output_dir=tmp_path / "output", warmup_workflow=path, device="cpu")
    with pytest.raises(WarmupError, match="not-on-this-host") as caught:
        build_runtime(settings)
    assert str(path) in str(caught.value)


# --- the health probe, against canned answers ------------------------------------------------------------


class CannedHealth:
    """/health-check answering `status` (or a raw body / HTTP error), recording request headers."""

    def __init__(self) -> None:
        self.status_code = 200
        self.body = b'{"status": "READY"}'
        self.seen_headers: list[dict[str, str]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.seen_headers.append(dict(self.headers))
                self.send_response(owner.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health-check"


@pytest.fixture
def canned() -> Iterator[CannedHealth]:
    server = CannedHealth()
    yield server
    server.server.shutdown()


@pytest.mark.parametrize(("status_code", "body", "healthy"), [
    (200, b'{"status": "READY", "setup": {}}', True),
    (200, b'{"status": "BUSY"}', True),
    (200, b'{"status": "STARTING"}', False),
    (200, b'{"status": "SETUP_FAILED"}', False),
    (200, b'{"status": "DEFUNCT"}', False),
    (503, b'{"status": "READY"}', False),
    (200, b"<html>proxy error</html>", False),
])
def test_probe_is_healthy_only_when_the_server_can_take_work(
    canned: CannedHealth, status_code: int, body: bytes, healthy: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    canned.status_code, canned.body = status_code, body
    assert healthcheck_main(["--url", canned.url]) == (0 if healthy else 1)
    assert capsys.readouterr().out.startswith("healthy" if healthy else "unhealthy")


def test_probe_of_a_closed_port_is_unhealthy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert healthcheck_main(["--url", f"http://127.0.0.1:{port}/health-check", "--timeout", "2"]) == 1


def test_probe_sends_a_plain_key_but_never_a_hash(canned: CannedHealth, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYD_API_KEYS", "sha256:" + "ab" * 32 + ", plain-key")
    healthcheck_main(["--url", canned.url])
    monkeypatch.setenv("COMFYD_API_KEYS", "sha256:" + "ab" * 32)
    healthcheck_main(["--url", canned.url])
    assert canned.seen_headers[0].get("Authorization") == "Bearer plain-key"
    assert "Authorization" not in canned.seen_headers[1]


# --- the real server: STARTING during warm-up, then READY ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, with COMFYD_PORT as the image sets it."""
    env = {**os.environ, "COMFYD_PORT": str(port), "COMFYD_CONFIG": os.devnull}
    return subprocess.run([sys.executable, "-m", "comfyd.healthcheck"], env=env, capture_output=True, text=True, timeout=30)


def test_server_reports_ready_only_after_its_warmup(tmp_path: Path, tiny_models: Path, tiny_workflow: Any) -> None:
    import uvicorn

    from comfyd.server import create_app

    workflow = tmp_path / "warmup.json"
    workflow.write_text(json.dumps(tiny_workflow()))
    port = free_port()
    settings = Settings(
        models_dir=tiny_models, output_dir=tmp_path / "output", input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp", db_path=tmp_path / "comfyd.db", spool_dir=tmp_path / "spool",
        warmup_workflow=workflow, device="cpu", host="127.0.0.1", port=port, metrics="none",
        storage="local", jobstore="sqlite", queue="local", max_concurrent_jobs=1,
    )
    for directory in (settings.output_dir, settings.input_dir, settings.temp_dir):
        Path(directory).mkdir(parents=True, exist_ok=True)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        statuses = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = probe(port)
            statuses.append(result.stdout.strip())
            if result.returncode == 0:
                break
            time.sleep(0.2)
        assert statuses[-1] == "healthy: status READY", statuses
        assert all(s in ("healthy: status READY", "unhealthy: status STARTING") or "unreachable" in s
                   for s in statuses), statuses
        assert list((tmp_path / "output").iterdir()) == []  # the warm-up wrote no output
    finally:
        server.should_exit = True
        thread.join(timeout=30)
