"""Tiny random-weight Flux.2 files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family flux2`): a [dev]-shaped transformer (guidance embedding) and a [klein]-shaped
one (none) in `diffusion_models/` (BFL keys), and a Flux.2 autoencoder in `vae/` (LDM keys, BFL's
`encoder.quant_conv` / `decoder.post_quant_conv`, the latent batch norm's statistics). The
transformer keeps the 128-channel latent input at two 32-wide heads and one block of each kind;
the VAE keeps four levels (8x, 16x with the patches) at width 32 (ComfyUI's 32 norm groups).
Flux.2's own text encoders (Mistral Small 3.x, Qwen3) are not supported yet: a tiny UMT5 file
(`_wan_tiny`'s architecture and tokenizer, loaded with CLIPLoader type wan) stands in for one, so
the rest of the Flux.2 graph can run; its 32-wide output is what the tiny transformer attends to.
Same seed, same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models.families import _flux2_transformer as transformer
from comfyd.models.families import _flux2_vae as flux2_vae
from comfyd.models.families._wan_tiny import TINY_UMT5, tiny_spiece_model

CONTEXT_DIM = TINY_UMT5["d_model"]  # the stand-in encoder's width
NAMES = {
    "dev": "diffusion_models/comfyd-tiny-flux2-dev.safetensors",
    "klein": "diffusion_models/comfyd-tiny-flux2-klein.safetensors",
    "vae": "vae/comfyd-tiny-flux2-vae.safetensors",
    "standin_text_encoder": "text_encoders/comfyd-tiny-flux2-standin-umt5.safetensors",
}


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
    from comfyd.models import tiny, umt5_encoder
    from comfyd.models.keymap import to_original

    written: list[Path] = []
    for variant, guidance in (("dev", True), ("klein", False)):
        config = tiny_transformer_config(guidance)
        net = tiny.random_module(transformer.empty_transformer(config), seed, f"flux2-{variant}")
        stored = to_original(net.state_dict(), transformer.Flux2Translator(config, ""))
        written.append(_save(stored, root / NAMES[variant]))
    written.append(_save(tiny_vae_state(seed), root / NAMES["vae"]))
    encoder = tiny.random_module(umt5_encoder.empty_encoder(TINY_UMT5), seed, "flux2-standin-umt5")
    state = {k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state[umt5_encoder.SPIECE_KEY] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    written.append(_save(state, root / NAMES["standin_text_encoder"]))
    return written
