"""TrimVideoLatent: drop the first `trim_amount` latent frames of a video latent (ComfyUI's node,
comfy_extras/nodes_wan.py); the other LATENT keys are kept as they are."""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node


@register_node
class TrimVideoLatent(Node):
    schema = NodeSchema(
        class_type="TrimVideoLatent",
        inputs=(Link("samples", "LATENT"), Int("trim_amount", default=0, min=0, max=99999, step=None)),
        outputs=(OutputSpec("LATENT"),),
        category="latent/video",
    )

    def run(self, ctx: NodeContext, samples: dict[str, Any], trim_amount: int) -> tuple[dict[str, Any]]:
        latent = samples.get("samples") if isinstance(samples, dict) else None
        if not isinstance(latent, torch.Tensor) or latent.ndim != 5:
            raise ValueError("TrimVideoLatent needs a video LATENT [B, C, T, H, W]")
        return ({**samples, "samples": latent[:, :, trim_amount:]},)
