"""ComfyUI-client fixes: no "finished" signal on connect, claimed jobs counted as remaining,
/system_stats from the first request, /upload/image taking any file type."""

from __future__ import annotations

import json
import sys
import threading
import types
from typing import Any

import websocket

from comfyd.backends.local_queue import LocalJobQueue
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.jobs import JobManager
from comfyd.runtime import build_services


def no_progress_workflow(seconds: float) -> dict[str, Any]:
    """TestHang (reports no progress at all) -> TestFlaky -> TestSave."""
    return {
        "5": {"class_type": "TestHang", "inputs": {"seconds": seconds}},
        "6": {"class_type": "TestFlaky", "inputs": {"value": ["5", 0], "fails": 0, "kind": "retryable", "tag": ""}},
        "9": {"class_type": "TestSave", "inputs": {"value": ["6", 0], "filename_prefix": "np", "folder": "output"}},
    }


def test_connecting_before_the_first_progress_event_does_not_say_finished(server) -> None:
    with server.client() as http:
        prompt_id = http.post("/prompt", json={"prompt": no_progress_workflow(1.5), "client_id": "late"}
                              ).json()["prompt_id"]
        server.wait_until(lambda: server.job(prompt_id).status is JobStatus.RUNNING, what="the job running")
        ws = websocket.create_connection(f"{server.ws_url}?clientId=late", timeout=20)
        try:
            hello = json.loads(ws.recv())
            assert hello["type"] == "status"
            assert hello["data"]["status"]["exec_info"]["queue_remaining"] == 1  # connected while it ran
            seen = []
            while True:
                message = ws.recv()
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                seen.append(event["type"])
                data = event["data"]
                if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                    # The client now reads /history: the entry must be there, with the saved image.
                    history = http.get(f"/history/{prompt_id}").json()
                    assert history[prompt_id]["outputs"]["9"]["images"]
                    break
            assert "execution_success" in seen  # the end came after the run, not on connect
        finally:
            ws.close()
    assert [m["type"] for m in _hello(server, "late")] == ["status"]  # it saw the end: nothing held for it


def test_a_claimed_job_is_remaining_before_it_runs(tmp_path, make_fake_runtime, workflow) -> None:
    from tests.server.conftest import make_settings

    settings = make_settings(tmp_path, max_concurrent_jobs=1)
    release = threading.Event()

    def slow_factory() -> Any:
        release.wait(20)
        return make_fake_runtime(settings)

    services = build_services(settings)
    manager = JobManager(settings, services, slow_factory, services.queue)
    try:
        manager.start()
        manager.submit(JobRecord(id="claimed", workflow=workflow()))
        pause = threading.Event()
        for _ in range(1000):  # the worker took it from the queue and now waits for the runtime
            if services.queue.depth() == 0:
                break
            pause.wait(0.01)
        assert isinstance(services.queue, LocalJobQueue)
        assert services.queue.depth() == 0 and not manager.running_jobs()
        assert manager.queue_remaining() == 1
        release.set()
        for _ in range(1000):
            if manager.queue_remaining() == 0:
                break
            pause.wait(0.01)
        assert services.job_store.get("claimed").status is JobStatus.SUCCEEDED
    finally:
        release.set()
        manager.stop()
        services.close()


def test_system_stats_answers_while_torch_is_still_importing(start_server, make_fake_runtime, monkeypatch) -> None:
    # diffusers decides once, at its first import, whether torch is there: import it now, or a
    # first import during the fake half-imported torch below would disable it for later tests.
    import diffusers  # noqa: F401

    release = threading.Event()

    def slow_runtime(settings: Any) -> Any:
        release.wait(20)
        return make_fake_runtime(settings)

    server = start_server(runtime=slow_runtime, wait_setup=False)
    half_imported = types.ModuleType("torch")  # what the set-up thread's import leaves in sys.modules
    monkeypatch.setitem(sys.modules, "torch", half_imported)
    with server.client() as http:
        for _ in range(3):
            stats = http.get("/system_stats")
            assert stats.status_code == 200, stats.text
            assert stats.json()["devices"][0]["type"] == "cpu" and stats.json()["system"]["ram_total"] > 0
        monkeypatch.undo()
        release.set()
        server.wait_until(lambda: server.state.manager.setup_state == "succeeded", what="set-up")
        stats = http.get("/system_stats").json()
        assert stats["devices"] and stats["comfyd"]["version"]


def test_upload_image_stores_any_file_type(server, png) -> None:
    with server.client() as http:
        audio = http.post("/upload/image", files={"image": ("clip.wav", b"RIFF\x10\x00\x00\x00WAVEfmt ", "audio/wav")})
        assert audio.status_code == 200 and audio.json() == {"name": "clip.wav", "subfolder": "", "type": "input"}
        text = http.post("/upload/image", files={"image": ("p.txt", b"a prompt", "text/plain")}, data={"subfolder": "t"})
        assert text.status_code == 200
        assert (server.settings.input_dir / "t" / "p.txt").read_bytes() == b"a prompt"
        fake_png = http.post("/upload/image", files={"image": ("x.png", b"not a png", "image/png")})
        assert fake_png.status_code == 400  # an image by name is still checked
        disguised = http.post("/upload/image", files={"image": ("x.bin", b"\x89PNG\r\n\x1a\nbroken", "application/x")})
        assert disguised.status_code == 400  # and by its first bytes
        mask = http.post("/upload/mask", files={"image": ("m.txt", b"text", "text/plain")},
                         data={"original_ref": json.dumps({"filename": "clip.wav", "type": "input"})})
        assert mask.status_code == 400  # a mask must be an image
    big = server.settings.max_upload_bytes + 1
    with server.client() as http:
        too_big = http.post("/upload/image", files={"image": ("big.bin", b"0" * big, "application/octet-stream")})
        assert too_big.status_code == 413




def _hello(server: Any, client_id: str) -> list[dict[str, Any]]:
    """The messages a fresh connection gets at once (before any live event)."""
    ws = websocket.create_connection(f"{server.ws_url}?clientId={client_id}", timeout=5)
    try:
        messages = [json.loads(ws.recv())]
        ws.settimeout(0.5)
        while True:
            try:
                messages.append(json.loads(ws.recv()))
            except websocket.WebSocketTimeoutException:
                return messages
    finally:
        ws.close()


def test_a_job_that_ended_before_the_client_connected_is_announced_once(server, workflow) -> None:
    with server.client() as http:
        prompt_id = http.post("/prompt", json={"prompt": workflow(), "client_id": "slow-to-connect"}
                              ).json()["prompt_id"]
        server.wait_job(prompt_id)
        server.wait_until(lambda: server.state.manager.queue_remaining() == 0, what="the job's end announced")
        first = _hello(server, "slow-to-connect")
        assert [m["type"] for m in first] == ["status", "execution_success", "executing"]
        assert first[2]["data"] == {"node": None, "display_node": None, "prompt_id": prompt_id}
        assert http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]  # it really is finished
        assert [m["type"] for m in _hello(server, "slow-to-connect")] == ["status"]  # delivered once
        assert [m["type"] for m in _hello(server, "someone-else")] == ["status"]


def test_post_then_connect_clients_never_read_an_empty_history(server, workflow) -> None:
    """What comfy-api-simplified does: POST /prompt, then open the socket and take either a
    `status` with queue_remaining 0 or `executing {node: null}` of its prompt as the end, then
    read /history. Whatever the interleaving, the history must hold the job by then."""
    with server.client() as http:
        for index in range(12):
            seconds, steps = ((0.0, 1), (0.05, 2), (0.2, 4))[index % 3]
            client_id = f"simplified-{index}"
            prompt_id = http.post("/prompt", json={"prompt": workflow(seconds, steps, f"s{index % 3}"),
                                                   "client_id": client_id}).json()["prompt_id"]
            ws = websocket.create_connection(f"{server.ws_url}?clientId={client_id}", timeout=20)
            try:
                while True:
                    message = ws.recv()
                    if isinstance(message, bytes):
                        continue
                    event = json.loads(message)
                    data = event["data"]
                    if event["type"] == "status" and data["status"]["exec_info"]["queue_remaining"] == 0:
                        break
                    if event["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
                        break
            finally:
                ws.close()
            history = http.get(f"/history/{prompt_id}").json()
            assert prompt_id in history and history[prompt_id]["outputs"]["9"]["images"], index
