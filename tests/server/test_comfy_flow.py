"""ComfyUI's own client flow against a real server: POST /prompt, follow /ws, GET /history, GET /view."""

from __future__ import annotations

import json
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import websocket

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def follow(ws: websocket.WebSocket, prompt_id: str, timeout: float = 60.0) -> list[tuple[str, Any]]:
    """Every message until `executing {node: null}` for prompt_id; binary frames as ("binary", bytes)."""
    messages: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    ws.settimeout(timeout)
    while time.monotonic() < deadline:
        raw = ws.recv()
        if isinstance(raw, bytes):
            messages.append(("binary", raw))
            continue
        event = json.loads(raw)
        messages.append((event["type"], event["data"]))
        data = event["data"]
        if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages
    raise AssertionError(f"no final executing event for {prompt_id}: {messages}")


def connect(url: str, client_id: str, **kwargs: Any) -> websocket.WebSocket:
    return websocket.create_connection(f"{url}?clientId={client_id}", timeout=10, **kwargs)


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_comfyui_client_flow(server, workflow, prefix: str) -> None:
    client_id = uuid.uuid4().hex
    ws = connect(server.url.replace("http", "ws") + prefix + "/ws", client_id)
    hello = json.loads(ws.recv())
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}

    with server.client() as http:
        answer = http.post(f"{prefix}/prompt", json={"prompt": workflow(0.05, 3, "flow"), "client_id": client_id})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
        prompt_id = body["prompt_id"]

        messages = follow(ws, prompt_id)
        job_events = [(t, d) for t, d in messages if t != "status"]
        kinds = [t for t, _ in job_events]
        assert kinds[0] == "execution_start" and kinds[1] == "execution_cached"
        assert ("executing", "3") in [(t, d.get("node")) for t, d in job_events]
        progress = [d for t, d in job_events if t == "progress"]
        assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")]
        executed = [d for t, d in job_events if t == "executed"]
        assert executed[0]["node"] == "9" and executed[0]["output"]["images"][0]["type"] == "output"
        assert kinds[-2:] == ["execution_success", "executing"]
        assert all(d["prompt_id"] == prompt_id for _, d in job_events)

        # The final executing{null} comes after the history is stored: it must be there now.
        history = http.get(f"{prefix}/history/{prompt_id}").json()
        entry = history[prompt_id]
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                               "execution_success"]
        assert entry["prompt"][1] == prompt_id and entry["prompt"][4] == ["9"]
        image = entry["outputs"]["9"]["images"][0]
        assert set(image) == {"filename", "subfolder", "type"}

        view = http.get(f"{prefix}/view", params=image)
        assert view.status_code == 200 and view.headers["content-type"] == "image/png"
        assert view.content.startswith(PNG_SIGNATURE)
        assert view.content == (Path(server.settings.output_dir) / image["filename"]).read_bytes()

        all_history = http.get(f"{prefix}/history", params={"max_items": 5}).json()
        assert prompt_id in all_history
        assert http.get(f"{prefix}/queue").json() == {"queue_running": [], "queue_pending": []}
        assert http.get(f"{prefix}/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    ws.close()


def test_events_go_to_the_submitting_client_only(server, workflow) -> None:
    ws_a = connect(server.ws_url, "client-a")
    ws_b = connect(server.ws_url, "client-b")
    ws_a.recv(), ws_b.recv()
    with server.client() as http:
        prompt_id = http.post("/prompt", json={"prompt": workflow(0.0, 1), "client_id": "client-a"}).json()["prompt_id"]
    follow(ws_a, prompt_id)
    ws_b.settimeout(0.3)
    seen_by_b = []
    try:
        while True:
            seen_by_b.append(json.loads(ws_b.recv())["type"])
    except websocket.WebSocketTimeoutException:
        pass
    assert set(seen_by_b) <= {"status"}, seen_by_b  # queue status is for everyone, job events are not


def test_save_image_websocket_binary_frame(server, workflow) -> None:
    ws = connect(server.ws_url, "binary-client")
    ws.recv()
    with server.client() as http:
        body = {"prompt": workflow(0.0, 1, ws_image=True), "client_id": "binary-client"}
        prompt_id = http.post("/prompt", json=body).json()["prompt_id"]
    frames = [payload for kind, payload in follow(ws, prompt_id) if kind == "binary"]
    assert len(frames) == 1
    event_type, image_format = struct.unpack(">II", frames[0][:8])
    assert (event_type, image_format) == (1, 2)  # PREVIEW_IMAGE, PNG
    assert frames[0][8:].startswith(PNG_SIGNATURE)


def test_execution_error_event_and_error_history(server, workflow) -> None:
    ws = connect(server.ws_url, "err-client")
    ws.recv()
    with server.client() as http:
        body = {"prompt": workflow(0.0, 1, "err", flaky={"fails": 1, "kind": "workflow"}), "client_id": "err-client"}
        prompt_id = http.post("/prompt", json=body).json()["prompt_id"]
        messages = follow(ws, prompt_id)
        errors = [d for t, d in messages if t == "execution_error"]
        assert len(errors) == 1
        error = errors[0]
        assert error["node_id"] == "4" and error["node_type"] == "TestFlaky"
        assert error["exception_type"] == "ValueError" and "simulated" in error["exception_message"]
        assert set(error) >= {"prompt_id", "executed", "traceback", "current_inputs", "current_outputs"}
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_error"
    assert server.job(prompt_id).attempts == 1  # a workflow error is not retried


def test_reconnecting_client_learns_the_running_node(server, workflow) -> None:
    with server.client() as http:
        body = {"prompt": workflow(1.0, 20, "long"), "client_id": "again"}
        prompt_id = http.post("/prompt", json=body).json()["prompt_id"]
        server.wait_until(lambda: server.job(prompt_id).progress.get("node") == "3", what="progress stored")
        ws = connect(server.ws_url, "again")
        first, second = json.loads(ws.recv()), json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["status"]["exec_info"]["queue_remaining"] == 1
        assert second == {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": prompt_id}}
        follow(ws, prompt_id)


# ---- the real nodes on a tiny model ------------------------------------------------------------


def _assert_real_stack() -> None:
    # comfyd's own modules must import and register the nodes: a failure here fails the test.
    import comfyd.models.manager  # noqa: F401
    import comfyd.models.tiny  # noqa: F401
    import comfyd.nodes  # noqa: F401
    from comfyd.engine.schema import REGISTRY

    missing = {"CheckpointLoaderSimple", "KSampler", "CLIPTextEncode", "EmptyLatentImage", "VAEDecode",
               "SaveImage"} - set(REGISTRY.names())
    assert not missing, f"nodes missing: {sorted(missing)}"


@pytest.mark.slow
def test_comfyui_client_flow_real_nodes_tiny_model(start_server, tmp_path: Path) -> None:
    _assert_real_stack()
    from comfyd.models.tiny import make_tiny_checkpoint
    from comfyd.runtime import build_runtime

    models_dir = tmp_path / "models"
    checkpoint = make_tiny_checkpoint(models_dir / "checkpoints", "sd1")
    srv = start_server(runtime=build_runtime, models_dir=models_dir)
    workflow = json.loads((Path(__file__).parents[2] / "comfyd/workflows/default_api.json").read_text())
    workflow["4"]["inputs"]["ckpt_name"] = Path(checkpoint).name
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["3"]["inputs"].update(steps=2, seed=7)

    ws = connect(srv.ws_url, "real")
    ws.recv()
    with srv.client() as http:
        assert Path(checkpoint).name in http.get("/models/checkpoints").json()
        assert http.get("/embeddings").json() == []
        info = http.get("/object_info/KSampler").json()
        assert info["KSampler"]["input"]["required"]["seed"][0] == "INT"
        prompt_id = http.post("/prompt", json={"prompt": workflow, "client_id": "real"}).json()["prompt_id"]
        messages = follow(ws, prompt_id, timeout=120)
        kinds = [t for t, _ in messages if t != "status"]
        assert "execution_success" in kinds, messages[-3:]
        progress = [d for t, d in messages if t == "progress"]
        assert progress and progress[-1]["value"] == progress[-1]["max"] == 2 and progress[-1]["node"] == "3"
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        image = entry["outputs"]["9"]["images"][0]
        data = http.get("/view", params=image).content
        # /v1/generate fills the default graph and picks the installed checkpoint.
        generated = http.post("/v1/generate", json={"prompt": "a red fox", "width": 64, "height": 64, "steps": 1,
                                                    "seed": 5, "negative_prompt": "blurry"})
        assert generated.status_code == 200, generated.text
        prediction = generated.json()
        assert prediction["status"] == "succeeded" and len(prediction["output"]) == 1
        assert http.get(prediction["output"][0]).content.startswith(PNG_SIGNATURE)
        stored = srv.job(prediction["id"]).workflow
        assert stored["6"]["inputs"]["text"] == "a red fox" and stored["7"]["inputs"]["text"] == "blurry"
        assert stored["4"]["inputs"]["ckpt_name"] == Path(checkpoint).name and stored["3"]["inputs"]["seed"] == 5
    assert data.startswith(PNG_SIGNATURE)
    import io

    from PIL import Image
    assert Image.open(io.BytesIO(data)).size == (64, 64)


def test_partial_execution_targets_run_only_those_outputs(server, workflow) -> None:
    prompt = workflow(0.0, 1, "partial")
    prompt["10"] = {"class_type": "TestSave", "inputs": {"value": ["3", 0], "filename_prefix": "other",
                                                    "folder": "output"}}
    with server.client() as http:
        body = {"prompt": prompt, "partial_execution_targets": ["10"]}
        prompt_id = http.post("/prompt", json=body).json()["prompt_id"]
        server.wait_job(prompt_id)
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
    assert list(entry["outputs"]) == ["10"] and entry["prompt"][4] == ["10"]
    assert "partial_execution_targets" not in entry["prompt"][3]
    output = Path(server.settings.output_dir)
    assert len(list(output.glob("other_*.png"))) == 1 and not list(output.glob("t_*.png"))
