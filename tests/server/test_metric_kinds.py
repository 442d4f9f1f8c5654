"""Which metric a failure counts in: 4xx -> ClientErrors; 5xx and failed/timed-out jobs ->
Errors (what the job-errors alarm sums); a canceled job is no error. Latency in seconds."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from comfyd.backends.prometheus import PrometheusMetrics
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.job_events import record_metrics
from comfyd.http.metrics import RequestMetricsMiddleware


def test_client_errors_are_not_errors_and_latency_is_in_seconds() -> None:
    metrics = PrometheusMetrics()
    app = FastAPI()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("server bug")

    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/nothing-here").status_code == 404
        assert client.get("/boom").status_code == 500
    text = metrics.render()
    assert 'comfyd_client_errors_total{status="404"} 1' in text
    assert 'comfyd_errors_total{error_type="ServerError500"} 1' in text
    assert "ClientError404" not in text
    sums = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("comfyd_request_latency_seconds_sum")]
    assert sums and all(0 <= s < 30 for s in sums)  # seconds: a local request is far below 30 s


def test_failed_and_timed_out_jobs_count_in_errors_canceled_do_not() -> None:
    metrics = PrometheusMetrics()
    for status, error in ((JobStatus.FAILED, {"type": "execution_error", "exception_type": "ValueError"}),
                          (JobStatus.TIMED_OUT, {"type": "timed_out"}),
                          (JobStatus.CANCELED, {"type": "canceled"}),
                          (JobStatus.SUCCEEDED, None)):
        record_metrics(metrics, JobRecord(id=status.value, workflow={}, status=status, error=error), {})
    text = metrics.render()
    assert 'comfyd_errors_total{error_type="ValueError"} 1' in text
    assert 'comfyd_errors_total{error_type="timed_out"} 1' in text
    assert 'error_type="canceled"' not in text
