"""A model-made video through the server: the tiny Wan 2.1 text-to-video workflow ending in
CreateVideo + SaveVideo (POST /prompt -> websocket `executed` -> /history -> /view with a byte
range -> the output store), the mp4 decoded by PyAV to the workflow's frames. The synthetic-frame
video outputs (audio, VHS, uploads) are covered by tests/server/test_video_outputs.py. It sits
here to share the session's tiny Wan files (`wan_models`) with the other Wan tests; the server
comes from tests/server's `start_server`."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import av
import pytest

from tests.families.wan_reference import FRAMES, SIZE, tiny_workflow
from tests.server.conftest import start_server  # noqa: F401  (the fixture)
from tests.server.test_comfy_flow import connect, follow


@pytest.mark.slow
def test_wan_t2v_video_through_the_server(wan_models: Path, start_server) -> None:  # noqa: F811
    from comfyd.runtime import build_runtime

    server = start_server(runtime=build_runtime, models_dir=wan_models)
    stored: list[tuple[str, str]] = []
    store = server.services.output_store
    original_put = store.put

    def recording_put(job_id: str, filename: str, data: bytes, content_type: str = "image/png", metadata=None):
        stored.append((filename, content_type))
        return original_put(job_id, filename, data, content_type, metadata)

    store.put = recording_put
    graph = tiny_workflow()
    del graph["28"]  # the WEBP saver: a video instead
    graph["60"] = {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 16.0}}
    graph["61"] = {"class_type": "SaveVideo", "inputs": {"video": ["60", 0], "filename_prefix": "video/wan",
                                                         "format": "mp4", "codec": "h264"}}  # fmt: skip
    client_id = uuid.uuid4().hex
    ws = connect(server.ws_url, client_id)
    ws.recv()
    try:
        with server.client() as http:
            answer = http.post("/prompt", json={"prompt": graph, "client_id": client_id})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            events = follow(ws, prompt_id, timeout=180)
            executed = {d["node"]: d["output"] for t, d in events if t == "executed"}
            clip = {"filename": "wan_00001_.mp4", "subfolder": "video", "type": "output"}
            # ComfyUI 0.3.64's SaveVideo: the video under "images", flagged animated.
            assert executed["61"] == {"images": [clip], "animated": [True]}
            assert any(t == "progress" for t, _ in events)  # the sampler's steps were reported
            job = server.wait_job(prompt_id, timeout=60)
            assert job.status.value == "succeeded", job
            assert http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]["61"] == executed["61"]

            view = http.get("/view", params=clip)
            assert view.status_code == 200 and view.headers["content-type"] == "video/mp4"
            size = len(view.content)
            part = http.get("/view", params=clip, headers={"Range": "bytes=100-"})
            assert part.status_code == 206 and part.content == view.content[100:]
            assert part.headers["content-range"] == f"bytes 100-{size - 1}/{size}"
    finally:
        ws.close()
    with av.open(io.BytesIO(view.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 16
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    assert frames[0].std() > 5  # a model's frames, not a blank
    assert stored == [("video/wan_00001_.mp4", "video/mp4")]
