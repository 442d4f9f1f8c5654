"""A model-made video through the server: the tiny Wan 2.1 text-to-video workflow ending in
CreateVideo + SaveVideo (POST /prompt -> websocket `executed` -> /history -> /view with a byte
range -> the output store), the mp4 decoded by PyAV to the workflow's frames; then the Wan 2.1
image-to-video workflow with CLIP vision from an uploaded start image. The synthetic-frame
video outputs (audio, VHS, uploads) are covered by tests/server/test_video_outputs.py. It sits
here to share the session's tiny Wan files (`wan_models`) with the other Wan tests; the server
comes from tests/server's `start_server`."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import av
import pytest

from tests.families.wan_clip_reference import tiny_clip_workflow
from tests.families.wan_reference import FRAMES, SIZE, tiny_workflow
from tests.server.conftest import start_server  # noqa: F401  (the fixture)
from tests.server.test_comfy_flow import connect, follow


@pytest.mark.slow
def test_wan_t2v_and_clip_i2v_videos_through_the_server(wan_models: Path, start_server) -> None:  # noqa: F811
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

            # Image-to-video with CLIP vision (the canonical Wan 2.1 I2V workflow, kept short):
            # the start image uploaded as the frontend uploads it.
            upload = http.post("/upload/image", files={"image": ("start.png", _gradient_png(), "image/png")})
            assert upload.status_code == 200, upload.text
            i2v = tiny_clip_workflow(upload.json()["name"], steps=1)
            i2v["50"]["inputs"]["length"] = 5
            answer = http.post("/prompt", json={"prompt": i2v, "client_id": client_id})
            assert answer.status_code == 200, answer.text
            i2v_id = answer.json()["prompt_id"]
            done = {d["node"]: d["output"] for t, d in follow(ws, i2v_id, timeout=180) if t == "executed"}
            i2v_clip = {"filename": "ComfyUI_00001_.mp4", "subfolder": "video", "type": "output"}
            assert done["61"] == {"images": [i2v_clip], "animated": [True]}
            i2v_view = http.get("/view", params=i2v_clip)
            assert i2v_view.status_code == 200 and i2v_view.headers["content-type"] == "video/mp4"
    finally:
        ws.close()
    with av.open(io.BytesIO(view.content)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.average_rate == 16
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    assert frames[0].std() > 5  # a model's frames, not a blank
    with av.open(io.BytesIO(i2v_view.content)) as container:
        assert [f.to_ndarray(format="rgb24").shape for f in container.decode(video=0)] == [(SIZE, SIZE, 3)] * 5
    assert ("video/wan_00001_.mp4", "video/mp4") in stored and ("video/ComfyUI_00001_.mp4", "video/mp4") in stored


def _gradient_png() -> bytes:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:SIZE, 0:SIZE]
    out = io.BytesIO()
    Image.fromarray(np.stack([x * 4, y * 4, 255 - x * 2], -1).clip(0, 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()
