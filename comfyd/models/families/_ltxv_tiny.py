"""Tiny random-weight LTX-Video files in ComfyUI's layout (tests, demo; `comfyd models make-tiny
--family ltxv`): three all-in-one checkpoints in `checkpoints/` (the transformer under
`model.diffusion_model.`, the 0.9, 0.9.1 or 0.9.5 video VAE under `vae.`, no text encoder, as
ltx-video-2b-v0.9.safetensors, -v0.9.1 and -v0.9.5; the 0.9.5 one with the metadata config
asking for causal time positions) and a T5 encoder in `text_encoders/` (CLIPLoader, type ltxv).

The transformer keeps ComfyUI's 32 heads (at 4 channels each), two blocks and the 128 latent
channels; the VAE keeps the 0.9 structure (patch 4, three 2x2x2 compressions, 32x spatial and 8x
temporal) at base width 8 with one residual block per stage, and random per-channel statistics.
The T5 encoder has the real 32128-token vocabulary (comfyd's shipped tokenizer) at width 32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyd.models import t5_encoder
from comfyd.models.families import _ltxv_transformer as transformer
from comfyd.models.families import _ltxv_vae as video_vae

TINY_T5 = {
    "vocab_size": 32128, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "is_gated_act": True,
    "dense_act_fn": "gelu_pytorch_tanh", "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
TINY_TRANSFORMER = {
    "in_channels": 128, "out_channels": 128, "patch_size": 1, "patch_size_t": 1,
    "num_attention_heads": transformer.HEADS, "attention_head_dim": 4, "cross_attention_dim": 128,
    "num_layers": 2, "caption_channels": TINY_T5["d_model"],
}  # fmt: skip
TINY_VAE_BASE = 8
NAMES = {
    "checkpoint": "checkpoints/comfyd-tiny-ltxv.safetensors",
    "checkpoint_091": "checkpoints/comfyd-tiny-ltxv-0.9.1.safetensors",
    "checkpoint_095": "checkpoints/comfyd-tiny-ltxv-0.9.5.safetensors",
    "t5xxl": "text_encoders/comfyd-tiny-ltxv-t5xxl.safetensors",
}
UNET_PREFIX = "model.diffusion_model."
CAUSAL_METADATA = {"config": json.dumps({"transformer": {"causal_temporal_positioning": True}})}
VAE_PREFIX = "vae."


def tiny_vae_config(version: str = "0.9") -> dict[str, object]:
    widths = (TINY_VAE_BASE, 2 * TINY_VAE_BASE, 4 * TINY_VAE_BASE, 4 * TINY_VAE_BASE)
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": video_vae.LATENT_CHANNELS,
        "block_out_channels": widths, "decoder_block_out_channels": widths,
        "layers_per_block": (1, 1, 1, 1, 1), "decoder_layers_per_block": (1, 1, 1, 1, 1),
        "spatio_temporal_scaling": (True, True, True, False),
        "decoder_spatio_temporal_scaling": (True, True, True, False),
        "decoder_inject_noise": (False,) * 5, "upsample_residual": (False,) * 4, "upsample_factor": (1,) * 4,
        "timestep_conditioning": False, "patch_size": 4, "patch_size_t": 1, "resnet_norm_eps": 1e-6,
        "scaling_factor": 1.0, "encoder_causal": True, "decoder_causal": False,
        **(_TINY_091_DECODER if version in ("0.9.1", "0.9.5") else {}),
        **(_TINY_095 if version == "0.9.5" else {}),
    }  # fmt: skip


# 0.9.1's decoder: three residual upsamplers halving the width, noise injected below the middle
# stage, conditioned on the decode timestep.
_TINY_091_DECODER = {
    "decoder_block_out_channels": (2 * TINY_VAE_BASE, 4 * TINY_VAE_BASE, 8 * TINY_VAE_BASE),
    "decoder_layers_per_block": (1, 1, 1, 1), "decoder_spatio_temporal_scaling": (True, True, True),
    "decoder_inject_noise": (True, True, True, False), "upsample_residual": (True, True, True),
    "upsample_factor": (2, 2, 2), "timestep_conditioning": True,
}  # fmt: skip
# 0.9.5: residual space, time and two 2x2x2 compressions in the encoder, each doubling the width;
# 0.9.1's decoder without injected noise.
_TINY_095 = {
    "block_out_channels": tuple(TINY_VAE_BASE * m for m in (1, 2, 4, 8, 16)),
    "down_block_types": ("LTXVideo095DownBlock3D",) * 4, "spatio_temporal_scaling": (True,) * 4,
    "downsample_type": ("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    "decoder_inject_noise": (False,) * 4, "spatial_compression_ratio": 32, "temporal_compression_ratio": 8,
}  # fmt: skip


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _vae_state(seed: int, version: str) -> dict[str, torch.Tensor]:
    from comfyd.models import tiny

    component = "ltxv-vae" if version == "0.9" else f"ltxv-vae-{version}"
    vae = tiny.random_module(video_vae.empty_vae(tiny_vae_config(version)), seed, component)
    generator = torch.Generator().manual_seed(seed + 7)
    vae.latents_mean.copy_(torch.randn(video_vae.LATENT_CHANNELS, generator=generator) * 0.2)
    vae.latents_std.copy_(torch.rand(video_vae.LATENT_CHANNELS, generator=generator) * 0.5 + 0.5)
    if version != "0.9":
        vae.decoder.timestep_scale_multiplier.data.fill_(1000.0)  # the real files' value
    state = {VAE_PREFIX + video_vae.original_name(k, version): v.to(torch.float16) for k, v in vae.state_dict().items()}
    # The other statistics real files carry (unused by the decoder; ComfyUI loads them).
    stats = f"{VAE_PREFIX}per_channel_statistics."
    state[stats + "channel"] = torch.arange(video_vae.LATENT_CHANNELS, dtype=torch.float16)
    state[stats + "mean-of-stds"] = torch.ones(video_vae.LATENT_CHANNELS, dtype=torch.float16)
    state[stats + "mean-of-stds_over_std-of-means"] = (1.0 / vae.latents_std).to(torch.float16)
    return state


def write_tiny_ltxv(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny

    net = tiny.random_module(transformer.empty_transformer(TINY_TRANSFORMER), seed, "ltxv-transformer")
    unet = {UNET_PREFIX + transformer.original_name(k): v for k, v in net.state_dict().items()}
    written = [
        _save({**unet, **_vae_state(seed, "0.9")}, root / NAMES["checkpoint"]),
        _save({**unet, **_vae_state(seed, "0.9.1")}, root / NAMES["checkpoint_091"]),
        # 0.9.5 files say in their metadata that positions are causal in time, as ComfyUI reads it.
        _save({**unet, **_vae_state(seed, "0.9.5")}, root / NAMES["checkpoint_095"], CAUSAL_METADATA),
    ]
    t5 = tiny.random_module(t5_encoder.empty_encoder(TINY_T5), seed, "ltxv-t5xxl")
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    written.append(_save(t5_state, root / NAMES["t5xxl"]))
    return written
