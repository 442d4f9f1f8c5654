"""The Flux.2 template graph (the [klein]-shaped tiny transformer) through the server
(POST /prompt -> /history -> /view), held to diffusers' Flux2Pipeline on the same tiny files and
conditioning (tests/families/flux2_reference.py); Flux.2's own text-encoder type gets a 400."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.models.tiny import make_tiny
from tests.families.flux2_reference import psnr, reference, tiny_workflow


@pytest.mark.slow
def test_flux2_graph_through_the_server_matches_diffusers(tmp_path: Path, start_server) -> None:
    from comfyd.runtime import build_runtime

    models = tmp_path / "models"
    make_tiny(models, family="flux2")
    server = start_server(runtime=build_runtime, models_dir=models)
    graph = tiny_workflow("klein")
    with server.client() as http:
        info = http.get("/object_info/Flux2Scheduler").json()["Flux2Scheduler"]
        assert info["category"] == "sampling/custom_sampling/schedulers"
        refused = http.post("/prompt", json={"prompt": tiny_workflow("klein", **{"2": {"type": "flux2"}})})
        assert refused.status_code == 400, refused.text
        answer = http.post("/prompt", json={"prompt": graph})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        image = entry["outputs"]["13"]["images"][0]
        png = http.get("/view", params=image)
    assert png.status_code == 200
    ours = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert ours.shape == (64, 64, 3)
    assert psnr(ours, reference(models, "klein")) >= 40.0
