"""Families beyond Flux and Z-Image (test_gguf.py, test_z_image.py run those from GGUF files),
from a Q8_0 GGUF of their tiny transformer: the weights kept quantized dequantize to exactly
what the load-time path holds (slow: one tiny model set per family). Flux.2, Wan 2.2 and Chroma
were checked the same way once, outside the suite (to keep its time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyd.models import gguf_layers, standalone
from comfyd.models.devices import compute_plan
from comfyd.models.tiny import make_tiny
from tests.models.gguf_files import write_gguf

FAMILIES = ("qwen_image", "wan", "sd3", "hunyuan-video")


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_kept_weights_equal_the_load_time_path(family: str, tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_tiny(root, family=family)
    source = sorted((root / "diffusion_models").glob("*.safetensors"))[0]
    path = write_gguf(source, tmp_path / f"{source.stem}-Q8_0.gguf", family, quant="Q8_0")
    networks = {}
    for on_the_fly in (True, False):
        plan = compute_plan("cpu", "fp32", gguf_on_the_fly=on_the_fly)
        networks[on_the_fly] = standalone.load_diffusion_model(path, plan, False, "default")[1]
    kept = {n: m for n, m in networks[True].named_modules() if isinstance(m, gguf_layers.GGUFLinear)}
    at_load = dict(networks[False].named_parameters())
    assert len(kept) > 10
    for name, layer in kept.items():
        assert torch.equal(layer.weight, at_load[f"{name}.weight"]), name
