"""Step previews use the model family's latent2rgb factors (ComfyUI's latent_formats)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.previews import LatentPreview, latent_preview_jpeg
from comfyd.models import families
from comfyd.models.handles import ModelHandle
from comfyd.nodes.sampling.ksampler import _progress
from comfyd.settings import Settings


def _pixel(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)[4, 4]


def _expected(factors, bias, channel: int) -> np.ndarray:
    rgb = np.asarray(factors[channel], dtype=np.float32) + (np.asarray(bias) if bias is not None else 0.0)
    return np.clip((rgb + 1.0) / 2.0, 0, 1) * 255.0


def test_a_latent_preview_applies_its_factors_and_bias() -> None:
    latent = torch.zeros(1, 4, 8, 8)
    latent[:, 0] = 1.0
    sdxl = families.get("sdxl").latent
    jpeg = latent_preview_jpeg(LatentPreview(latent, sdxl.rgb_factors, sdxl.rgb_bias))
    assert np.abs(_pixel(jpeg) - _expected(sdxl.rgb_factors, sdxl.rgb_bias, 0)).max() <= 3
    sd1 = families.get("sd1").latent
    assert np.abs(_pixel(latent_preview_jpeg(latent)) - _expected(sd1.rgb_factors, None, 0)).max() <= 3


def test_the_sampler_node_previews_with_its_models_family(tmp_path) -> None:
    seen = []
    env = NodeEnvironment(Settings(models_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path, input_dir=tmp_path))
    ctx = NodeContext(env=env, job_id="j", node_id="3", class_type="KSampler",
                      on_progress=lambda value, total, preview: seen.append(preview))  # fmt: skip
    model = ModelHandle("k", "sdxl", "eps", object(), 0.13025, torch.device("cpu"), torch.float32)
    latent = torch.zeros(1, 4, 8, 8)
    _progress(ctx, model)(0, 2, latent)
    _progress(ctx, replace(model, family="not-registered"))(1, 2, latent)
    assert isinstance(seen[0], LatentPreview) and seen[0].rgb_bias == families.get("sdxl").latent.rgb_bias
    assert seen[1] is latent  # an unknown family: the bare latent (SD1 factors downstream)
