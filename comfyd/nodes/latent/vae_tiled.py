"""Tiled VAE nodes: VAEDecodeTiled, VAEEncodeTiled (for pictures too large to go through at once).

The temporal inputs only matter to video VAEs; comfyd's image VAEs accept and ignore them, as
ComfyUI's image VAEs do.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import VaeHandle
from comfyd.models.vae_tiled import vae_decode_tiled, vae_encode_tiled
from comfyd.models.vae_tiled_video import vae_decode_video_tiled
from comfyd.nodes.latent.basic import _samples


def _temporal_inputs(verb: str) -> tuple[Any, ...]:
    return (
        Int("temporal_size", default=64, min=8, max=4096, step=4,
            tooltip=f"Only used for video VAEs: Amount of frames to {verb} at a time."),
        Int("temporal_overlap", default=8, min=4, max=4096, step=4,
            tooltip="Only used for video VAEs: Amount of frames to overlap."),
    )


@register_node
class VAEDecodeTiled(Node):
    schema = NodeSchema(
        class_type="VAEDecodeTiled",
        inputs=(
            Link("samples", "LATENT"),
            Link("vae", "VAE"),
            Int("tile_size", default=512, min=64, max=4096, step=32),
            Int("overlap", default=64, min=0, max=4096, step=32),
            *_temporal_inputs("decode"),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="_for_testing",
    )

    def run(
        self,
        ctx: NodeContext,
        samples: dict[str, Any],
        vae: VaeHandle,
        tile_size: int,
        overlap: int = 64,
        temporal_size: int = 64,
        temporal_overlap: int = 8,
    ) -> tuple[torch.Tensor]:
        video = samples.get("samples") if isinstance(samples, dict) else None
        if isinstance(video, torch.Tensor) and video.ndim == 5:  # a video latent (vae_tiled_video.py)
            return (vae_decode_video_tiled(vae, video, tile_size, overlap, temporal_size, temporal_overlap),)
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        factor = vae.downscale
        return (vae_decode_tiled(vae, _samples(samples), tile_size // factor, overlap // factor),)


@register_node
class VAEEncodeTiled(Node):
    schema = NodeSchema(
        class_type="VAEEncodeTiled",
        inputs=(
            Link("pixels", "IMAGE"),
            Link("vae", "VAE"),
            Int("tile_size", default=512, min=64, max=4096, step=64),
            Int("overlap", default=64, min=0, max=4096, step=32),
            *_temporal_inputs("encode"),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="_for_testing",
    )

    def run(
        self,
        ctx: NodeContext,
        pixels: torch.Tensor,
        vae: VaeHandle,
        tile_size: int,
        overlap: int,
        temporal_size: int = 64,
        temporal_overlap: int = 8,
    ) -> tuple[dict[str, Any]]:
        return ({"samples": vae_encode_tiled(vae, pixels, tile_size, overlap)},)
