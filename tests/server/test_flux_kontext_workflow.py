"""Flux Kontext's canonical workflow through the server (POST /upload/image -> /prompt ->
/history -> /view), held to diffusers' FluxKontextPipeline on the same tiny files
(tests/families/flux_edit_reference.py)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.models.tiny import make_tiny
from tests.families.flux_edit_reference import kontext_graph, kontext_reference
from tests.families.flux_reference import SIZE, psnr


@pytest.mark.slow
def test_kontext_workflow_through_the_server_matches_diffusers(tmp_path: Path, start_server) -> None:
    from comfyd.runtime import build_runtime

    models = tmp_path / "models"
    make_tiny(models, family="flux")
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    picture = tmp_path / "edit-me.png"
    Image.fromarray(np.stack([255 - xx * 4, yy * 4, xx * 2], -1).astype(np.uint8)).save(picture)
    server = start_server(runtime=build_runtime, models_dir=models)
    graph = kontext_graph("edit-me.png")
    with server.client() as http:
        upload = http.post("/upload/image", files={"image": ("edit-me.png", picture.read_bytes(), "image/png")})
        assert upload.status_code == 200, upload.text
        answer = http.post("/prompt", json={"prompt": graph})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        image = entry["outputs"]["136"]["images"][0]
        png = http.get("/view", params=image)
    assert png.status_code == 200
    ours = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert psnr(ours, kontext_reference(models, graph, picture)) >= 40.0
