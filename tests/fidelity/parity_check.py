"""What both parity test modules share: the cases, their references and the comparison of one case.

The cases are split over two test modules (`test_parity.py`, `test_parity_second_half.py`) so that
a parallel run (`make test`: pytest-xdist, one file per worker) spreads them over two workers; the
parity model files are written once per worker (`conftest.py`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageSequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "bench"))
sys.path.insert(0, str(HERE))

from make_cases import threshold_db  # noqa: E402
from parity import compare_png, first_saved_image  # noqa: E402

WORKFLOWS = sorted((HERE / "workflows").glob("*.json"))
MANIFEST: dict[str, Any] = json.loads((HERE / "references" / "renders.json").read_text())
# A semantic error (wrong noise, schedule, conditioning) moves pixels by tens of levels; float
# round-off in a different order moves a few by one.
MAX_LEVELS_OFF = 4


def reference(stem: str) -> Path:
    """The reference of a case: a PNG, or a WEBP where the workflow saves an animated WEBP."""
    png = HERE / "references" / f"{stem}.png"
    webp = png.with_suffix(".webp")
    return webp if webp.exists() and not png.exists() else png


def png_private_chunks(path: Path) -> list[bytes]:
    """The `comf` chunks SaveAnimatedPNG writes (Pillow does not read them back)."""
    data = path.read_bytes()
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind == b"comf":
            chunks.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return chunks


def metadata(path: Path) -> dict[str, Any]:
    """What ComfyUI writes beside the pixels: PNG text and `comf` chunks, or WEBP EXIF tags."""
    with Image.open(path) as image:
        if image.format == "WEBP":
            return {"exif": dict(image.getexif())}
        return {"text": dict(image.text), "comf": png_private_chunks(path)}


def frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]



def halves() -> tuple[list[Path], list[Path]]:
    """The cases of the two test modules: alternate ones, so each half mixes slow and quick cases."""
    return WORKFLOWS[0::2], WORKFLOWS[1::2]


def check_case(path: Path, runner: Any) -> None:
    """Run one case through comfyd and hold it to ComfyUI's reference (pixels and metadata)."""
    workflow = json.loads(path.read_text())
    if any(n["class_type"] == "UpscaleModelLoader" for n in workflow.values()):
        from comfyd.models.upscale import import_spandrel

        try:
            import_spandrel()
        except ImportError:
            pytest.skip("the upscale extra (spandrel) is not installed")
    result = runner.run(workflow)
    assert result.ok, json.dumps(result.error, indent=2)
    roots = {"output": runner.env.output_dir, "temp": runner.env.temp_dir, "input": runner.env.input_dir}
    produced = first_saved_image(result.outputs, roots)
    expected = reference(path.stem)
    assert produced.suffix == expected.suffix
    # Every frame of an animated output; a still picture is one frame.
    ours_frames, their_frames = frames(produced), frames(expected)
    assert len(ours_frames) == len(their_frames), f"{path.stem}: frame count"
    bar = threshold_db(workflow)
    for index, (ours, theirs) in enumerate(zip(ours_frames, their_frames, strict=True)):
        psnr, max_diff = compare_png(ours, theirs)
        where = f"{path.stem} frame {index}"
        assert psnr >= bar, f"{where}: PSNR {psnr:.2f} dB < {bar:g} dB (max diff {max_diff})"
        assert max_diff <= MAX_LEVELS_OFF, f"{where}: a pixel is {max_diff} levels off (PSNR {psnr:.2f} dB)"
    # The metadata too: ComfyUI's "prompt" JSON, byte for byte (LoadImage's is_changed included),
    # in PNG text chunks, APNG `comf` chunks or WEBP EXIF tags as ComfyUI writes each.
    assert metadata(produced) == metadata(expected)
    # ... written into the run's copy of the prompt, not into the caller's workflow.
    assert all("is_changed" not in n for n in workflow.values())
