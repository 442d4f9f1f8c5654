"""Tiny random-weight Flux.2 files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family flux2`): a [dev]-shaped transformer (guidance embedding) and a [klein]-shaped
one (none) in `diffusion_models/` (BFL keys), and a Flux.2 autoencoder in `vae/` (LDM keys, BFL's
`encoder.quant_conv` / `decoder.post_quant_conv`, the latent batch norm's statistics). The
transformer keeps the 128-channel latent input at two 32-wide heads and one block of each kind;
the VAE keeps four levels (8x, 16x with the patches) at width 32 (ComfyUI's 32 norm groups).
Their text encoders in `text_encoders/` (CLIPLoader type flux2): a Mistral text model for [dev]
(`model.*` keys, Tekken's full 131,072-row vocabulary, 31 layers so hidden state 30 is an inner
one) and a Qwen3 for [klein] (`model.*` keys, Qwen2's 151,936-row vocabulary, 28 layers for
hidden state 27), both 16 wide with 8-wide heads: three stacked states make the transformers'
48-wide context. Same seed, same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models import mistral3_encoder, qwen3_encoder
from comfyd.models.families import _flux2_transformer as transformer
from comfyd.models.families import _flux2_vae as flux2_vae

ENCODER_WIDTH = 16
CONTEXT_DIM = 3 * ENCODER_WIDTH  # three hidden states side by side
NAMES = {
    "dev": "diffusion_models/comfyd-tiny-flux2-dev.safetensors",
    "klein": "diffusion_models/comfyd-tiny-flux2-klein.safetensors",
    "vae": "vae/comfyd-tiny-flux2-vae.safetensors",
    "mistral": "text_encoders/comfyd-tiny-flux2-mistral-small.safetensors",
    "qwen3": "text_encoders/comfyd-tiny-flux2-klein-qwen3.safetensors",
}
ENCODER_OF = {"dev": "mistral", "klein": "qwen3"}


def _decoder_shapes(vocab: int, layers: int, q_norm: bool) -> dict[str, tuple[int, ...]]:
    width, head = ENCODER_WIDTH, 8
    shapes = {
        "model.embed_tokens.weight": (vocab, width),
        "model.layers.0.self_attn.q_proj.weight": (2 * head, width),
        "model.layers.0.self_attn.k_proj.weight": (head, width),
        "model.layers.0.mlp.gate_proj.weight": (2 * width, width),
        **{f"model.layers.{i}.input_layernorm.weight": (width,) for i in range(layers)},
    }
    if q_norm:
        shapes[qwen3_encoder.MARKER] = (head,)
    return shapes


def tiny_mistral_config() -> dict[str, Any]:
    return mistral3_encoder.infer_config(_decoder_shapes(mistral3_encoder.VOCAB, 31, False), "model.")


def tiny_qwen3_config() -> dict[str, Any]:
    return qwen3_encoder.infer_config(_decoder_shapes(151936, 28, True))


def tiny_transformer_config(guidance: bool) -> dict[str, Any]:
    return {
        "patch_size": 1, "in_channels": 128, "out_channels": 128, "num_layers": 1, "num_single_layers": 1,
        "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": CONTEXT_DIM,
        "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": list(transformer.rope_axes(32)),
        "rope_theta": transformer.ROPE_THETA, "guidance_embeds": guidance,
    }  # fmt: skip


TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1,
    "latent_channels": 32, "norm_num_groups": 32, "use_quant_conv": True, "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}  # fmt: skip


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def tiny_vae_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny Flux.2 VAE's stored tensors (BFL/LDM keys), batch-norm statistics included."""
    from comfyd.models import tiny
    from comfyd.models.keymap import to_original

    vae = tiny.random_module(flux2_vae.empty_vae(TINY_VAE), seed, "flux2-vae")
    generator = torch.Generator().manual_seed(seed + 2)
    channels = vae.bn.running_mean.shape[0]
    vae.bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.2)
    vae.bn.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
    keys = {"encoder.quant_conv.weight"}  # BFL's spelling of the quant convs
    state = {k: v for k, v in vae.state_dict().items() if not k.endswith("num_batches_tracked")}
    stored = to_original(state, flux2_vae.Flux2VaeTranslator(TINY_VAE, keys, ""))
    return {k: v.to(torch.float16) for k, v in stored.items()}


def write_tiny_flux2(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.keymap import to_original

    written: list[Path] = []
    for variant, guidance in (("dev", True), ("klein", False)):
        config = tiny_transformer_config(guidance)
        net = tiny.random_module(transformer.empty_transformer(config), seed, f"flux2-{variant}")
        stored = to_original(net.state_dict(), transformer.Flux2Translator(config, ""))
        written.append(_save(stored, root / NAMES[variant]))
    written.append(_save(tiny_vae_state(seed), root / NAMES["vae"]))
    mistral = tiny.random_module(mistral3_encoder.empty_encoder(tiny_mistral_config()), seed, "flux2-mistral")
    written.append(_save({f"model.{k}": v for k, v in mistral.state_dict().items()}, root / NAMES["mistral"]))
    qwen3 = tiny.random_module(qwen3_encoder.empty_encoder(tiny_qwen3_config()), seed, "flux2-qwen3")
    written.append(_save({f"model.{k}": v for k, v in qwen3.state_dict().items()}, root / NAMES["qwen3"]))
    return written
