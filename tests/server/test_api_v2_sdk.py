"""Comfy API v2 driven by the official Python SDK (`comfy-sdk`) against a real comfyd server on
loopback (fake nodes: each job takes milliseconds)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from comfy_sdk import Comfy
from comfy_sdk.events import OutputReady, Progress, StatusChange
from comfy_sdk.exceptions import IdempotencyKeyReuse, InvalidWorkflow, NotFound, WorkflowFormatUi

from comfyd.engine.interfaces import JobStatus


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`sdk(server, api_key=None)`: a Comfy client pointed at the server (COMFY_BASE_URL)."""
    clients: list[Comfy] = []

    def make(server: Any, api_key: str | None = None) -> Comfy:
        monkeypatch.setenv("COMFY_BASE_URL", server.url)
        monkeypatch.delenv("COMFY_API_KEY", raising=False)
        client = Comfy(api_key=api_key, timeout=30.0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_submit_events_poll_outputs_range_workflow(server, workflow, sdk) -> None:
    client = sdk(server)
    graph = workflow(0.05, 4)
    job = client.submit(client.workflows.from_json(graph), metadata={"run": "a"})
    assert job.status in ("queued", "running", "succeeded")
    events = list(job.events())
    statuses = [e.status for e in events if isinstance(e, StatusChange)]
    assert statuses[-1] == "succeeded" and "running" in statuses
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress and all(0.0 <= p.value <= 1.0 for p in progress)
    assert any(p.step == 4 and p.steps == 4 and p.current_node == "3" for p in progress)
    streamed = [e.output for e in events if isinstance(e, OutputReady)]
    assert [o.node_id for o in streamed] == ["9"]

    job.result()  # polls GET /api/v2/jobs/{id}: authoritative
    assert job.status == "succeeded" and job.metadata == {"run": "a"}
    [output] = job.outputs
    assert output.id == streamed[0].id and output.type == "image" and output.content_type == "image/png"
    stored = server.job(job.id)
    name = stored.outputs["9"]["images"][0]["filename"]
    data = (server.settings.output_dir / name).read_bytes()
    assert output.name == name and output.size_bytes == len(data)
    import blake3

    assert job._model.outputs[0].hash == "blake3:" + blake3.blake3(data).hexdigest()
    assert output.to_bytes() == data
    assert output.to_bytes(range=(1, 4)) == data[1:5]  # Range: bytes=1-4 -> 206
    assert job.get_workflow().graph == graph and job.get_workflow().format == "api"
    assert client.jobs.get(job.id).status == "succeeded"
    # The same job through the other APIs: one store.
    with server.client() as http:
        assert job.id in http.get(f"/history/{job.id}").json()
        assert http.get(f"/api/jobs/{job.id}").json()["status"] == "completed"


def test_list_jobs_pages_with_a_cursor_and_filters_labels(server, workflow, sdk) -> None:
    client = sdk(server)
    ids = [client.submit(client.workflows.from_json(workflow()), metadata={"batch": "b" if i % 2 else "a"}).id
           for i in range(5)]
    for job_id in ids:
        server.wait_job(job_id)
    listed = list(client.list_jobs(limit=2))
    assert [s.id for s in listed] == ids[::-1]  # newest first, across three pages
    only_b = list(client.list_jobs(metadata={"batch": "b"}, limit=1))
    assert [s.id for s in only_b] == [ids[3], ids[1]] and {s.status for s in only_b} == {"succeeded"}
    with server.client() as http:
        bad = http.get("/api/v2/jobs", params={"cursor": "!!"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def test_idempotency_keys_are_single_use(server, workflow, sdk) -> None:
    client = sdk(server)
    key = str(uuid.uuid4())
    first = client.submit(client.workflows.from_json(workflow()), idempotency_key=key)
    with pytest.raises(IdempotencyKeyReuse) as refused:
        client.submit(client.workflows.from_json(workflow(tag="other")), idempotency_key=key)
    assert refused.value.http_status == 422 and refused.value.code == "idempotency_key_reuse"
    server.wait_job(first.id)
    assert len(server.services.job_store.list(limit=100)) == 1  # the second was never created
    # A refused submission releases its key: the corrected retry goes through.
    key2 = str(uuid.uuid4())
    broken = workflow()
    broken["3"]["inputs"]["steps"] = "many"
    with pytest.raises(InvalidWorkflow) as invalid:
        client.submit(client.workflows.from_json(broken), idempotency_key=key2)
    assert invalid.value.code == "invalid_workflow" and "3" in invalid.value.details["node_errors"]
    assert client.submit(client.workflows.from_json(workflow()), idempotency_key=key2).id


def test_cancel_a_running_job_and_a_queued_one(start_server, workflow, sdk) -> None:
    server = start_server(max_concurrent_jobs=1)
    client = sdk(server)
    job = client.submit(client.workflows.from_json(workflow(20.0, 400, "long")))
    server.wait_until(lambda: server.job(job.id).progress.get("value", 0) >= 1, what="the job running")
    waiting = client.submit(client.workflows.from_json(workflow(tag="waiting")))
    assert waiting.status == "queued" and waiting.refresh()._model.queue_position == 0
    assert waiting.cancel().status == "canceled"  # dropped from the queue at once
    job.cancel()
    assert job.status in ("canceling", "canceled")
    job.wait(timeout=20)
    assert job.status == "canceled" and job.error is None
    stored = server.job(job.id)
    assert stored.status is JobStatus.CANCELED and stored.finished_at - stored.started_at < 10  # stopped, not run on
    assert job.cancel().status == "canceled"  # idempotent on a terminal job
    assert [tag for tag in server.recorder.order()] == ["long"]  # the canceled queued job never ran


def test_terminal_status_is_stable_under_10ms_polling(server, workflow) -> None:
    seen: list[tuple[str, int]] = []
    with server.client() as http:
        job_id = http.post("/api/v2/jobs", json={"workflow": workflow(0.1, 5)}).json()["id"]
        stop = threading.Event()
        terminal_reads = 0
        while terminal_reads < 60 and not stop.is_set():
            body = http.get(f"/api/v2/jobs/{job_id}").json()
            seen.append((body["status"], len(body["outputs"])))
            if body["status"] in ("succeeded", "failed", "canceled", "expired"):
                terminal_reads += 1
            stop.wait(0.01)
    first_terminal = next(i for i, (status, _) in enumerate(seen) if status == "succeeded")
    assert set(seen[first_terminal:]) == {("succeeded", 1)}  # never flips back, outputs complete at once
    order = ["queued", "running", "succeeded"]
    assert [order.index(s) for s, _ in seen] == sorted(order.index(s) for s, _ in seen)


def _sse(http: httpx.Client, url: str, headers: dict[str, str] | None = None, stop_after: int | None = None
         ) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, event, data) of each SSE frame, until the stream ends or `stop_after` frames."""
    import json

    frames: list[tuple[str, str, dict[str, Any]]] = []
    current: dict[str, str] = {}
    with http.stream("GET", url, headers={"Accept": "text/event-stream", **(headers or {})}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    frames.append((current.get("id", ""), current.get("event", ""), json.loads(current["data"])))
                    current = {}
                    if stop_after is not None and len(frames) >= stop_after:
                        break
                continue
            name, _, value = line.partition(": ")
            current[name] = value
    return frames


def test_sse_resumes_from_last_event_id(server, workflow) -> None:
    with server.client() as http:
        job_id = http.post("/api/v2/jobs", json={"workflow": workflow(0.6, 6)}).json()["id"]
        server.wait_until(lambda: server.job(job_id).status is JobStatus.RUNNING, what="running")
        first = _sse(http, f"/api/v2/jobs/{job_id}/events", stop_after=2)
        assert first[0][1] == "status"
        last_id = first[-1][0]
        server.wait_job(job_id)
        rest = _sse(http, f"/api/v2/jobs/{job_id}/events", headers={"Last-Event-ID": last_id})
        names = [name for _, name, _ in rest]
        assert names[-1] == "status" and rest[-1][2]["status"] == "succeeded"
        assert "output" in names and "progress" in names  # missed while disconnected, replayed
        seqs = [int(i.rsplit("-", 1)[1]) for i, _, _ in rest]
        assert seqs == sorted(seqs) and seqs[0] > int(last_id.rsplit("-", 1)[1])
        # A stale id (another process) gets a fresh snapshot with the outputs so far.
        stale = _sse(http, f"/api/v2/jobs/{job_id}/events", headers={"Last-Event-ID": "0000-3"})
        assert [n for _, n, _ in stale] == ["status", "progress", "output"]
        assert stale[0][2]["status"] == "succeeded"


def test_v2_errors_use_the_v2_envelope(server, workflow, sdk) -> None:
    client = sdk(server)
    with pytest.raises(NotFound):
        client.jobs.get("no-such-job")
    with pytest.raises(WorkflowFormatUi):
        client.submit(client.workflows.from_json({"nodes": [], "links": [], "last_node_id": 0}))
    with server.client() as http:
        cases = {
            ("GET", "/api/v2/jobs/nope"): (404, "not_found"),
            ("GET", "/api/v2/nothing-here"): (404, "not_found"),
            ("POST", "/api/v2/jobs"): (400, "invalid_request"),  # no body
            ("GET", "/api/v2/assets/nope"): (404, "not_found"),
        }
        for (method, path), (status, code) in cases.items():
            resp = http.request(method, path)
            assert resp.status_code == status, path
            assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"], path
        resp = http.post("/api/v2/jobs", json={"workflow": workflow(), "webhook_url": "http://x"})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request"
        resp = http.post("/api/v2/jobs", json={"workflow": workflow(), "metadata": {"k": 1}})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "metadata_invalid"
        resp = http.post("/api/v2/jobs", json={"workflow": workflow()}, headers={"Idempotency-Key": "x" * 300})
        assert resp.status_code == 400
        assert http.get("/api/v2/health").json()["status"] == "healthy"
        # comfyd's own routes keep comfyd's envelope
        assert http.get("/history/x/y").json()["error"]["type"] == "NotFound"


def test_bearer_auth_with_comfyd_api_keys(start_server, workflow, sdk) -> None:
    server = start_server(api_keys=["s3cret"])
    with server.client() as http:
        assert http.get("/api/v2/health").status_code == 200  # liveness stays open
        denied = http.get("/api/v2/jobs")
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        wrong = http.get("/api/v2/jobs", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    client = sdk(server, api_key="s3cret")
    job = client.submit(client.workflows.from_json(workflow()))
    assert job.wait(timeout=20).status == "succeeded"
    assert job.outputs[0].to_bytes().startswith(b"\x89PNG")


def test_queue_full_is_429_queue_full(start_server, workflow) -> None:
    server = start_server(queue_max_depth=1, max_concurrent_jobs=1)
    with server.client() as http:
        http.post("/api/v2/jobs", json={"workflow": workflow(5.0, 50, "block")})
        server.wait_until(lambda: server.state.manager.running_jobs(), what="a running job")
        http.post("/api/v2/jobs", json={"workflow": workflow()})
        full = http.post("/api/v2/jobs", json={"workflow": workflow()}, headers={"Idempotency-Key": "k1"})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        for job in server.services.job_store.list(limit=10):
            server.state.manager.cancel(job.id)
        server.wait_until(lambda: server.services.queue.depth() == 0, what="queue drained")
        again = http.post("/api/v2/jobs", json={"workflow": workflow()}, headers={"Idempotency-Key": "k1"})
        assert again.status_code == 201  # a refused submission released its key
