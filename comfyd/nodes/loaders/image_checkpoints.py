"""Checkpoint loaders that also hand out the file's CLIP vision tower: unCLIPCheckpointLoader
(SD2.1 unCLIP) and ImageOnlyCheckpointLoader (ComfyUI's loader for Stable Video Diffusion).

As in ComfyUI, a checkpoint without a tower gives None on the CLIP_VISION output (CLIPVisionEncode
then says so). comfyd has no SVD model family: ImageOnlyCheckpointLoader refuses SVD files with
an error that says so, and loads any other checkpoint as ComfyUI would (MODEL, tower, VAE).
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.clip_vision import ClipVisionHandle
from comfyd.models.detect import UnknownCheckpointLayout
from comfyd.models.handles import ClipHandle, ModelHandle, VaeHandle
from comfyd.models.tensorfile import TensorFile
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint

# Keys only video UNets have: temporal blocks (SVD, SV3D) and the frame mixer.
_VIDEO_UNET_MARKS = (".time_stack.", ".time_mix_blocks.", ".time_mixer.")


class MissingModelFamily(UnknownCheckpointLayout):
    """A checkpoint of an architecture ComfyUI runs and comfyd has no family for yet."""


def refuse_video_checkpoint(ctx: NodeContext, ckpt_name: str) -> None:
    path = ctx.env.models.resolve("checkpoints", ckpt_name)
    if path.is_dir():
        return
    with TensorFile(path, allow_pickle=bool(ctx.env.models.settings.allow_pickle)) as tf:
        video = any(
            key.startswith("model.diffusion_model.") and any(mark in key for mark in _VIDEO_UNET_MARKS)
            for key in tf.keys()
        )
    if video:
        raise MissingModelFamily(
            f"{ckpt_name} is a Stable Video Diffusion (SVD) checkpoint: comfyd has no SVD model family "
            "yet, so ImageOnlyCheckpointLoader cannot load it (see the README's known limits)"
        )


@register_node
class unCLIPCheckpointLoader(Node):  # noqa: N801 (ComfyUI's class name)
    schema = NodeSchema(
        class_type="unCLIPCheckpointLoader",
        inputs=(Combo("ckpt_name", _files("checkpoints")),),
        outputs=(OutputSpec("MODEL"), OutputSpec("CLIP"), OutputSpec("VAE"), OutputSpec("CLIP_VISION")),
        category="loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "checkpoints", inputs.get("ckpt_name", ""))

    def run(
        self, ctx: NodeContext, ckpt_name: str
    ) -> tuple[ModelHandle, ClipHandle, VaeHandle, ClipVisionHandle | None]:
        with ctx.loading():
            model, clip, vae = ctx.env.models.load_checkpoint(ckpt_name)
            return model, clip, vae, ctx.env.models.checkpoint_clip_vision(ckpt_name, model.family)


@register_node
class ImageOnlyCheckpointLoader(Node):
    schema = NodeSchema(
        class_type="ImageOnlyCheckpointLoader",
        inputs=(Combo("ckpt_name", _files("checkpoints")),),
        outputs=(OutputSpec("MODEL"), OutputSpec("CLIP_VISION"), OutputSpec("VAE")),
        category="loaders/video_models",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "checkpoints", inputs.get("ckpt_name", ""))

    def run(self, ctx: NodeContext, ckpt_name: str) -> tuple[ModelHandle, ClipVisionHandle | None, VaeHandle]:
        with ctx.loading():
            refuse_video_checkpoint(ctx, ckpt_name)
            model, _clip, vae = ctx.env.models.load_checkpoint(ckpt_name)
            return model, ctx.env.models.checkpoint_clip_vision(ckpt_name, model.family), vae
