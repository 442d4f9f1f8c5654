"""LoRAs on Qwen-Image's transformer in the formats ComfyUI 0.3.64 maps for it (comfy/lora.py: kohya
`lora_unet_*`, `diffusion_model.*`, diffusers / ai-toolkit `transformer.*`, SimpleTuner `lycoris_*`):
each weight it names becomes W + strength * up @ down * alpha / rank, and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models.families import _qwen_image_tiny
from comfyd.models.header_probe import detect_family, is_supported, read_header
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny

from .conftest import make_settings

TRANSFORMER = Path(_qwen_image_tiny.NAMES["transformer"]).name
LAYERS = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.1.img_mlp.net.2",
    "transformer_blocks.0.txt_mod.1",
    "proj_out",
)
STRENGTH = 0.8
RANK = 4


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen-lora")
    make_tiny(root, family="qwen-image")
    return root


def _write_lora(root: Path, fmt: str, stored: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for layer in LAYERS:
        weight = stored[f"{layer}.weight"]
        down = torch.randn(RANK, weight.shape[1], generator=gen) * 0.1
        up = torch.randn(weight.shape[0], RANK, generator=gen) * 0.1
        if fmt == "diffusers":  # ai-toolkit / diffusers: lora_A / lora_B, no alpha (alpha = rank)
            tensors |= {f"transformer.{layer}.lora_A.weight": down, f"transformer.{layer}.lora_B.weight": up}
            deltas[f"{layer}.weight"] = up @ down
            continue
        name = {
            "kohya": "lora_unet_" + layer.replace(".", "_"),
            "lycoris": "lycoris_" + layer.replace(".", "_"),
            "comfyui": f"diffusion_model.{layer}",
        }[fmt]
        tensors |= {
            f"{name}.lora_down.weight": down,
            f"{name}.lora_up.weight": up,
            f"{name}.alpha": torch.tensor(2.0),
        }
        deltas[f"{layer}.weight"] = up @ down * (2.0 / RANK)
    (root / "loras").mkdir(exist_ok=True)
    save_file(tensors, str(root / "loras" / f"qwen-{fmt}.safetensors"))
    return deltas


@pytest.mark.parametrize("fmt", ["kohya", "comfyui", "diffusers", "lycoris"])
def test_each_format_patches_the_named_weights(fmt: str, root: Path) -> None:
    stored = load_file(str(root / _qwen_image_tiny.NAMES["transformer"]))
    deltas = _write_lora(root, fmt, stored, seed=len(fmt))
    mm = ModelManager(make_settings(root, device="cpu"))
    model = mm.load_diffusion_model(TRANSFORMER)
    base = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    with model.with_loras(mm.lora_patch(f"qwen-{fmt}.safetensors", STRENGTH)).patched() as patched:
        after = {k: v.detach().clone() for k, v in patched.state_dict().items()}
    for name, value in after.items():
        key = name.removeprefix("transformer.")
        if key in deltas:
            want = stored[key].float() + STRENGTH * deltas[key]
            torch.testing.assert_close(value, want, rtol=0, atol=1e-6)
        else:
            assert torch.equal(value, base[name]), name
    assert all(torch.equal(v, base[k]) for k, v in model.unet.state_dict().items())  # restored
    # `comfyd check` counts the file as a Qwen-Image LoRA it can run.
    header = read_header(root / "loras" / f"qwen-{fmt}.safetensors")
    assert detect_family(header) == "qwen_image_lora" and is_supported("qwen_image_lora")
