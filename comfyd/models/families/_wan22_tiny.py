"""Tiny random-weight Wan 2.2 files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family wan22`): a TI2V 5B transformer (48 latent channels in and out, Wan's 128-wide
heads at two heads and two blocks), a Wan 2.2 VAE (its fixed structure at encoder width 8 and
decoder width 16), the 14B two-expert pair as two 16-channel T2V transformers drawn from
different seeds (high noise and low noise), and the files `--family wan` writes that these
workflows share: UMT5 and the Wan 2.1 VAE the 14B models decode with (the 14B I2V layout is
`--family wan`'s 36-channel I2V transformer).
"""

from __future__ import annotations

from pathlib import Path

import torch

from comfyd.models.families import _wan22_vae as video_vae
from comfyd.models.families import _wan_tiny
from comfyd.models.families import _wan_transformer as transformer

TINY_TI2V_TRANSFORMER = {**_wan_tiny.TINY_TRANSFORMER, "in_channels": 48, "out_channels": 48}
TINY_VAE = {
    "base_dim": 8, "decoder_base_dim": 16, "z_dim": 48, "is_residual": True, "in_channels": 12,
    "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16,
}  # fmt: skip
NAMES = {
    "ti2v": "diffusion_models/comfyd-tiny-wan22-ti2v-5b.safetensors",
    "vae22": "vae/comfyd-tiny-wan22-vae.safetensors",
    "high_noise": "diffusion_models/comfyd-tiny-wan22-t2v-high-noise.safetensors",
    "low_noise": "diffusion_models/comfyd-tiny-wan22-t2v-low-noise.safetensors",
}


def write_tiny_wan22(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny, umt5_encoder
    from comfyd.models.families import _wan_vae

    written: list[Path] = []
    encoder = tiny.random_module(umt5_encoder.empty_encoder(_wan_tiny.TINY_UMT5), seed, "wan-umt5xxl")
    state = {k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    spiece = bytearray(_wan_tiny.tiny_spiece_model())
    state[umt5_encoder.SPIECE_KEY] = torch.frombuffer(spiece, dtype=torch.uint8)
    written.append(_wan_tiny._save(state, root / _wan_tiny.NAMES["umt5xxl"]))
    vae = tiny.random_module(_wan_vae.empty_vae(_wan_tiny.TINY_VAE), seed, "wan-vae")
    written.append(
        _wan_tiny._save(_wan_tiny._stored(vae, _wan_vae.original_name), root / _wan_tiny.NAMES["vae"])
    )
    net = tiny.random_module(transformer.empty_transformer(TINY_TI2V_TRANSFORMER), seed, "wan22-ti2v")
    written.append(_wan_tiny._save(_wan_tiny._stored(net, transformer.original_name), root / NAMES["ti2v"]))
    vae = tiny.random_module(video_vae.empty_vae(TINY_VAE), seed, "wan22-vae")
    written.append(_wan_tiny._save(_wan_tiny._stored(vae, video_vae.original_name), root / NAMES["vae22"]))
    for expert in ("high_noise", "low_noise"):
        net = tiny.random_module(
            transformer.empty_transformer(_wan_tiny.TINY_TRANSFORMER), seed, f"wan22-{expert}"
        )
        written.append(
            _wan_tiny._save(_wan_tiny._stored(net, transformer.original_name), root / NAMES[expert])
        )
    return written
