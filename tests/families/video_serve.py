"""One model-made video through the server, as a client sees it: POST /prompt, the websocket's
`executed` event naming the mp4 under ComfyUI's output keys, /history, /view with the video
content type and a byte range, and the file decoded by PyAV. The family tests call it with their
own tiny files and canonical workflows."""

from __future__ import annotations

import io
import uuid
from typing import Any

import av
import numpy as np

from tests.server.test_comfy_flow import connect, follow


def video_through_server(server: Any, graph: dict[str, Any], save_node: str, frames: int, size: int) -> None:
    client_id = uuid.uuid4().hex
    ws = connect(server.ws_url, client_id)
    ws.recv()
    try:
        with server.client() as http:
            answer = http.post("/prompt", json={"prompt": graph, "client_id": client_id})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            events = follow(ws, prompt_id, timeout=240)
            executed = {d["node"]: d["output"] for t, d in events if t == "executed"}
            output = executed[save_node]
            assert output["animated"] == [True] and len(output["images"]) == 1
            clip = output["images"][0]
            assert clip["filename"].endswith(".mp4") and clip["type"] == "output"
            assert any(t == "progress" for t, _ in events)  # the sampler's steps were reported
            job = server.wait_job(prompt_id, timeout=60)
            assert job.status.value == "succeeded", job
            assert http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"][save_node] == output
            view = http.get("/view", params=clip)
            assert view.status_code == 200 and view.headers["content-type"] == "video/mp4"
            part = http.get("/view", params=clip, headers={"Range": "bytes=10-"})
            assert part.status_code == 206 and part.content == view.content[10:]
    finally:
        ws.close()
    with av.open(io.BytesIO(view.content)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == frames and decoded[0].shape == (size, size, 3)
    assert not np.array_equal(decoded[0], decoded[-1])  # a video, not one picture repeated
