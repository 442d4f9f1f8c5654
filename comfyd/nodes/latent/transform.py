"""Latent geometry and batches: LatentRotate, LatentFlip, LatentCrop, LatentBatch."""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.geometry import FLIP_METHODS, ROTATIONS, quarter_turns
from comfyd.nodes.image.transform import MAX_RESOLUTION
from comfyd.nodes.latent.arithmetic import reshape_like
from comfyd.nodes.latent.basic import LATENT_FACTOR, _samples

Latent = dict[str, Any]


@register_node
class LatentRotate(Node):
    schema = NodeSchema(
        class_type="LatentRotate",
        inputs=(Link("samples", "LATENT"), Combo("rotation", ROTATIONS)),
        outputs=(OutputSpec("LATENT"),),
        category="latent/transform",
    )

    def run(self, ctx: NodeContext, samples: Latent, rotation: str) -> tuple[Latent]:
        out = dict(samples)
        out["samples"] = torch.rot90(_samples(samples), k=quarter_turns(rotation), dims=[3, 2])
        return (out,)


@register_node
class LatentFlip(Node):
    schema = NodeSchema(
        class_type="LatentFlip",
        inputs=(Link("samples", "LATENT"), Combo("flip_method", FLIP_METHODS)),
        outputs=(OutputSpec("LATENT"),),
        category="latent/transform",
    )

    def run(self, ctx: NodeContext, samples: Latent, flip_method: str) -> tuple[Latent]:
        out = dict(samples)
        source = _samples(samples)
        if flip_method.startswith("x"):
            out["samples"] = torch.flip(source, dims=[2])
        elif flip_method.startswith("y"):
            out["samples"] = torch.flip(source, dims=[3])
        return (out,)


@register_node
class LatentCrop(Node):
    schema = NodeSchema(
        class_type="LatentCrop",
        inputs=(
            Link("samples", "LATENT"),
            Int("width", default=512, min=64, max=MAX_RESOLUTION, step=8),
            Int("height", default=512, min=64, max=MAX_RESOLUTION, step=8),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent/transform",
    )

    def run(self, ctx: NodeContext, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        source = _samples(samples)
        # The corner stays at least 8 cells (64 pixels) from the far edges (and, unlike ComfyUI,
        # never goes negative on a latent smaller than that).
        left = max(0, min(x // LATENT_FACTOR, source.shape[3] - 8))
        top = max(0, min(y // LATENT_FACTOR, source.shape[2] - 8))
        out = dict(samples)
        out["samples"] = source[:, :, top : top + height // LATENT_FACTOR, left : left + width // LATENT_FACTOR]
        return (out,)


@register_node
class LatentBatch(Node):
    schema = NodeSchema(
        class_type="LatentBatch",
        inputs=(Link("samples1", "LATENT"), Link("samples2", "LATENT")),
        outputs=(OutputSpec("LATENT"),),
        category="latent/batch",
    )

    def run(self, ctx: NodeContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = _samples(samples1, "samples1")
        second = reshape_like(first.shape, _samples(samples2, "samples2"), repeat_batch=False)
        out = dict(samples1)
        out["samples"] = torch.cat((first, second), dim=0)
        # Each sample keeps the noise index it had, so the batch samples as its parts did.
        out["batch_index"] = list(samples1.get("batch_index", range(first.shape[0]))) + list(
            samples2.get("batch_index", range(second.shape[0]))
        )
        return (out,)
