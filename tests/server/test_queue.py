"""Scheduling: priority, the concurrency cap, sync waits, cancel/interrupt, timeouts, retries, idempotency."""

from __future__ import annotations

import time

from comfyd.engine.interfaces import JobStatus


def submit(http, workflow_body: dict, **fields) -> str:
    answer = http.post("/prompt", json={"prompt": workflow_body, **fields})
    assert answer.status_code == 200, answer.text
    return answer.json()["prompt_id"]


def test_priority_order_higher_first_fifo_within(start_server, workflow) -> None:
    srv = start_server(max_concurrent_jobs=1)
    with srv.client() as http:
        blocker = submit(http, workflow(0.4, 4, "blocker"))
        srv.wait_until(lambda: srv.job(blocker).status is JobStatus.RUNNING, what="blocker running")
        ids = [submit(http, workflow(0.0, 1, tag), priority=p) for tag, p in
               [("p1", 1), ("p5-first", 5), ("p10", 10), ("p5-second", 5), ("p1-second", 1)]]
        pending = http.get("/queue").json()["queue_pending"]
        assert [item[1] for item in pending] == [ids[2], ids[1], ids[3], ids[0], ids[4]]
        for job_id in ids:
            srv.wait_job(job_id)
    assert srv.recorder.order() == ["blocker", "p10", "p5-first", "p5-second", "p1", "p1-second"]


def test_at_most_max_concurrent_jobs_execute(start_server, workflow) -> None:
    srv = start_server(max_concurrent_jobs=2)
    with srv.client() as http:
        ids = [submit(http, workflow(0.3, 3, f"j{i}")) for i in range(5)]
        srv.wait_until(lambda: len(srv.state.manager.running_jobs()) == 2, what="two running")
        queue = http.get("/queue").json()
        assert len(queue["queue_running"]) == 2 and len(queue["queue_pending"]) == 3
        assert http.get("/health-check").json()["status"] == "BUSY"
        for job_id in ids:
            assert srv.wait_job(job_id).status is JobStatus.SUCCEEDED
    assert srv.recorder.max_overlap() == 2


def test_sync_prediction_succeeds_with_output_urls(server, workflow) -> None:
    with server.client() as http:
        answer = http.post("/predictions", json={"input": {"workflow_json": workflow(0.0, 1)}})
        assert answer.status_code == 200
        prediction = answer.json()
        assert prediction["status"] == "succeeded" and prediction["error"] is None
        assert prediction["metrics"]["predict_time"] >= 0
        assert prediction["comfyd"]["status"] == "succeeded"
        [url] = prediction["output"]
        assert url.startswith(server.url + "/view?") and "type=output" in url
        assert httpx_get_bytes(http, url).startswith(b"\x89PNG")
        again = http.get(f"/predictions/{prediction['id']}").json()
        assert again["output"] == prediction["output"] and again["status"] == "succeeded"


def httpx_get_bytes(http, url: str) -> bytes:
    answer = http.get(url)
    assert answer.status_code == 200
    return answer.content


def test_sync_wait_is_bounded_then_202_with_the_id(start_server, workflow) -> None:
    srv = start_server(sync_wait_s=0.3)
    with srv.client() as http:
        started = time.monotonic()
        answer = http.post("/predictions", json={"input": {"workflow_json": workflow(1.5, 15)}})
        waited = time.monotonic() - started
        assert answer.status_code == 202 and 0.25 < waited < 1.4
        body = answer.json()
        assert body["status"] in ("starting", "processing") and answer.headers["location"] == f"/predictions/{body['id']}"
        srv.wait_job(body["id"])
        assert http.get(f"/predictions/{body['id']}").json()["status"] == "succeeded"


def test_prefer_respond_async_answers_at_once(server, workflow) -> None:
    with server.client() as http:
        answer = http.put("/predictions/async-1", json={"input": {"workflow_json": workflow(0.5, 5)}},
                          headers={"Prefer": "respond-async"})
        assert answer.status_code == 202 and answer.json()["id"] == "async-1"
        assert answer.json()["status"] in ("starting", "processing")
    assert server.wait_job("async-1").status is JobStatus.SUCCEEDED


def test_cancel_one_running_job_leaves_the_others_running(start_server, workflow) -> None:
    srv = start_server(max_concurrent_jobs=3)
    with srv.client() as http:
        ids = [submit(http, workflow(0.8, 16, f"r{i}")) for i in range(3)]
        srv.wait_until(lambda: all(srv.job(i).progress.get("value") for i in ids), what="all three progressing")
        canceled = http.post(f"/predictions/{ids[0]}/cancel")
        assert canceled.status_code == 200
        http.post("/interrupt", json={"prompt_id": ids[1]})  # ComfyUI's targeted interrupt
        assert srv.wait_job(ids[0]).status is JobStatus.CANCELED
        assert srv.wait_job(ids[1]).status is JobStatus.CANCELED
        assert srv.wait_job(ids[2]).status is JobStatus.SUCCEEDED
        assert http.get(f"/predictions/{ids[0]}").json()["status"] == "canceled"
        entry = http.get(f"/history/{ids[1]}").json()[ids[1]]
        assert entry["status"]["status_str"] == "error" and entry["status"]["reason"] == "canceled"
        assert entry["status"]["messages"][-1][0] == "execution_interrupted"


def test_delete_and_clear_waiting_jobs(start_server, workflow) -> None:
    srv = start_server(max_concurrent_jobs=1)
    with srv.client() as http:
        blocker = submit(http, workflow(0.5, 5, "blocker"))
        srv.wait_until(lambda: srv.job(blocker).status is JobStatus.RUNNING, what="blocker running")
        waiting = [submit(http, workflow(0.0, 1, f"w{i}")) for i in range(3)]
        assert http.post("/queue", json={"delete": [waiting[0]]}).status_code == 200
        assert srv.job(waiting[0]).status is JobStatus.CANCELED
        assert http.post("/queue", json={"clear": True}).status_code == 200
        assert http.get("/queue").json()["queue_pending"] == []
        srv.wait_job(blocker)
        assert all(srv.job(i).status is JobStatus.CANCELED for i in waiting)
        assert http.get(f"/history/{waiting[1]}").json() == {}  # never ran: no history, as ComfyUI
    assert srv.recorder.order() == ["blocker"]


def test_wall_time_budget_times_out(start_server, workflow) -> None:
    srv = start_server(job_timeout_s=0.3)
    with srv.client() as http:
        job_id = submit(http, workflow(3.0, 30, "slow"))
        job = srv.wait_job(job_id, timeout=5)
        assert job.status is JobStatus.TIMED_OUT and job.error["type"] == "timed_out"
        assert job.finished_at - job.started_at < 1.0
        prediction = http.get(f"/predictions/{job_id}").json()
        assert prediction["status"] == "failed" and prediction["error"].startswith("timed_out")
        assert http.get(f"/history/{job_id}").json()[job_id]["status"]["reason"] == "timed_out"
        fine = submit(http, workflow(0.0, 1, "fine"))  # the slot is free again
        assert srv.wait_job(fine).status is JobStatus.SUCCEEDED


def test_a_node_that_ignores_the_interrupt_is_timed_out_anyway(start_server, workflow) -> None:
    srv = start_server(job_timeout_s=0.2)
    with srv.client() as http:
        job_id = submit(http, workflow(0.0, 1, "hang", hang=3.0))
        started = time.monotonic()
        job = srv.wait_job(job_id, timeout=5)
        assert job.status is JobStatus.TIMED_OUT and "did not stop" in job.error["message"]
        assert time.monotonic() - started < 2.5  # budget + grace, not the 3 s the node hangs
        assert http.get(f"/history/{job_id}").json()[job_id]["status"]["reason"] == "timed_out"


def test_retryable_errors_are_retried_with_backoff(start_server, workflow) -> None:
    srv = start_server(retry_attempts=3, retry_backoff_s=0.05)
    with srv.client() as http:
        recovers = submit(http, workflow(0.0, 1, "twice", flaky={"fails": 2, "kind": "retryable"}))
        gives_up = submit(http, workflow(0.0, 1, "always", flaky={"fails": 99, "kind": "retryable"}))
        workflow_error = submit(http, workflow(0.0, 1, "bad", flaky={"fails": 1, "kind": "workflow"}))
        ok = srv.wait_job(recovers)
        assert ok.status is JobStatus.SUCCEEDED and ok.attempts == 3
        failed = srv.wait_job(gives_up)
        assert failed.status is JobStatus.FAILED and failed.attempts == 4  # first try + 3 retries
        assert failed.error["exception_type"].endswith("RetryableError")
        bad = srv.wait_job(workflow_error)
        assert bad.status is JobStatus.FAILED and bad.attempts == 1
    assert srv.recorder.failures == {"twice": 2, "always": 4, "bad": 1}


def test_same_id_twice_is_one_job(server, workflow) -> None:
    with server.client() as http:
        body = {"prompt": workflow(0.0, 1, "once"), "prompt_id": "same-prompt"}
        first, second = http.post("/prompt", json=body).json(), http.post("/prompt", json=body).json()
        assert first == second
        put = {"input": {"workflow_json": workflow(0.0, 1, "pred-once")}}
        a = http.put("/predictions/same-pred", json=put)
        b = http.put("/predictions/same-pred", json=put)
        c = http.post("/predictions", json={"id": "same-pred", **put})
        assert a.status_code == b.status_code == c.status_code == 200
        assert a.json()["output"] == b.json()["output"] == c.json()["output"]
        server.wait_job("same-prompt")
    assert sorted(server.recorder.order()) == ["once", "pred-once"]
    assert len(server.services.job_store.list()) == 2


def test_v1_status_reports_progress(server, workflow) -> None:
    with server.client() as http:
        job_id = submit(http, workflow(0.6, 12, "status"))
        server.wait_until(lambda: (server.job(job_id).progress.get("value") or 0) >= 1, what="progress")
        status = http.get("/v1/status").json()
        assert status["is_processing"] is True
        assert status["current_progress"]["prediction_id"] == job_id and status["current_progress"]["node"] == "3"
        server.wait_job(job_id)
        status = http.get("/v1/status").json()
        assert status["is_processing"] is False
        assert {e["node_id"] for e in status["node_executions"]} == {"3", "9"}
        assert status["recent_predictions"][0]["id"] == job_id
