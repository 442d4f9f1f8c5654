"""Execution in a child process (COMFYD_ISOLATION=process): a segfaulting node or a hung one
ends the child, not this process; the job fails typed or ends interrupted; the next job gets a
new child; between jobs the child (and what it loaded) stays; events arrive complete and in order."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from comfyd.engine.graph import parse_workflow
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.isolation import IsolatedExecutor
from comfyd.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))  # the child imports isolation_runtime by name


def _req(**inputs):
    return parse_workflow({"prompt": {"1": {"class_type": "Scripted", "inputs": inputs}}})


@pytest.fixture(scope="module")
def isolated(tmp_path_factory):
    root = tmp_path_factory.mktemp("iso")
    executor = IsolatedExecutor(Settings(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                                         db_path=root / "db.sqlite"),
                                "isolation_runtime:build", kill_grace_s=1.0, start_timeout_s=120)
    yield executor
    executor.close()


def test_events_stream_back_in_order_and_the_child_stays(isolated: IsolatedExecutor) -> None:
    events: list[tuple[str, dict]] = []
    first = isolated.execute(_req(steps=50), "job-a", listener=lambda e, d: events.append((e, d)))
    assert first.status == "success"
    assert [d["value"] for e, d in events if e == "progress"] == list(range(1, 51))
    assert [e for e, _ in events][0] == "execution_start" and events[-1][0] == "execution_success"
    second = isolated.execute(_req(steps=1), "job-b")
    assert second.outputs["1"]["pid"] == first.outputs["1"]["pid"]  # same child, models still loaded
    assert second.outputs["1"]["loaded_at"] == first.outputs["1"]["loaded_at"]


def test_a_segfault_fails_the_job_typed_and_the_next_job_runs(isolated: IsolatedExecutor) -> None:
    before = isolated.execute(_req(steps=1), "job-c").outputs["1"]["pid"]
    events: list[tuple[str, dict]] = []
    crashed = isolated.execute(_req(mode="segfault"), "job-d", listener=lambda e, d: events.append((e, d)))
    assert crashed.status == "error"
    assert crashed.error["exception_type"] == "ChildProcessCrashed" and "SIGSEGV" in crashed.error["exception_message"]
    assert events[-1][0] == "execution_error"
    after = isolated.execute(_req(steps=1), "job-e")
    assert after.status == "success" and after.outputs["1"]["pid"] != before


def test_a_hung_node_is_killed_after_the_grace_period_on_cancel(isolated: IsolatedExecutor) -> None:
    interrupt = threading.Event()
    events: list[str] = []

    def listener(event: str, data: dict) -> None:
        events.append(event)
        if event == "execution_start":
            interrupt.set()  # the cancel arrives while the node hangs

    result = isolated.execute(_req(mode="hang"), "job-f", listener=listener, interrupt=interrupt)
    assert result.status == "interrupted" and events[-1] == "execution_interrupted"
    assert isolated.execute(_req(steps=1), "job-g").status == "success"


def test_a_cooperative_cancel_does_not_kill_the_child(isolated: IsolatedExecutor) -> None:
    pid = isolated.execute(_req(steps=1), "job-h").outputs["1"]["pid"]
    interrupt = threading.Event()

    def listener(event: str, data: dict) -> None:
        if event == "progress" and data["value"] == 2:
            interrupt.set()

    result = isolated.execute(_req(steps=1000, step_s=0.01), "job-i", listener=listener, interrupt=interrupt)
    assert result.status == "interrupted"
    assert isolated.execute(_req(steps=1), "job-j").outputs["1"]["pid"] == pid


def test_run_job_records_the_crash_as_a_typed_failure(isolated: IsolatedExecutor, tmp_path: Path) -> None:
    """Through the job layer, as the server and the worker run jobs: the process survives and
    the job ends failed with the crash's type, no retry."""
    import dataclasses

    from comfyd.engine.context import NodeEnvironment
    from comfyd.engine.jobs import JobRuntime, run_job
    from comfyd.engine.schema import NodeRegistry
    from comfyd.runtime import build_services

    settings = Settings(output_dir=tmp_path / "out", db_path=tmp_path / "db.sqlite", metrics="prometheus")
    services = build_services(settings)
    runtime = JobRuntime(registry=NodeRegistry(), env=NodeEnvironment(settings), executor=isolated,
                         validator=lambda req, reg, env: ["1"])
    try:
        job = JobRecord(id="crashy", workflow={"1": {"class_type": "Scripted", "inputs": {"mode": "segfault"}}},
                        node_id="1")
        assert services.job_store.create(job)
        outcome = run_job(job, runtime=runtime, backends=services, settings=settings)
        assert outcome.status is JobStatus.FAILED and outcome.retry_delay_s is None
        final = services.job_store.get("crashy")
        assert final.error["exception_type"] == "ChildProcessCrashed" and final.attempts == 1
        assert dataclasses.asdict(final)["status"] is JobStatus.FAILED
    finally:
        services.close()


@pytest.mark.slow
def test_isolation_setting_runs_the_real_nodes_in_a_child(tmp_path: Path) -> None:
    """COMFYD_ISOLATION=process through the composition root, on the tiny checkpoint: validation
    in this process, execution (and the loaded model) in the child, outputs in the shared folder."""
    import os

    from comfyd.models.tiny import make_tiny_checkpoint
    from comfyd.runner import default_workflow
    from comfyd.runtime import build_runtime

    make_tiny_checkpoint(tmp_path / "models" / "checkpoints", family="sd1", fmt="single", seed=0)
    settings = Settings(models_dir=tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                        temp_dir=tmp_path / "tmp", db_path=tmp_path / "db.sqlite", device="cpu", isolation="process")
    runtime = build_runtime(settings)
    try:
        assert isinstance(runtime.executor, IsolatedExecutor) and runtime.executor.pid not in (None, os.getpid())
        workflow = default_workflow("a fox")
        workflow["4"]["inputs"]["ckpt_name"] = "comfyd-tiny-sd1.safetensors"
        workflow["5"]["inputs"].update(width=64, height=64)
        workflow["3"]["inputs"]["steps"] = 2
        req = runtime.parse({"prompt": workflow})
        runtime.validate(req)
        result = runtime.executor.execute(req, "real-1")
        assert result.status == "success", result.error
        [image] = result.outputs["9"]["images"]
        assert (settings.output_dir / image["subfolder"] / image["filename"]).is_file()
        runtime.free(True, True)  # POST /free reaches the child
        assert runtime.executor.execute(req, "real-2").status == "success"
        assert runtime.executor.starts == 1
    finally:
        runtime.executor.close()
