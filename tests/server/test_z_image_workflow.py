"""Z-Image Turbo's canonical workflow through the server (POST /prompt -> /history -> /view), held
to diffusers' ZImagePipeline on the same tiny files (tests/families/z_image_reference.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.models.families import _z_image_tiny
from comfyd.models.tiny import make_tiny
from tests.families.z_image_reference import psnr, reference, tiny_workflow


@pytest.mark.slow
def test_z_image_turbo_workflow_through_the_server_matches_diffusers(tmp_path: Path, start_server) -> None:
    from comfyd.runtime import build_runtime

    models = tmp_path / "models"
    make_tiny(models, family="z-image")
    server = start_server(runtime=build_runtime, models_dir=models)
    graph = tiny_workflow()
    with server.client() as http:
        info = http.get("/object_info/CLIPLoader").json()["CLIPLoader"]
        assert "lumina2" in info["input"]["required"]["type"][0]
        assert Path(_z_image_tiny.NAMES["qwen3_4b"]).name in info["input"]["required"]["clip_name"][0]
        answer = http.post("/prompt", json={"prompt": graph})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        image = entry["outputs"]["9"]["images"][0]
        png = http.get("/view", params=image)
    assert png.status_code == 200
    ours = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert psnr(ours, reference(models, graph)) >= 40.0
