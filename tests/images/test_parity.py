"""bench/parity.py: compare_png on known arrays, and an end-to-end run on a pixel-only workflow."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def load_parity() -> ModuleType:
    spec = importlib.util.spec_from_file_location("comfyd_bench_parity", ROOT / "bench" / "parity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


parity = load_parity()


def test_identical_images_have_infinite_psnr(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    assert parity.compare_png(tmp_path / "a.png", array) == (math.inf, 0)


def test_psnr_of_known_differences() -> None:
    a = np.full((10, 10, 3), 100, dtype=np.uint8)
    # Every channel off by one: MSE 1 -> 20*log10(255).
    psnr, max_diff = parity.compare_png(a, a + 1)
    assert psnr == pytest.approx(20 * math.log10(255))
    assert max_diff == 1
    # One channel of one pixel off by 30: MSE = 900 / 300 = 3.
    b = a.copy()
    b[2, 3, 1] = 70
    psnr, max_diff = parity.compare_png(a, b)
    assert psnr == pytest.approx(10 * math.log10(255**2 / 3))
    assert max_diff == 30


def test_alpha_is_ignored_and_sizes_must_match() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 7, dtype=np.uint8)], axis=-1)
    assert parity.compare_png(rgb, rgba) == (math.inf, 0)
    with pytest.raises(ValueError, match="sizes differ: 4x4 vs 5x4"):
        parity.compare_png(rgb, np.zeros((4, 5, 3), dtype=np.uint8))


def test_first_saved_image_prefers_outputs_in_node_order(tmp_path: Path) -> None:
    outputs = {
        "12": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]},
        "3": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
        "9": {"images": [{"filename": "a.png", "subfolder": "s", "type": "output"}]},
    }
    roots = {"output": tmp_path / "out", "temp": tmp_path / "tmp"}
    assert parity.first_saved_image(outputs, roots) == tmp_path / "out" / "s" / "a.png"
    with pytest.raises(RuntimeError, match="saved no image"):
        parity.first_saved_image({"9": {}}, roots)


def test_end_to_end_pixel_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "input"
    inputs.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(inputs / "in.png")
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "parity"}},
    }
    (tmp_path / "wf.json").write_text(json.dumps({"prompt": workflow}))
    # ComfyUI's arithmetic: float32 1 - v/255, then truncation to uint8.
    expected = np.clip(255.0 * (1.0 - pixels.astype(np.float32) / 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(expected).save(tmp_path / "ref.png")
    args = [str(tmp_path / "wf.json"), str(tmp_path / "ref.png"), "--input-dir", str(inputs)]
    args += ["--models-dir", str(tmp_path / "models"), "--set", '3.filename_prefix="other"']
    assert parity.main(args) == 0
    out = capsys.readouterr().out
    assert "RESULT psnr_db=inf" in out
    Image.fromarray(pixels).save(tmp_path / "wrong.png")
    assert (
        parity.main([str(tmp_path / "wf.json"), str(tmp_path / "wrong.png"), "--input-dir", str(inputs)]) == 1
    )
    line = [text for text in capsys.readouterr().out.splitlines() if text.startswith("RESULT psnr_db=")]
    assert len(line) == 1 and float(line[0].split("=")[1]) < 40
