"""Loader nodes: CheckpointLoaderSimple, VAELoader, LoraLoader, LoraLoaderModelOnly, CLIPSetLastLayer.

Input names, defaults, ranges and categories are ComfyUI's (nodes.py). The choice lists are the
files present in the model folders at the time `/object_info` or validation asks.
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle, ModelHandle, VaeHandle


def _files(folder: str):  # -> ChoiceSource
    def choices(env: NodeEnvironment) -> list[str]:
        models = getattr(env, "models", None)
        return models.list_files(folder) if models is not None else []

    return choices


def _fingerprint(ctx: NodeContext, folder: str, name: str) -> Any:
    # Part of the node-output cache key: a file replaced on disk is loaded again.
    try:
        return ctx.env.models.fingerprint(folder, name)
    except (OSError, ValueError):
        return None


@register_node
class CheckpointLoaderSimple(Node):
    schema = NodeSchema(
        class_type="CheckpointLoaderSimple",
        inputs=(
            Combo("ckpt_name", _files("checkpoints"), tooltip="The name of the checkpoint (model) to load."),
        ),
        outputs=(
            OutputSpec("MODEL"),
            OutputSpec("CLIP"),
            OutputSpec("VAE"),
        ),
        category="loaders",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "checkpoints", inputs.get("ckpt_name", ""))

    def run(self, ctx: NodeContext, ckpt_name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        with ctx.loading():
            return ctx.env.models.load_checkpoint(ckpt_name)


@register_node
class VAELoader(Node):
    schema = NodeSchema(
        class_type="VAELoader",
        inputs=(Combo("vae_name", _files("vae")),),
        outputs=(OutputSpec("VAE"),),
        category="loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "vae", inputs.get("vae_name", ""))

    def run(self, ctx: NodeContext, vae_name: str) -> tuple[VaeHandle]:
        with ctx.loading():
            return (ctx.env.models.load_vae(vae_name),)


def _strength(name: str, tooltip: str | None = None) -> Any:
    return Float(name, default=1.0, min=-100.0, max=100.0, step=0.01, tooltip=tooltip)


@register_node
class LoraLoader(Node):
    schema = NodeSchema(
        class_type="LoraLoader",
        inputs=(
            Link("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
            Link("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
            Combo("lora_name", _files("loras"), tooltip="The name of the LoRA."),
            _strength(
                "strength_model", "How strongly to modify the diffusion model. This value can be negative."
            ),
            _strength("strength_clip", "How strongly to modify the CLIP model. This value can be negative."),
        ),
        outputs=(OutputSpec("MODEL"), OutputSpec("CLIP")),
        category="loaders",
        description=(
            "LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
            "denoised such as applying styles. Multiple LoRA nodes can be linked together."
        ),
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "loras", inputs.get("lora_name", ""))

    def run(
        self,
        ctx: NodeContext,
        model: ModelHandle,
        clip: ClipHandle,
        lora_name: str,
        strength_model: float,
        strength_clip: float,
    ) -> tuple[ModelHandle, ClipHandle]:
        # As ComfyUI: both strengths zero leaves the models untouched (the file is not even read).
        if strength_model == 0 and strength_clip == 0:
            return model, clip
        models = ctx.env.models
        if strength_model != 0:
            model = model.with_loras(models.lora_patch(lora_name, strength_model))
        if strength_clip != 0:
            clip = clip.with_loras(models.lora_patch(lora_name, strength_clip))
        return model, clip


@register_node
class LoraLoaderModelOnly(Node):
    schema = NodeSchema(
        class_type="LoraLoaderModelOnly",
        inputs=(
            Link("model", "MODEL"),
            Combo("lora_name", _files("loras")),
            _strength("strength_model"),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="loaders",
        description=LoraLoader.schema.description,
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "loras", inputs.get("lora_name", ""))

    def run(
        self, ctx: NodeContext, model: ModelHandle, lora_name: str, strength_model: float
    ) -> tuple[ModelHandle]:
        if strength_model == 0:
            return (model,)
        return (model.with_loras(ctx.env.models.lora_patch(lora_name, strength_model)),)


@register_node
class CLIPSetLastLayer(Node):
    schema = NodeSchema(
        class_type="CLIPSetLastLayer",
        inputs=(
            Link("clip", "CLIP"),
            Int("stop_at_clip_layer", default=-1, min=-24, max=-1, step=1),
        ),
        outputs=(OutputSpec("CLIP"),),
        category="conditioning",
    )

    def run(self, ctx: NodeContext, clip: ClipHandle, stop_at_clip_layer: int) -> tuple[ClipHandle]:
        return (clip.with_layer(int(stop_at_clip_layer)),)
