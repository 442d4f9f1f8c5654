"""Animated and batch outputs take SaveImage's path: websocket `executed`, /history, /view, the
output store (with their content types) and the prediction response. Real nodes, no model."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from comfyd.engine.cache import NodeCache
from comfyd.engine.context import NodeEnvironment
from comfyd.engine.executor import Executor
from comfyd.engine.jobs import JobRuntime
from comfyd.engine.schema import REGISTRY
from comfyd.settings import Settings
from tests.server.test_comfy_flow import connect, follow


def real_nodes_runtime(settings: Settings) -> JobRuntime:
    import comfyd.nodes  # noqa: F401  (registers the nodes)

    env = NodeEnvironment(settings, models=None)
    return JobRuntime(registry=REGISTRY, env=env, executor=Executor(REGISTRY, env, cache=NodeCache(max_bytes=0)))


def animated_workflow() -> dict[str, Any]:
    def node(class_type: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs}

    return {
        # Three different frames (Pillow merges identical neighbours into one longer frame).
        "1": node("EmptyImage", width=32, height=24, batch_size=1, color=0xFF0000),
        "2": node("EmptyImage", width=16, height=16, batch_size=1, color=0x0000FF),
        "3": node("ImageBatch", image1=["1", 0], image2=["2", 0]),
        "4": node("EmptyImage", width=8, height=8, batch_size=1, color=0x00FF00),
        "5": node("ImageBatch", image1=["3", 0], image2=["4", 0]),
        "10": node("SaveAnimatedWEBP", images=["5", 0], filename_prefix="anim/clip", fps=4.0, lossless=True,
                   quality=80, method="fastest"),
        "11": node("SaveAnimatedPNG", images=["5", 0], filename_prefix="anim/moving", fps=4.0, compress_level=4),
        "12": node("SaveImage", images=["5", 0], filename_prefix="frames"),
    }


def test_animated_and_batch_outputs_reach_history_store_and_predictions(start_server) -> None:
    server = start_server(runtime=real_nodes_runtime)
    stored: list[tuple[str, str, bytes]] = []
    store = server.services.output_store
    original_put = store.put

    def recording_put(job_id: str, filename: str, data: bytes, content_type: str = "image/png", metadata=None):
        stored.append((filename, content_type, data))
        return original_put(job_id, filename, data, content_type, metadata)

    store.put = recording_put  # the job layer writes through this very object
    client_id = uuid.uuid4().hex
    ws = connect(server.ws_url, client_id)
    ws.recv()
    with server.client() as http:
        answer = http.post("/prompt", json={"prompt": animated_workflow(), "client_id": client_id})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        executed = {d["node"]: d["output"] for t, d in follow(ws, prompt_id) if t == "executed"}

        webp = {"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}
        apng = {"filename": "moving_00001_.png", "subfolder": "anim", "type": "output"}
        frames = [{"filename": f"frames_0000{i}_.png", "subfolder": "", "type": "output"} for i in (1, 2, 3)]
        # ComfyUI's UI entries: the animated flag beside the images.
        assert executed["10"] == {"images": [webp], "animated": [True]}
        assert executed["11"] == {"images": [apng], "animated": [True]}
        assert executed["12"] == {"images": frames}

        history = http.get(f"/history/{prompt_id}").json()[prompt_id]
        assert history["outputs"]["10"] == executed["10"] and history["outputs"]["11"] == executed["11"]
        view = http.get("/view", params=webp)
        assert view.status_code == 200 and view.headers["content-type"] == "image/webp"

        output_dir = Path(server.settings.output_dir)
        with Image.open(output_dir / "anim" / "clip_00001_.webp") as image:
            assert image.format == "WEBP" and image.n_frames == 3 and image.size == (32, 24)
            # The prompt in EXIF tag 0x0110, as ComfyUI writes it.
            assert image.getexif()[0x0110].startswith('prompt:{"1": {"class_type": "EmptyImage"')
        with Image.open(output_dir / "anim" / "moving_00001_.png") as image:
            assert image.n_frames == 3 and image.info["duration"] == 250
        assert b"comfprompt\x00{" in (output_dir / "anim" / "moving_00001_.png").read_bytes()

        types = sorted((name, kind) for name, kind, _data in stored)
        assert types == [
            ("anim/clip_00001_.webp", "image/webp"),
            ("anim/moving_00001_.png", "image/png"),
            ("frames_00001_.png", "image/png"),
            ("frames_00002_.png", "image/png"),
            ("frames_00003_.png", "image/png"),
        ]
        assert dict((n, d) for n, _k, d in stored)["anim/clip_00001_.webp"] == (
            output_dir / "anim" / "clip_00001_.webp"
        ).read_bytes()

        record = server.wait_job(prompt_id)
        assert len(record.output_keys) == 5  # URLs are signed when read, never stored
        prediction = http.get(f"/predictions/{prompt_id}")  # the Cog-style view of the same job
        assert prediction.status_code == 200, prediction.text
        assert len(prediction.json()["output"]) == 5
    ws.close()
