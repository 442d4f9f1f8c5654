"""comfyd's UI templates (default graph, a subgraph graph; make_templates.py) and workflows embedded in images."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import comfyd.nodes  # noqa: F401
from comfyd.runner import default_workflow
from comfyd.workflow_formats import ui_to_api
from comfyd.workflow_formats.embedded import read_embedded, workflow_from_image
from comfyd.workflow_formats.source import load_workflow_source
from tests.workflow_formats.make_templates import build_templates, render

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
REFERENCE_PNG = HERE.parent / "fidelity" / "references" / "cfg_1_euler.png"


def test_templates_are_the_generators_output() -> None:
    """The stored files are what make_templates.py writes (rerun it after changing it)."""
    for name, workflow in build_templates().items():
        assert (TEMPLATES / name).read_text() == render(workflow), f"{name} is stale: run make_templates.py"


def test_default_template_converts_to_comfyuis_default_prompt() -> None:
    converted = ui_to_api(json.loads((TEMPLATES / "default.json").read_text())).prompt
    expected = default_workflow("beautiful scenery nature glass bottle landscape, , purple galaxy bottle,")
    expected["4"]["inputs"]["ckpt_name"] = "v1-5-pruned-emaonly-fp16.safetensors"  # the template's file
    assert {k: (v["class_type"], v["inputs"]) for k, v in converted.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in expected.items()
    }


def test_subgraph_template_expands_and_lists_its_model_downloads() -> None:
    workflow = json.loads((TEMPLATES / "flux_fill_subgraph.json").read_text())
    conversion = ui_to_api(workflow)
    prompt = conversion.prompt
    # Subgraph "Grow and Blur Mask" is node 48; its widgets (expand 0, blur_radius 31) reach the
    # inner nodes, over the values those store themselves (6 and 9).
    assert prompt["48:199"] == {"inputs": {"expand": 0, "tapered_corners": True, "mask": ["17", 1]},
                                "class_type": "GrowMask", "_meta": {"title": "GrowMask"}}
    assert prompt["48:252"]["inputs"] == {"blur_radius": 31, "sigma": 1, "image": ["48:251", 0]}
    assert prompt["50"]["inputs"]["mask"] == ["48:253", 0] and "48" not in prompt
    names = {m["name"]: m["directory"] for m in conversion.model_links}
    assert names["ae.safetensors"] == "vae"
    assert all(m["url"].startswith("https://huggingface.co/") for m in conversion.model_links)
    # The bypassed LoRA hands the model through; the bypassed outpainting branch is left out.
    assert prompt["39"]["inputs"]["model"] == ["31", 0]
    bypassed = {str(n["id"]) for n in workflow["nodes"] if n["mode"] == 4}
    assert bypassed and not bypassed & set(prompt) and conversion.unknown_nodes == []


def _png_with_chunks(path: Path, chunks: dict[str, str]) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00\x00")
    texts = b"".join(chunk(b"tEXt", k.encode() + b"\0" + v.encode("latin-1")) for k, v in chunks.items())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + texts + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_png_written_by_comfyui_gives_its_prompt() -> None:
    body, chunk = workflow_from_image(REFERENCE_PNG)
    assert chunk == "prompt" and body["3"]["class_type"] == "KSampler"
    assert load_workflow_source(REFERENCE_PNG)[1] == "png:prompt"


def test_png_with_only_a_ui_chunk(tmp_path: Path) -> None:
    ui = (TEMPLATES / "default.json").read_text()
    picture = tmp_path / "ui_only.png"
    _png_with_chunks(picture, {"workflow": ui})
    body, fmt = load_workflow_source(picture)
    assert fmt == "png:workflow" and body == json.loads(ui)
    assert set(read_embedded(picture)) == {"workflow"}


def test_webp_exif_chunks(tmp_path: Path) -> None:
    from PIL import Image

    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 8, "height": 8, "batch_size": 1}}}
    exif = Image.Exif()
    exif[0x010F] = "prompt:" + json.dumps(prompt)  # where ComfyUI's SaveAnimatedWEBP puts it
    exif[0x0110] = "workflow:" + json.dumps({"nodes": [], "links": []})
    picture = tmp_path / "x.webp"
    Image.new("RGB", (4, 4)).save(picture, exif=exif.tobytes())
    assert read_embedded(picture) == {"prompt": prompt, "workflow": {"nodes": [], "links": []}}
    assert load_workflow_source(picture) == (prompt, "webp:prompt")


def test_damaged_images_are_clear_errors(tmp_path: Path) -> None:
    import pytest

    picture = tmp_path / "cut.png"
    picture.write_bytes(REFERENCE_PNG.read_bytes()[:200])
    with pytest.raises(ValueError, match="no ComfyUI workflow|damaged"):
        load_workflow_source(picture)
    bad_json = tmp_path / "bad.png"
    _png_with_chunks(bad_json, {"prompt": "{not json"})
    with pytest.raises(ValueError, match="not JSON"):
        load_workflow_source(bad_json)
    compressed = tmp_path / "z.png"
    _png_with_chunks(compressed, {})
    data = compressed.read_bytes()
    body = b"prompt\0\0" + b"garbage-not-zlib"
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    compressed.write_bytes(data[:33] + chunk + data[33:])
    with pytest.raises(ValueError, match="damaged"):
        load_workflow_source(compressed)
