"""LTX-Video's canonical text-to-video workflow through the server (POST /prompt -> /history ->
/view) on the tiny files: an mp4 PyAV decodes to the expected frames."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from comfyd.models.tiny import make_tiny
from tests.families.test_ltxv import FRAMES, SIZE, tiny_workflow


@pytest.mark.slow
def test_ltxv_t2v_workflow_through_the_server_gives_a_playable_mp4(tmp_path: Path, start_server) -> None:
    from comfyd.runtime import build_runtime

    models = tmp_path / "models"
    make_tiny(models, family="ltxv")
    server = start_server(runtime=build_runtime, models_dir=models)
    with server.client() as http:
        answer = http.post("/prompt", json={"prompt": tiny_workflow()})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        output = http.get(f"/history/{prompt_id}").json()[prompt_id]["outputs"]["76"]
        video = next(item for items in output.values() if isinstance(items, list) for item in items
                     if isinstance(item, dict) and str(item.get("filename", "")).endswith(".mp4"))  # fmt: skip
        mp4 = http.get("/view", params=video)
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(mp4.content)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
