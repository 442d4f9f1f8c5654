"""GET /health-check (Cog's statuses), setup failures, GET /system_stats and GET /metrics."""

from __future__ import annotations

import threading

from comfyd.engine.interfaces import JobStatus
from comfyd.engine.jobs import JobRuntime
from comfyd.settings import Settings


def test_starting_until_the_executor_is_built_then_ready(start_server, make_fake_runtime, workflow) -> None:
    release = threading.Event()

    def slow_setup(settings: Settings) -> JobRuntime:
        release.wait(10)  # loading models, running the warm-up workflow...
        return make_fake_runtime(settings)

    srv = start_server(runtime=slow_setup, wait_setup=False)
    with srv.client() as http:
        health = http.get("/health-check").json()
        assert health["status"] == "STARTING"
        assert health["setup"]["started_at"] is not None and health["setup"]["completed_at"] is None
        release.set()
        srv.wait_until(lambda: http.get("/health-check").json()["status"] == "READY", what="READY")
        health = http.get("/health-check").json()
        assert health["setup"]["status"] == "succeeded" and health["setup"]["completed_at"] is not None
        job_id = http.post("/prompt", json={"prompt": workflow()}).json()["prompt_id"]
        assert srv.wait_job(job_id).status is JobStatus.SUCCEEDED


def test_setup_failure_is_reported_and_submissions_get_503(start_server, workflow) -> None:
    def broken_setup(settings: Settings) -> JobRuntime:
        raise RuntimeError("checkpoint warmup.safetensors is missing")

    srv = start_server(runtime=broken_setup)
    with srv.client() as http:
        health = http.get("/health-check")
        assert health.status_code == 200  # Cog: always 200, the status says what is wrong
        assert health.json()["status"] == "SETUP_FAILED"
        assert "warmup.safetensors is missing" in health.json()["setup"]["logs"]
        answer = http.post("/prompt", json={"prompt": workflow()})
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "ServiceUnavailable"
        assert "warmup.safetensors" in answer.json()["error"]["message"]


def test_system_stats_and_metrics(server, workflow) -> None:
    with server.client() as http:
        job_id = http.post("/prompt", json={"prompt": workflow()}).json()["prompt_id"]
        server.wait_job(job_id)
        stats = http.get("/system_stats").json()
        assert stats["system"]["ram_total"] > 0 and stats["devices"][0]["type"] in ("cpu", "cuda")
        assert stats["comfyd"]["max_concurrent_jobs"] == server.settings.max_concurrent_jobs
        assert http.get("/api/system_stats").status_code == 200
        assert http.get("/extensions").json() == []
        assert "checkpoints" in http.get("/models").json()
        assert http.post("/free", json={"unload_models": True, "free_memory": True}).status_code == 200
        assert http.get("/history/no-such-job").status_code in (200, 404)
        assert http.post("/prompt", json={"prompt": {}}).status_code == 400
        metrics = http.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
    assert 'comfyd_jobs_completed_total{status="succeeded"} 1' in text
    assert 'comfyd_jobs_submitted_total{source="prompt"} 1' in text
    assert "comfyd_queue_depth 0" in text and "comfyd_queue_wait_seconds_count 1" in text
    assert 'comfyd_node_execution_time_seconds_count{class_type="TestSleep"} 1' in text
    # Request metrics carry the route template, never the raw path.
    assert 'route="/prompt"' in text and 'route="/history/{prompt_id}"' in text and "no-such-job" not in text
    # A 4xx is a client error, not a server or job error: it must not feed the errors alarm.
    assert 'comfyd_client_errors_total{status="400"} 1' in text and "comfyd_errors_total" not in text
    assert "comfyd_request_latency_seconds_count" in text  # seconds, as the docs and dashboard say
