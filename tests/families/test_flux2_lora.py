"""LoRAs on Flux.2 (ComfyUI 0.3.64 has no Flux.2, so the formats are those Flux.2 LoRAs come in):
BFL names as ai-toolkit writes them (`diffusion_model.double_blocks...`, lora_A / lora_B), kohya's
`lora_unet_*` (lora_down / lora_up / alpha) and diffusers' own `transformer.*` names. Each is held
to the weight arithmetic per mapped layer (W + strength * up @ down * alpha / rank, on the stored
BFL weight: a fused qkv's rows land on to_q / to_k / to_v) and to diffusers 0.42's own
Flux2 load_lora_weights path (lora_state_dict's conversion + a PEFT adapter at that strength) on
the same tiny transformer.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models.families import _flux2_tiny
from comfyd.models.families import _flux2_transformer as transformer
from comfyd.models.keymap import to_original

STRENGTH = 0.7
RANK = 4  # not a multiple of 3: diffusers' kohya converter then keeps a fused qkv's LoRA whole
# BFL layers (stored names); the final modulation only in the arithmetic check (below).
BFL_LAYERS = (
    "double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.qkv", "double_blocks.0.img_attn.proj",
    "double_blocks.0.txt_mlp.2", "single_blocks.0.linear1", "single_blocks.0.linear2", "img_in",
    "time_in.in_layer", "guidance_in.out_layer", "double_stream_modulation_img.lin", "final_layer.linear",
)  # fmt: skip
KOHYA_LAYERS = (
    "double_blocks.0.img_attn.qkv", "double_blocks.0.txt_attn.proj", "double_blocks.0.img_mlp.0",
    "single_blocks.0.linear1", "txt_in", "final_layer.linear",
)  # fmt: skip
DIFFUSERS_LAYERS = (
    "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.add_v_proj",
    "single_transformer_blocks.0.attn.to_out", "x_embedder", "norm_out.linear",
)  # fmt: skip


@pytest.fixture(scope="module")
def flux2(tmp_path_factory: pytest.TempPathFactory):
    from comfyd.models import tiny
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    root = tmp_path_factory.mktemp("flux2-lora") / "models"
    config = _flux2_tiny.tiny_transformer_config(True)
    net = tiny.random_module(transformer.empty_transformer(config), 0, "flux2-lora")
    stored = to_original(net.state_dict(), transformer.Flux2Translator(config))
    (root / "diffusion_models").mkdir(parents=True)
    (root / "loras").mkdir()
    save_file(
        {k: v.contiguous() for k, v in stored.items()}, str(root / "diffusion_models" / "f2.safetensors")
    )
    manager = ModelManager(Settings(models_dir=root, device="cpu", dtype="fp32", home=root.parent / "home"))
    return manager, manager.load_diffusion_model("f2.safetensors"), config, stored


def _lora(shapes: dict[str, torch.Size], layers: tuple[str, ...], fmt: str, seed: int):
    """The file's tensors and each layer's expected weight change (before strength)."""
    gen = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for layer in layers:
        out_dim, in_dim = shapes[f"{layer}.weight"]
        down, up = (
            torch.randn(RANK, in_dim, generator=gen) * 0.3,
            torch.randn(out_dim, RANK, generator=gen) * 0.3,
        )
        if fmt == "kohya":
            name = "lora_unet_" + layer.replace(".", "_")
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(2.0)}  # fmt: skip
            deltas[f"{layer}.weight"] = up @ down * (2.0 / RANK)
        else:
            name = f"diffusion_model.{layer}" if fmt == "ai-toolkit" else f"transformer.{layer}"
            tensors |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}
            deltas[f"{layer}.weight"] = up @ down
    return tensors, deltas


def _patched(manager, model, name: str, tensors: dict[str, torch.Tensor]):
    save_file(tensors, str(manager.paths.folder_dirs("loras")[0] / name))
    with model.with_loras(manager.lora_patch(name, STRENGTH)).patched() as patched:
        return {k: v.detach().clone() for k, v in patched.transformer.state_dict().items()}


@pytest.mark.parametrize("fmt", ["ai-toolkit", "kohya", "diffusers"])
def test_flux2_lora_weight_arithmetic_per_layer(flux2, fmt: str) -> None:
    manager, model, config, stored = flux2
    base = {k: v.detach().clone() for k, v in model.unet.transformer.state_dict().items()}
    if fmt == "diffusers":
        tensors, deltas = _lora({k: v.shape for k, v in base.items()}, DIFFUSERS_LAYERS, fmt, 2)
        after = _patched(manager, model, f"{fmt}.safetensors", tensors)
        reference, got = base, after
    else:
        layers = (*BFL_LAYERS, "final_layer.adaLN_modulation.1") if fmt == "ai-toolkit" else KOHYA_LAYERS
        tensors, deltas = _lora({k: v.shape for k, v in stored.items()}, layers, fmt, 1)
        after = _patched(manager, model, f"{fmt}.safetensors", tensors)
        reference, got = stored, to_original(after, transformer.Flux2Translator(config))
    assert set(deltas) <= set(got)
    for key, value in got.items():
        expected = reference[key].float() + (STRENGTH * deltas[key] if key in deltas else 0)
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-5, msg=f"{fmt}: {key}")
    assert all(torch.equal(v, base[k]) for k, v in model.unet.transformer.state_dict().items())  # restored


def test_flux2_loras_match_diffusers_load_lora_weights(flux2) -> None:
    """The same files through diffusers' Flux2 LoRA loader (its final-modulation mapping is left
    out: diffusers' ai-toolkit conversion does not swap that layer's halves, as its checkpoint
    conversion does)."""
    from diffusers import Flux2Transformer2DModel
    from diffusers.loaders.lora_pipeline import Flux2LoraLoaderMixin

    manager, model, config, stored = flux2
    ours = model.unet
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, config["in_channels"], 3, 4, generator=gen)
    context = torch.randn(1, 7, config["joint_attention_dim"], generator=gen)
    inputs = (x, torch.tensor([0.6]), context, {"guidance": torch.tensor([3.5])})
    base = {k: v.detach().clone() for k, v in ours.transformer.state_dict().items()}
    shapes = {
        "diffusers": {k: v.shape for k, v in base.items()},
        "bfl": {k: v.shape for k, v in stored.items()},
    }
    for fmt, layers in (("ai-toolkit", BFL_LAYERS), ("kohya", KOHYA_LAYERS), ("diffusers", DIFFUSERS_LAYERS)):
        tensors, _ = _lora(shapes["diffusers" if fmt == "diffusers" else "bfl"], layers, fmt, 9)
        save_file(tensors, str(manager.paths.folder_dirs("loras")[0] / f"cmp-{fmt}.safetensors"))
        with model.with_loras(manager.lora_patch(f"cmp-{fmt}.safetensors", STRENGTH)).patched() as patched:
            with torch.inference_mode():
                out = patched(*inputs)[0]
        theirs = Flux2Transformer2DModel.from_config(dict(config))
        theirs.load_state_dict(base)
        converted = Flux2LoraLoaderMixin.lora_state_dict(dict(tensors))
        theirs.load_lora_adapter(converted, prefix="transformer", adapter_name=fmt)
        theirs.set_adapters([fmt], weights=[STRENGTH])
        with torch.inference_mode():
            expected = transformer.Flux2Network(theirs)(*inputs)[0]
            plain = ours(*inputs)[0]
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5, msg=fmt)
        assert (plain - expected).abs().max() > 1e-3, fmt  # the LoRA changes the output
