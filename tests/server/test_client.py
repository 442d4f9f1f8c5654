"""comfyd.client: retries (429/503/connection errors, never 400/401/403), waiting, images, `comfyd submit`."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyd.client import Client, JobFailed, ServerError, submit_cli


def scripted(responses: list[Any], calls: list[str]) -> httpx.MockTransport:
    """A transport answering with `responses` in order (an exception instance is raised)."""
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return httpx.MockTransport(handler)


def client_with(responses: list[Any]) -> tuple[Client, list[str], list[float]]:
    calls: list[str] = []
    delays: list[float] = []
    client = Client("http://comfyd.test", "key", transport=scripted(responses, calls), sleep=delays.append)
    return client, calls, delays


def test_retries_503_and_429_honouring_retry_after() -> None:
    ok = httpx.Response(200, json={"prompt_id": "p1", "number": 1, "node_errors": {}})
    client, calls, delays = client_with([
        httpx.Response(503, headers={"Retry-After": "7"}, json={"error": {"type": "ServiceUnavailable"}}),
        httpx.Response(429, json={"error": {"type": "RateLimit"}}),
        ok,
    ])
    assert client.submit({"3": {}}, prompt_id="p1") == "p1"
    assert calls == ["POST /prompt"] * 3
    assert delays[0] == 7.0  # Retry-After is longer than the backoff: it wins
    assert 2.0 <= delays[1] <= 2.5  # second retry: 2 s backoff plus up to 25 % jitter


def test_connection_errors_are_retried_three_times_with_exponential_backoff() -> None:
    refused = httpx.ConnectError("connection refused")
    client, calls, delays = client_with([refused, refused, refused, refused])
    with pytest.raises(httpx.ConnectError):
        client.history("p1")
    assert len(calls) == 4  # the first try and three retries
    assert [1.0 <= delays[0] <= 1.25, 2.0 <= delays[1] <= 2.5, 4.0 <= delays[2] <= 5.0] == [True] * 3


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_never_retried(status: int) -> None:
    body = {"error": {"type": "X", "message": f"refused {status}"}, "node_errors": {}}
    client, calls, delays = client_with([httpx.Response(status, json=body)])
    with pytest.raises(ServerError) as raised:
        client.submit({"3": {}})
    assert raised.value.status == status and raised.value.body == body
    assert len(calls) == 1 and delays == []
    assert f"refused {status}" in str(raised.value)


def test_run_follows_progress_and_fetches_images(server, workflow) -> None:
    events: list[tuple[str, dict]] = []
    with Client(server.url) as client:
        entry = client.run(workflow(0.05, 3), on_event=lambda kind, data: events.append((kind, data)), timeout=30)
        images = client.fetch_images(entry)
    assert [d["value"] for k, d in events if k == "progress"] == [1, 2, 3]
    assert events[-1][0] == "executing" and events[-1][1]["node"] is None
    assert len(images) == 1 and images[0][1].startswith(b"\x89PNG")


def test_wait_falls_back_to_polling_when_the_socket_is_unavailable(server, workflow, monkeypatch) -> None:
    with Client(server.url) as client:
        monkeypatch.setattr(client, "_ws_url", lambda: "ws://127.0.0.1:9/ws")  # nothing listens there
        prompt_id = client.submit(workflow(0.2, 2))
        entry = client.wait(prompt_id, timeout=20, poll_interval=0.05)
    assert entry["status"]["completed"] is True


def test_failed_job_raises_with_its_history(server, workflow) -> None:
    with Client(server.url) as client, pytest.raises(JobFailed) as raised:
        client.run(workflow(0.0, 1, "f", flaky={"fails": 1, "kind": "workflow"}), timeout=20)
    assert raised.value.entry["status"]["status_str"] == "error"


def test_a_retried_submission_whose_answer_was_lost_makes_one_job(server, workflow) -> None:
    real = httpx.HTTPTransport()
    lost = {"count": 0}

    class LosingTransport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = real.handle_request(request)
            if request.url.path == "/prompt" and lost["count"] == 0:
                lost["count"] += 1
                response.read()
                raise httpx.ReadTimeout("answer lost", request=request)  # the server did take it
            return response

    client = Client(server.url, transport=LosingTransport(), sleep=lambda s: None)
    prompt_id = client.submit(workflow(0.0, 1, "lost"))
    entry = client.wait(prompt_id, timeout=20)
    client.close()
    assert entry["status"]["completed"] and lost["count"] == 1
    assert server.recorder.order() == ["lost"] and len(server.services.job_store.list()) == 1


def test_submit_cli(server, workflow, tmp_path: Path, capsys) -> None:
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow(0.05, 2)))
    args = argparse.Namespace(workflow=str(path), server=server.url, api_key=None, set=['3.tag="cli"'],
                              output=str(tmp_path / "out"))
    assert submit_cli(args) == 0
    assert re.search(r"job [0-9a-f-]{36} succeeded in \d+\.\d s", capsys.readouterr().err)
    written = list((tmp_path / "out").glob("*.png"))
    assert len(written) == 1 and written[0].read_bytes().startswith(b"\x89PNG")
    assert server.recorder.order() == ["cli"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"3": {"class_type": "Nope", "inputs": {}}}))
    args.workflow = str(bad)
    assert submit_cli(args) == 2
    assert "Cannot execute because node Nope does not exist" in capsys.readouterr().err


def test_wait_switches_to_polling_when_the_socket_drops_mid_job(server, workflow, monkeypatch) -> None:
    import websocket

    received: list[str] = []

    class DroppingSocket:
        """Delivers one real message, then the connection 'drops' (as proxies do on long jobs)."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def recv(self) -> Any:
            if received:
                raise websocket.WebSocketConnectionClosedException("connection dropped")
            message = self.real.recv()
            received.append(message)
            return message

        def close(self) -> None:
            self.real.close()

    with Client(server.url) as client:
        connect = client._connect_websocket
        monkeypatch.setattr(client, "_connect_websocket", lambda: DroppingSocket(connect()))
        prompt_id, entry = client.submit_and_wait(workflow(0.5, 5), timeout=20, poll_interval=0.05)
    assert len(received) == 1 and entry["status"]["completed"] is True
    assert server.job(prompt_id).status.value == "succeeded"
