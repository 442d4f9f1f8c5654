"""The SD3.5 workflow through the server (POST /prompt -> /history -> /view) on the tiny split
files (UNETLoader, TripleCLIPLoader, VAELoader), held to diffusers' StableDiffusion3Pipeline on the
same files (tests/families/sd3_reference.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.models.tiny import make_tiny
from tests.families.sd3_reference import NAMES, psnr, reference, tiny_workflow


@pytest.mark.slow
def test_sd3_split_workflow_through_the_server_matches_diffusers(tmp_path: Path, start_server) -> None:
    from comfyd.runtime import build_runtime

    models = tmp_path / "models"
    make_tiny(models, family="sd3")
    server = start_server(runtime=build_runtime, models_dir=models)
    graph = tiny_workflow(split=True)
    with server.client() as http:
        info = http.get("/object_info/TripleCLIPLoader").json()["TripleCLIPLoader"]
        assert NAMES["clip_g"] in info["input"]["required"]["clip_name3"][1]["options"]
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
    assert psnr(ours, reference(models, tiny_workflow())) >= 40.0
