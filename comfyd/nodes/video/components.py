"""VIDEO values in and out: CreateVideo, GetVideoComponents, LoadVideo (ComfyUI's image/video).

LoadVideo hands on the file itself; frames are decoded only where a node asks for them
(GetVideoComponents), and SaveVideo copies such a file's packets without decoding at all.
"""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeOutput, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.save_load import _check_images
from comfyd.nodes.video._input_files import file_checker, list_input_files, resolve_input
from comfyd.nodes.video._media import check_video_pixels
from comfyd.nodes.video._video_codec import VideoComponents, VideoFromComponents, VideoFromFile


@register_node
class CreateVideo(Node):
    schema = NodeSchema(
        class_type="CreateVideo",
        display_name="Create Video",
        inputs=(
            Link("images", "IMAGE", tooltip="The images to create a video from."),
            Float("fps", default=30.0, min=1.0, max=120.0, step=1.0),
            Link("audio", "AUDIO", optional=True, tooltip="The audio to add to the video."),
        ),
        outputs=(OutputSpec("VIDEO"),),
        category="image/video",
        description="Create a video from images.",
    )

    def run(self, ctx: NodeContext, images: torch.Tensor, fps: float, audio: dict[str, Any] | None = None) -> tuple[Any]:
        images = _check_images(images)
        check_video_pixels(ctx.env.settings, int(images.shape[0]), int(images.shape[2]), int(images.shape[1]))
        return (VideoFromComponents(VideoComponents(images=images, audio=audio, frame_rate=Fraction(fps))),)


@register_node
class GetVideoComponents(Node):
    schema = NodeSchema(
        class_type="GetVideoComponents",
        display_name="Get Video Components",
        inputs=(Link("video", "VIDEO", tooltip="The video to extract components from."),),
        outputs=(OutputSpec("IMAGE", "images"), OutputSpec("AUDIO", "audio"), OutputSpec("FLOAT", "fps")),
        category="image/video",
        description="Extracts all components from a video: frames, audio, and framerate.",
    )

    def run(self, ctx: NodeContext, video: Any) -> tuple[Any, ...]:
        if isinstance(video, VideoFromFile):
            components = video.get_components(ctx.env.settings, progress=lambda i, n: ctx.progress(i, n))
        elif isinstance(video, VideoFromComponents):
            components = video.get_components()
        else:
            raise TypeError(f"expected a VIDEO, got {type(video).__name__}")
        return (components.images, components.audio, float(components.frame_rate))


@register_node
class LoadVideo(Node):
    schema = NodeSchema(
        class_type="LoadVideo",
        display_name="Load Video",
        inputs=(
            Combo("file", lambda env: list_input_files(env, ("video",)), combo_as_options=True,
                  extra={"video_upload": True}, validator=file_checker("video")),
        ),
        outputs=(OutputSpec("VIDEO"),),
        category="image/video",
    )
    # ComfyUI's fingerprint_inputs is the file's modification time; it lands in the saved prompt.
    fingerprint_is_comfyui_is_changed = True

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        try:
            return os.path.getmtime(resolve_input(ctx.env, str(inputs.get("file", "")), "video"))
        except (OSError, ValueError):
            return None  # run() reports the problem

    def run(self, ctx: NodeContext, file: str) -> NodeOutput:
        return NodeOutput(values=(VideoFromFile(resolve_input(ctx.env, file, "video")),))
