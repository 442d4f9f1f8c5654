"""CUDA paths: fp16 sampling, the VAE's dtype, channels_last, the device gate, torch.compile.

These skip without a CUDA device; bench/gpu_check.sh runs them on a lent GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.models.tiny import make_tiny_checkpoint
from comfyd.runner import LocalRunner, default_workflow
from comfyd.settings import Settings

pytestmark = pytest.mark.cuda


def _settings(tmp_path: Path, models: Path, name: str, **overrides: Any) -> Settings:
    return Settings(models_dir=models, output_dir=tmp_path / name, temp_dir=tmp_path / "temp",
                    input_dir=tmp_path / "input", **overrides)


def _render(settings: Settings, ckpt: str, family_size: int = 64) -> np.ndarray:
    workflow = default_workflow("a red fox")
    workflow["4"]["inputs"]["ckpt_name"] = ckpt
    workflow["5"]["inputs"].update(width=family_size, height=family_size)
    workflow["3"]["inputs"].update(steps=4, seed=3)
    with LocalRunner(settings) as runner:
        result = runner.run(workflow)
        assert result.ok, result.error
    png = sorted(Path(settings.output_dir).rglob("*.png"))[0]
    return np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_fp16_cuda_picture_is_close_to_fp32_cpu(tmp_path: Path, family: str) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "models" / "checkpoints", family=family, seed=0)
    gpu = _render(_settings(tmp_path, ckpt.parent.parent, "gpu", device="cuda", dtype="fp16"), ckpt.name)
    cpu = _render(_settings(tmp_path, ckpt.parent.parent, "cpu", device="cpu", dtype="fp32"), ckpt.name)
    assert np.isfinite(gpu).all()
    mse = float(np.mean((gpu - cpu) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    assert psnr >= 30.0, f"fp16 on CUDA differs from fp32 on CPU: {psnr:.1f} dB"


def test_cuda_load_uses_fp16_unet_channels_last_and_a_safe_vae(tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "models" / "checkpoints", family="sdxl", seed=0)
    with LocalRunner(_settings(tmp_path, ckpt.parent.parent, "out", device="cuda")) as runner:
        model, _clip, vae = runner.env.models.load_checkpoint(ckpt.name)
        assert model.unet.device.type == "cuda"
        assert model.unet.dtype == torch.float16
        assert vae.dtype in (torch.bfloat16, torch.float32)  # never fp16: SDXL's VAE overflows in it
        weight = next(p for p in model.unet.parameters() if p.dim() == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last)


def test_device_gate_defaults_to_one_model_computation_on_cuda(tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "models" / "checkpoints", family="sd1", seed=0)
    with LocalRunner(_settings(tmp_path, ckpt.parent.parent, "out", device="cuda")) as runner:
        assert runner.env.models.gate.limit == 1


def test_torch_compile_setting_renders(tmp_path: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "models" / "checkpoints", family="sd1", seed=0)
    picture = _render(_settings(tmp_path, ckpt.parent.parent, "c", device="cuda", torch_compile=True), ckpt.name)
    assert np.isfinite(picture).all() and picture.std() > 0
