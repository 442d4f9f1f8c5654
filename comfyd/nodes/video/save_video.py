"""Video files out: SaveVideo (mp4/h264) and SaveWEBM (vp9/av1), ComfyUI's image/video savers.

Both report ComfyUI's UI entry for videos, `{"images": [...], "animated": [true]}`, so the files
reach /history, the websocket, the output store and the prediction responses as images do.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeOutput, NodeSchema, String, register_node
from comfyd.nodes.image.output_names import check_filename_prefix
from comfyd.nodes.image.save_load import _check_images, _extra_for_metadata, _prompt_for_metadata
from comfyd.nodes.video._media import av_module, check_video_pixels, save_new_file
from comfyd.nodes.video._video_codec import (
    VideoFromComponents,
    VideoFromFile,
    container_names,
    encode_mp4,
    frame_to_rgb24,
    remux,
)

VIDEO_FORMATS = ["auto", "mp4"]
VIDEO_CODECS = ["auto", "h264"]
WEBM_CODECS = {"vp9": "libvpx-vp9", "av1": "libsvtav1"}


def _metadata(ctx: NodeContext, prompt: dict[str, Any] | None, extra: dict[str, Any] | None) -> dict[str, Any] | None:
    """SaveVideo's container tags: every extra_pnginfo key, then `prompt`; None when empty."""
    metadata: dict[str, Any] = dict(_extra_for_metadata(ctx, extra) or {})
    prompt = _prompt_for_metadata(ctx, prompt)
    if prompt is not None:
        metadata["prompt"] = prompt
    return metadata or None


def _video_entry(name: str, subfolder: str) -> dict[str, Any]:
    return {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": [True]}


def _must_reencode(source: Path, format: str, codec: str) -> bool:
    container_format, video_codec = container_names(source)
    if format != "auto" and format not in container_format.split(","):
        return True
    return codec != "auto" and video_codec is not None and codec != video_codec


@register_node
class SaveVideo(Node):
    schema = NodeSchema(
        class_type="SaveVideo",
        display_name="Save Video",
        inputs=(
            Link("video", "VIDEO", tooltip="The video to save."),
            String("filename_prefix", default="video/ComfyUI", validator=check_filename_prefix,
                   extra={"multiline": False},
                   tooltip="The prefix for the file to save. This may include formatting information such as "
                   "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."),
            Combo("format", VIDEO_FORMATS, default="auto", combo_as_options=True,
                  tooltip="The format to save the video as."),
            Combo("codec", VIDEO_CODECS, default="auto", combo_as_options=True,
                  tooltip="The codec to use for the video."),
        ),
        outputs=(),
        category="image/video",
        description="Saves the input images to your ComfyUI output directory.",
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO"),
    )

    def run(
        self, ctx: NodeContext, video: Any, filename_prefix: str = "video/ComfyUI", format: str = "auto",
        codec: str = "auto", prompt: dict[str, Any] | None = None, extra_pnginfo: dict[str, Any] | None = None,
        **_hidden: Any,
    ) -> NodeOutput:
        if not isinstance(video, VideoFromComponents | VideoFromFile):
            raise TypeError(f"expected a VIDEO, got {type(video).__name__}")
        settings = ctx.env.settings
        metadata = _metadata(ctx, prompt, extra_pnginfo)
        width, height = video.dimensions()
        if isinstance(video, VideoFromFile) and not _must_reencode(video.path, format, codec):
            def write(path: Path) -> None:
                remux(video.path, path, metadata)
        else:
            components = video.get_components(settings)
            images = _check_images(components.images)
            check_video_pixels(settings, int(images.shape[0]), int(images.shape[2]), int(images.shape[1]))

            def write(path: Path) -> None:
                encode_mp4(path, components, metadata, ctx.check_interrupted, lambda i, n: ctx.progress(i, n))
        name, subfolder, _counter = save_new_file(ctx.env.output_dir, filename_prefix, width, height, "mp4", write)
        return NodeOutput(values=(), ui=_video_entry(name, subfolder))


def encode_webm(
    path: Path, images: torch.Tensor, codec: str, fps: float, crf: float, tags: dict[str, str], ctx: NodeContext,
) -> None:
    """SaveWEBM's encoding: the frame rate rounded to 1/1000, bit rate 0 with `crf`, yuv420p
    (10-bit for AV1, preset 6), frames truncated to 8 bits and converted by the encoder."""
    av = av_module()
    frames = int(images.shape[0])
    with av.open(str(path), mode="w") as container:
        for key, value in tags.items():
            container.metadata[key] = value
        stream = container.add_stream(WEBM_CODECS[codec], rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height = int(images.shape[-2]), int(images.shape[-3])
        stream.pix_fmt = "yuv420p10le" if codec == "av1" else "yuv420p"
        stream.bit_rate = 0
        stream.options = {"crf": str(crf)}
        if codec == "av1":
            stream.options["preset"] = "6"
        for index in range(frames):
            ctx.check_interrupted()
            frame = av.VideoFrame.from_ndarray(frame_to_rgb24(images[index]), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            ctx.progress(index + 1, frames)
        container.mux(stream.encode())


@register_node
class SaveWEBM(Node):
    schema = NodeSchema(
        class_type="SaveWEBM",
        inputs=(
            Link("images", "IMAGE"),
            String("filename_prefix", default="ComfyUI", validator=check_filename_prefix, extra={"multiline": False}),
            Combo("codec", list(WEBM_CODECS), combo_as_options=True),
            Float("fps", default=24.0, min=0.01, max=1000.0, step=0.01),
            Float("crf", default=32.0, min=0, max=63.0, step=1,
                  tooltip="Higher crf means lower quality with a smaller file size, lower crf means higher "
                  "quality higher filesize."),
        ),
        outputs=(),
        category="image/video",
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO"),
    )

    def run(
        self, ctx: NodeContext, images: torch.Tensor, codec: str, fps: float, crf: float,
        filename_prefix: str = "ComfyUI", prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None, **_hidden: Any,
    ) -> NodeOutput:
        images = _check_images(images)
        frames, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        check_video_pixels(ctx.env.settings, frames, width, height)
        if frames == 0:
            raise ValueError("no frames to save")
        if width % 2 or height % 2:
            raise ValueError(f"{codec} with yuv420p needs an even width and height; the frames are {width}x{height}")
        tags: dict[str, str] = {}
        prompt = _prompt_for_metadata(ctx, prompt)
        if prompt is not None:
            tags["prompt"] = json.dumps(prompt)
        for key, value in (_extra_for_metadata(ctx, extra_pnginfo) or {}).items():
            tags[str(key)] = json.dumps(value)

        def write(path: Path) -> None:
            encode_webm(path, images, codec, fps, crf, tags, ctx)

        name, subfolder, _counter = save_new_file(ctx.env.output_dir, filename_prefix, width, height, "webm", write)
        return NodeOutput(values=(), ui=_video_entry(name, subfolder))
