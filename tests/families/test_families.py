"""Each checkpoint family runs a whole API-format text-to-image workflow through the real nodes.

Tiny random-weight checkpoints in the real single-file layouts (SD1, SD2 v-prediction, SDXL) and
an SDXL diffusers folder, a tiny kohya LoRA; every run goes CheckpointLoaderSimple ->
CLIPTextEncode -> KSampler (euler/normal) -> VAEDecode -> SaveImage via LocalRunner.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.models.tiny import make_tiny_checkpoint, make_tiny_lora
from comfyd.runner import LocalRunner
from comfyd.settings import Settings

SIZE = 64
STEPS = 2
DECODE_NODE = "8"
BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_throughput.py"


@dataclass(frozen=True)
class Models:
    runner: LocalRunner
    names: dict[str, str]  # sd1 | sd2 | sdxl | sdxl-diffusers | lora -> file name in its folder


@dataclass(frozen=True)
class Drawn:
    pixels: np.ndarray  # the saved PNG, [H, W, 3] uint8
    image: torch.Tensor  # VAEDecode's IMAGE, [1, H, W, 3] float


def workflow(
    ckpt: str,
    *,
    seed: int = 3,
    text: str = "a (red:1.2) fox",
    sdxl_sizes: dict[str, int] | None = None,
    lora: str | None = None,
    lora_strength: float = 1.0,
    clip_skip: int | None = None,
) -> dict:
    """An API-format graph; `sdxl_sizes` switches the positive prompt to CLIPTextEncodeSDXL."""
    model, clip = ["4", 0], ["4", 1]
    graph: dict = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }
    if lora is not None:
        graph["10"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora,
                "strength_model": lora_strength,
                "strength_clip": lora_strength,
            },
        }
        model, clip = ["10", 0], ["10", 1]
    if clip_skip is not None:
        graph["11"] = {
            "class_type": "CLIPSetLastLayer",
            "inputs": {"clip": clip, "stop_at_clip_layer": clip_skip},
        }
        clip = ["11", 0]
    if sdxl_sizes is not None:
        graph["6"] = {
            "class_type": "CLIPTextEncodeSDXL",
            "inputs": {**sdxl_sizes, "text_g": text, "text_l": text, "clip": clip},
        }
    else:
        graph["6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}
    graph["7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}}
    graph["3"] = {
        "class_type": "KSampler",
        "inputs": {
            "seed": seed,
            "steps": STEPS,
            "cfg": 6.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": model,
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    }
    graph[DECODE_NODE] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    graph["9"] = {
        "class_type": "SaveImage",
        "inputs": {"filename_prefix": "family", "images": [DECODE_NODE, 0]},
    }
    return graph


def sdxl_sizes(side: int) -> dict[str, int]:
    return {
        "width": side,
        "height": side,
        "crop_w": 0,
        "crop_h": 0,
        "target_width": side,
        "target_height": side,
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("families")
    checkpoints = root / "models" / "checkpoints"
    names = {
        family: make_tiny_checkpoint(checkpoints, family=family, fmt="single", seed=1).name
        for family in ("sd1", "sd2", "sdxl")
    }
    names["sdxl-diffusers"] = make_tiny_checkpoint(checkpoints, family="sdxl", fmt="diffusers", seed=1).name
    names["lora"] = make_tiny_lora(
        root / "models" / "loras", checkpoints / names["sd1"], fmt="kohya", seed=2
    ).name
    settings = Settings(
        models_dir=root / "models",
        output_dir=root / "output",
        temp_dir=root / "temp",
        input_dir=root / "input",
    )
    return Models(LocalRunner(settings), names)


def draw(models: Models, graph: dict) -> Drawn:
    """Run the graph fresh (no node-output cache) and read back the PNG it saved."""
    models.runner.executor.cache.clear()
    result = models.runner.run(graph, node_id=DECODE_NODE)
    assert result.ok, result.error
    [saved] = result.images
    with Image.open(saved.path) as png:
        assert png.format == "PNG"
        assert png.size == (SIZE, SIZE)
        pixels = np.asarray(png.convert("RGB"))
    [image] = result.values[DECODE_NODE]
    return Drawn(pixels, image)


@pytest.mark.parametrize(("family", "prediction"), [("sd1", "eps"), ("sd2", "v"), ("sdxl", "eps")])
def test_each_family_draws_a_finite_varied_image(models: Models, family: str, prediction: str) -> None:
    drawn = draw(models, workflow(models.names[family]))
    assert tuple(drawn.image.shape) == (1, SIZE, SIZE, 3)
    assert torch.isfinite(drawn.image).all()
    assert drawn.image.std() > 1e-3 and drawn.pixels.std() > 0  # random weights draw noise, not a flat image
    model, _, _ = models.runner.env.models.load_checkpoint(models.names[family])  # shared, already loaded
    assert (model.family, model.prediction) == (family, prediction)


def test_sdxl_size_conditioning_reaches_the_unet(models: Models) -> None:
    ckpt = models.names["sdxl"]
    plain = draw(models, workflow(ckpt, seed=4, text="a fox"))
    # Without size inputs the sampler uses the latent's size in pixels, as ComfyUI does.
    at_latent_size = draw(models, workflow(ckpt, seed=4, text="a fox", sdxl_sizes=sdxl_sizes(SIZE)))
    at_1024 = draw(models, workflow(ckpt, seed=4, text="a fox", sdxl_sizes=sdxl_sizes(1024)))
    assert np.array_equal(plain.pixels, at_latent_size.pixels)
    assert torch.isfinite(at_1024.image).all()
    assert not np.array_equal(plain.pixels, at_1024.pixels)


def test_sdxl_diffusers_folder_draws_what_its_single_file_draws(models: Models) -> None:
    single = draw(models, workflow(models.names["sdxl"], seed=8))
    folder = draw(models, workflow(models.names["sdxl-diffusers"], seed=8))
    assert np.array_equal(single.pixels, folder.pixels)


def test_lora_at_strength_zero_is_no_lora_and_at_one_changes_the_image(models: Models) -> None:
    ckpt, lora = models.names["sd1"], models.names["lora"]
    plain = draw(models, workflow(ckpt, seed=5))
    zero = draw(models, workflow(ckpt, seed=5, lora=lora, lora_strength=0.0))
    one = draw(models, workflow(ckpt, seed=5, lora=lora, lora_strength=1.0))
    assert np.array_equal(plain.pixels, zero.pixels)
    assert torch.isfinite(one.image).all()
    assert not np.array_equal(plain.pixels, one.pixels)
    # The LoRA left the shared base weights as they were: the plain graph draws the same image.
    assert np.array_equal(plain.pixels, draw(models, workflow(ckpt, seed=5)).pixels)


def test_clip_set_last_layer(models: Models) -> None:
    ckpt = models.names["sd1"]
    plain = draw(models, workflow(ckpt, seed=6))
    last = draw(models, workflow(ckpt, seed=6, clip_skip=-1))
    penultimate = draw(models, workflow(ckpt, seed=6, clip_skip=-2))
    assert np.array_equal(plain.pixels, last.pixels)  # SD1 encodes with the last layer by default
    assert not np.array_equal(plain.pixels, penultimate.pixels)


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300)


def test_gpu_throughput_bench_runs_tiny_on_cpu() -> None:
    proc = _bench("--tiny", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert any(line.startswith("comfyd ") and "it/s" in line for line in lines), proc.stdout
    assert any(line.startswith("diffusers ") and "it/s" in line for line in lines), proc.stdout
    key, _, value = lines[-1].partition("=")
    assert key == "RESULT gpu_its_ratio"
    assert 0 < float(value) < float("inf")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_gpu_throughput_bench_without_a_gpu_says_so() -> None:
    proc = _bench()
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--tiny" in proc.stderr
    assert "RESULT" not in proc.stdout
