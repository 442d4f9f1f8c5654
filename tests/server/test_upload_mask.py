"""POST /upload/mask: ComfyUI's mask editor stores the original image with the mask's alpha."""

from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo


def _rgba_png(size: tuple[int, int], alpha: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", size, (0, 0, 0, alpha)).save(buffer, format="PNG")
    return buffer.getvalue()


def _original(server, name: str = "photo.png", folder: str = "output") -> None:
    target = getattr(server.settings, f"{folder}_dir")
    target.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("prompt", '{"3": {}}')
    Image.new("RGB", (12, 10), (10, 200, 30)).save(target / name, pnginfo=info)


def test_mask_alpha_lands_on_the_original_with_its_metadata(server) -> None:
    _original(server)
    with server.client() as http:
        answer = http.post(
            "/upload/mask",
            files={"image": ("clipspace-mask-1.png", _rgba_png((12, 10), 77), "image/png")},
            data={"type": "input", "subfolder": "clipspace",
                  "original_ref": json.dumps({"filename": "photo.png", "subfolder": "", "type": "output"})},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"name": "clipspace-mask-1.png", "subfolder": "clipspace", "type": "input"}
        view = http.get("/view", params={"filename": "clipspace-mask-1.png", "subfolder": "clipspace",
                                         "type": "input"})
    with Image.open(io.BytesIO(view.content)) as stored:
        assert stored.mode == "RGBA" and stored.size == (12, 10)
        assert stored.getpixel((3, 3)) == (10, 200, 30, 77)
        assert stored.text["prompt"] == '{"3": {}}'


def test_annotated_original_names_their_folder(server) -> None:
    _original(server, "pic.png", folder="temp")
    with server.client() as http:
        answer = http.post(
            "/api/upload/mask",
            files={"image": ("m.png", _rgba_png((12, 10), 0), "image/png")},
            data={"original_ref": json.dumps({"filename": "pic.png [temp]"})},
        )
    assert answer.status_code == 200, answer.text


def test_bad_mask_uploads_get_clear_4xx(server) -> None:
    _original(server)
    mask = _rgba_png((12, 10), 0)
    cases = [
        ({}, 400, "original_ref"),
        ({"original_ref": "{not json"}, 400, "not JSON"),
        ({"original_ref": json.dumps({"subfolder": ""})}, 400, "filename"),
        ({"original_ref": json.dumps({"filename": "nope.png"})}, 404, "nope.png"),
        ({"original_ref": json.dumps({"filename": "../secret.png"})}, 400, "original_ref"),
        ({"original_ref": json.dumps({"filename": "photo.png", "subfolder": "../.."})}, 400, "original_ref"),
        ({"original_ref": json.dumps({"filename": "photo.png", "type": "models"})}, 400, "type"),
    ]
    with server.client() as http:
        for data, status, word in cases:
            answer = http.post("/upload/mask", files={"image": ("m.png", mask, "image/png")}, data=data)
            assert answer.status_code == status, (data, answer.text)
            assert word in answer.text, (data, answer.text)
        wrong_size = http.post(
            "/upload/mask", files={"image": ("m.png", _rgba_png((5, 5), 0), "image/png")},
            data={"original_ref": json.dumps({"filename": "photo.png"})},
        )
        assert wrong_size.status_code == 400 and "5x5" in wrong_size.text
