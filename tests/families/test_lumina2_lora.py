"""LoRAs on Lumina 2, held to ComfyUI itself.

`data/lumina2_lora_comfyui_reference.safetensors` (bench/lumina2_lora_comfyui_reference.py) holds a
tiny random LoRA in the spellings ComfyUI 0.3.64 maps for a NextDiT (kohya `lora_unet_*` with
alpha, `diffusion_model.*` lora_A / lora_B), the fused qkv weights ComfyUI's own LoRA code patched
from it, and its patched NextDiT's output on fixed inputs, all computed on the `make-tiny --family
lumina2` transformer. comfyd loads that transformer as diffusers' Lumina2Transformer2DModel (q, k,
v apart) and applies the same file through LoraLoaderModelOnly's path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from comfyd.models.families import _lumina2_tiny
from comfyd.models.families import _lumina2_transformer as transformer
from comfyd.models.keymap import to_original

REFERENCE = Path(__file__).resolve().parent / "data" / "lumina2_lora_comfyui_reference.safetensors"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    from comfyd.models import tiny
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    root = tmp_path_factory.mktemp("lumina2-lora") / "models"
    # make-tiny's transformer alone (its text encoder and VAE cost seconds and play no part here).
    config = _lumina2_tiny.TINY_TRANSFORMER
    net = tiny.random_module(transformer.empty_transformer(config), 0, "lumina2")
    stored = to_original(net.state_dict(), transformer.Lumina2Translator(config))
    stored["norm_final.weight"] = torch.ones(config["hidden_size"])
    (root / "diffusion_models").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in stored.items()}, str(root / _lumina2_tiny.NAMES["transformer"]))
    with safe_open(str(REFERENCE), "pt") as f:
        reference = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    digests = json.loads(meta["sha256"])
    # The very file `make-tiny --family lumina2` writes, which ComfyUI patched.
    assert (
        hashlib.sha256((root / _lumina2_tiny.NAMES["transformer"]).read_bytes()).hexdigest()
        == digests["transformer"]
    )
    lora = {k.removeprefix("lora/"): v for k, v in reference.items() if k.startswith("lora/")}
    (root / "loras").mkdir()
    save_file(lora, str(root / "loras" / "tiny.safetensors"))
    assert hashlib.sha256((root / "loras" / "tiny.safetensors").read_bytes()).hexdigest() == digests["lora"]
    manager = ModelManager(Settings(models_dir=root, device="cpu", dtype="fp32", home=root.parent / "home"))
    model = manager.load_diffusion_model(Path(_lumina2_tiny.NAMES["transformer"]).name)
    return manager, model, reference, float(meta["strength"])


def test_comfyuis_lumina2_lora_keys_patch_as_comfyui(setup) -> None:
    manager, model, reference, strength = setup
    base = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    inputs = (reference["x"], reference["sigma"], reference["context"])
    with model.with_loras(manager.lora_patch("tiny.safetensors", strength)).patched() as patched:
        stored = to_original(patched.state_dict(), transformer.Lumina2Translator(patched.transformer.config))
        with torch.inference_mode():
            out = patched(*inputs)[0]
    fused = {k.removeprefix("patched/"): v for k, v in reference.items() if k.startswith("patched/")}
    assert len(fused) == 3
    for key, value in fused.items():  # q, k and v rows of the fused weight, each as ComfyUI patched it
        torch.testing.assert_close(stored[key], value, rtol=0, atol=1e-5)
    torch.testing.assert_close(out, reference["out"], rtol=1e-4, atol=2e-5)
    # The patch comes off bit for bit.
    assert all(torch.equal(v, base[k]) for k, v in model.unet.state_dict().items())
    with torch.inference_mode():
        plain = model.unet(*inputs)[0]
    assert (plain - reference["out"]).abs().max() > 1e-2  # the LoRA changes what ComfyUI computes


def test_diffusers_named_lumina2_lora_patches_its_rows_of_the_fused_qkv(setup, tmp_path: Path) -> None:
    """diffusers' own names (`transformer.layers.N.attn.to_q`, lora_A / lora_B; ComfyUI 0.3.64 does
    not map them for Lumina 2) change exactly their rows: W + strength * up @ down."""
    manager, model, _reference, _ = setup
    net = model.unet.transformer
    base = {k: v.detach().clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    layers = ("layers.0.attn.to_k", "noise_refiner.0.attn.to_v", "layers.1.feed_forward.linear_3")
    tensors, deltas = {}, {}
    for layer in layers:
        out_dim, in_dim = base[f"{layer}.weight"].shape
        down, up = torch.randn(2, in_dim, generator=gen), torch.randn(out_dim, 2, generator=gen)
        tensors |= {f"transformer.{layer}.lora_A.weight": down, f"transformer.{layer}.lora_B.weight": up}
        deltas[f"{layer}.weight"] = up @ down
    save_file(tensors, str(manager.paths.folder_dirs("loras")[0] / "diffusers-names.safetensors"))
    with model.with_loras(manager.lora_patch("diffusers-names.safetensors", 0.5)).patched() as patched:
        after = {k: v.detach().clone() for k, v in patched.transformer.state_dict().items()}
    for name, value in after.items():
        expected = base[name] + 0.5 * deltas[name] if name in deltas else base[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-5, msg=name)
