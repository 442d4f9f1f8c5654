"""The ComfyUI frontend's image flows over HTTP on the real nodes: upload to a subfolder (paste,
mask editor), LoadImage that name, view it, and read a saved output back with "[output]"."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _load_and_save(image: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_subfolder_upload_load_view_and_output_annotation(start_server, tmp_path) -> None:
    from comfyd.runtime import build_runtime

    srv = start_server(runtime=build_runtime, models_dir=tmp_path / "models")
    pixels = np.random.default_rng(1).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    data = _png(pixels)
    with srv.client() as http:
        uploaded = http.post("/upload/image", files={"image": ("image.png", data, "image/png")},
                             data={"subfolder": "pasted", "type": "input"})
        assert uploaded.json() == {"name": "image.png", "subfolder": "pasted", "type": "input"}
        view = http.get("/view", params={"filename": "image.png", "subfolder": "pasted", "type": "input"})
        assert view.status_code == 200 and view.content == data

        answer = http.post("/prompt", json={"prompt": _load_and_save("pasted/image.png", "first")})
        assert answer.status_code == 200, answer.text
        first = srv.wait_job(answer.json()["prompt_id"])
        saved = http.get(f"/history/{first.id}").json()[first.id]["outputs"]["2"]["images"][0]

        name = f"{saved['filename']} [output]"
        answer = http.post("/prompt", json={"prompt": _load_and_save(name, "second")})
        assert answer.status_code == 200, answer.text
        second = srv.wait_job(answer.json()["prompt_id"])
        copy = http.get(f"/history/{second.id}").json()[second.id]["outputs"]["2"]["images"][0]
        viewed = http.get("/view", params=copy)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(viewed.content))), pixels)

        missing = http.post("/prompt", json={"prompt": _load_and_save("pasted/nope.png", "x")})
        assert missing.status_code == 400
        [error] = missing.json()["node_errors"]["1"]["errors"]
        assert error["type"] == "custom_validation_failed"
        assert error["details"] == "image - Invalid image file: pasted/nope.png"

        escape = http.post("/prompt", json={"prompt": _load_and_save("../secret.png [output]", "x")})
        assert escape.status_code == 400
        assert escape.json()["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
