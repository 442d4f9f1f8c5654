"""Each checkpoint family runs the whole text-to-image graph through the real nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.models.tiny import make_tiny_checkpoint, make_tiny_lora
from comfyd.runner import LocalRunner
from comfyd.settings import Settings


def _graph(ckpt: str, *, sdxl_encode: bool = False, lora: str | None = None, lora_strength: float = 1.0,
           clip_skip: int | None = None, seed: int = 3) -> dict:
    model, clip = ["4", 0], ["4", 1]
    graph: dict = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 2, "cfg": 6.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "fam", "images": ["8", 0]}},
    }
    if lora is not None:
        graph["10"] = {"class_type": "LoraLoader", "inputs": {
            "model": model, "clip": clip, "lora_name": lora, "strength_model": lora_strength,
            "strength_clip": lora_strength}}
        model, clip = ["10", 0], ["10", 1]
        graph["3"]["inputs"]["model"] = model
    if clip_skip is not None:
        graph["11"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": clip, "stop_at_clip_layer": clip_skip}}
        clip = ["11", 0]
    if sdxl_encode:
        size = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
        graph["6"] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {**size, "text_g": "a fox", "text_l": "a fox", "clip": clip}}
    else:
        graph["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.2) fox", "clip": clip}}
    graph["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}}
    return graph


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalRunner, dict[str, str]]:
    root = tmp_path_factory.mktemp("families")
    names = {}
    for family in ("sd1", "sd2", "sdxl"):
        names[family] = make_tiny_checkpoint(root / "models" / "checkpoints", family=family, fmt="single", seed=1).name
    names["sdxl-diffusers"] = make_tiny_checkpoint(
        root / "models" / "checkpoints", family="sdxl", fmt="diffusers", seed=1).name
    base = root / "models" / "checkpoints" / names["sd1"]
    names["lora"] = make_tiny_lora(root / "models" / "loras", base, fmt="kohya", seed=2).name
    settings = Settings(models_dir=root / "models", output_dir=root / "out", temp_dir=root / "temp", input_dir=root / "in")
    return LocalRunner(settings), names


def _pixels(runner: LocalRunner, graph: dict) -> np.ndarray:
    result = runner.run(graph)
    assert result.ok, result.error
    [image] = result.images
    return np.asarray(Image.open(image.path))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_each_family_draws_an_image(env, family: str) -> None:
    runner, names = env
    pixels = _pixels(runner, _graph(names[family]))
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 0  # random weights draw noise, but not a constant image


def test_sdxl_size_conditioning_node_and_diffusers_folder(env) -> None:
    runner, names = env
    assert _pixels(runner, _graph(names["sdxl"], sdxl_encode=True)).shape == (64, 64, 3)
    single = _pixels(runner, _graph(names["sdxl"], seed=8))
    folder = _pixels(runner, _graph(names["sdxl-diffusers"], seed=8))
    assert np.array_equal(single, folder)


def test_lora_at_strength_zero_is_no_lora_and_at_one_changes_the_image(env) -> None:
    runner, names = env
    plain = _pixels(runner, _graph(names["sd1"], seed=5))
    zero = _pixels(runner, _graph(names["sd1"], seed=5, lora=names["lora"], lora_strength=0.0))
    one = _pixels(runner, _graph(names["sd1"], seed=5, lora=names["lora"], lora_strength=1.0))
    assert np.array_equal(plain, zero)
    assert not np.array_equal(plain, one)
    # Unloading restored the shared base weights: the plain graph draws the same image again.
    runner.executor.cache.clear()
    assert np.array_equal(plain, _pixels(runner, _graph(names["sd1"], seed=5)))


def test_clip_skip_changes_the_image(env) -> None:
    runner, names = env
    last = _pixels(runner, _graph(names["sd1"], seed=6, clip_skip=-1))
    penultimate = _pixels(runner, _graph(names["sd1"], seed=6, clip_skip=-2))
    assert not np.array_equal(last, penultimate)


def test_gpu_throughput_bench_runs_tiny_on_cpu() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_throughput.py"
    proc = subprocess.run([sys.executable, str(script), "--tiny"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT gpu_its_ratio=") and float(last.split("=")[1]) > 0
