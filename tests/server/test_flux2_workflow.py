"""The Flux.2 template graphs through the server (POST /prompt -> /history -> /view), [dev] with its
Mistral text encoder and [klein] with its Qwen3 (CLIPLoader type flux2); [klein]'s picture held to
diffusers' Flux2KleinPipeline on the same tiny files and noise (tests/families/flux2_reference.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.models.tiny import make_tiny
from tests.families.flux2_reference import psnr, reference, tiny_workflow


@pytest.mark.slow
def test_flux2_graphs_through_the_server_match_diffusers(tmp_path: Path, start_server) -> None:
    from comfyd.runtime import build_runtime

    models = tmp_path / "models"
    make_tiny(models, family="flux2")
    server = start_server(runtime=build_runtime, models_dir=models)
    with server.client() as http:
        info = http.get("/object_info/Flux2Scheduler").json()["Flux2Scheduler"]
        assert info["category"] == "sampling/custom_sampling/schedulers"
        clip_types = http.get("/object_info/CLIPLoader").json()["CLIPLoader"]["input"]["required"]["type"][0]
        assert clip_types[-1] == "flux2"
        refused = http.post("/prompt", json={"prompt": tiny_workflow("klein", **{"2": {"type": "flux3"}})})
        assert refused.status_code == 400, refused.text
        for variant in ("dev", "klein"):
            answer = http.post("/prompt", json={"prompt": tiny_workflow(variant)})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            job = server.wait_job(prompt_id, timeout=180)
            assert job.status.value == "succeeded", job
            entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
            png = http.get("/view", params=entry["outputs"]["13"]["images"][0])
            assert png.status_code == 200
            ours = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
            assert ours.shape == (64, 64, 3) and ours.std() > 5
            if variant == "klein":  # [dev]'s picture is held to diffusers in tests/families/test_flux2.py
                assert psnr(ours, reference(models, variant)) >= 40.0
