"""VideoHelperSuite's `VHS_VideoCombine`: IMAGE frames to an animated GIF/WEBP (Pillow) or a
video (h264/h265 mp4, vp9/av1 webm, through PyAV instead of VHS's ffmpeg binary).

Kept from VHS: its inputs and per-format options (`crf`, `pix_fmt`, `save_metadata`,
`trim_to_audio`, `lossless`, read from the node's inputs in the prompt as VHS receives them),
8-bit frames by rounding, `pingpong`, `loop_count` (GIF/WEBP loop count; for videos, the frames
repeated that many more times), names `{prefix}_{counter:05}.{ext}` with a first-frame PNG holding
the workflow beside the video, `-audio` in the name when audio is muxed in, the UI entry under
"gifs", `save_output=false` writing to the temp folder, and the VHS_FILENAMES output.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import (
    Boolean,
    Combo,
    Float,
    Int,
    Link,
    Node,
    NodeOutput,
    NodeSchema,
    OutputSpec,
    String,
    register_node,
)
from comfyd.nodes.image.output_names import check_filename_prefix, expand_prefix_tokens, save_target
from comfyd.nodes.image.save_load import _check_images, _extra_for_metadata, _prompt_for_metadata
from comfyd.nodes.video._media import av_module, check_video_pixels, save_new_file
from comfyd.nodes.video._vhs_formats import (
    FORMAT_CHOICES,
    VIDEO_FORMATS,
    VideoFormat,
    format_widgets,
    widget_value,
)

VHS_CATEGORY = "Video Helper Suite 🎥🅥🅗🅢"


def frame_bytes(frame: torch.Tensor) -> np.ndarray:
    """VHS's 8-bit frames: rounded (x * 255 + 0.5, clipped), not truncated as ComfyUI's are."""
    return np.clip(frame.detach().cpu().numpy() * 255 + 0.5, 0, 255).astype(np.uint8)


def frame_shorts(frame: torch.Tensor) -> np.ndarray:
    """VHS's 16-bit frames (input_color_depth=16bit), rounded the same way."""
    return np.clip(frame.detach().cpu().numpy() * 65535 + 0.5, 0, 65535).astype(np.uint16)


def frame_order(count: int, pingpong: bool, loop_count: int = 0) -> Iterator[int]:
    """Frame indices: forwards, then (pingpong) back without repeating either end; `loop_count`
    more passes of that sequence for videos."""
    order = list(range(count))
    if pingpong:
        order += list(range(count - 2, 0, -1))
    for _ in range(loop_count + 1):
        yield from order


def next_vhs_counter(folder: Path, stem: str) -> int:
    """1 + the highest counter of files named `{stem}_{digits}{non-digits}.{ext}` (VHS's rule)."""
    matcher = re.compile(f"{re.escape(stem)}_(\\d+)\\D*\\..+", re.IGNORECASE)
    highest = 0
    if folder.is_dir():
        for name in os.listdir(folder):
            match = matcher.fullmatch(name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def _waveform_for(audio: Any) -> tuple[torch.Tensor, int] | None:
    if not isinstance(audio, dict) or not isinstance(audio.get("waveform"), torch.Tensor):
        return None
    waveform = audio["waveform"].detach().cpu().float()
    if waveform.ndim == 3:
        waveform = waveform[0]
    if waveform.shape[0] not in (1, 2):
        raise ValueError(f"audio with {waveform.shape[0]} channels: mono or stereo only")
    return waveform, int(audio["sample_rate"])


def encode_video(
    path: Path, images: torch.Tensor, order: list[int], fps: float, fmt: VideoFormat, pix_fmt: str, crf: int,
    tags: dict[str, str], audio: tuple[torch.Tensor, int] | None, trim_to_audio: bool, ctx: NodeContext,
    sixteen_bit: bool = False,
) -> None:
    av = av_module()
    from av.video.reformatter import ColorRange, Colorspace

    rate = Fraction(round(fps * 1000), 1000)
    if audio is not None and trim_to_audio:
        frames_for_audio = math.ceil(audio[0].shape[1] / audio[1] * fps)
        order = order[: max(1, frames_for_audio)]
    height, width = int(images.shape[1]), int(images.shape[2])
    options = {"movflags": "use_metadata_tags"} if fmt.extension == "mp4" else {}
    with av.open(str(path), mode="w", options=options) as out:
        for key, value in tags.items():
            out.metadata[key] = value
        stream = out.add_stream(fmt.codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        codec_options = {"crf": str(crf), **{k: v for k, v in fmt.options.items() if k not in ("b", "tag")}}
        if fmt.options.get("b") == "0":
            stream.bit_rate = 0
        if "tag" in fmt.options:
            stream.codec_tag = fmt.options["tag"]
        stream.options = codec_options
        context = stream.codec_context
        context.colorspace, context.color_range = 1, 1  # BT.709, limited ("tv") range
        context.color_primaries, context.color_trc = 1, 1
        audio_stream = None
        if audio is not None:
            audio_rate = audio[1] if fmt.audio_codec != "libopus" or audio[1] in (8000, 12000, 16000, 24000, 48000) else 48000
            audio_stream = out.add_stream(fmt.audio_codec, rate=audio_rate)
        for done, index in enumerate(order, start=1):
            ctx.check_interrupted()
            if sixteen_bit:
                frame = av.VideoFrame.from_ndarray(frame_shorts(images[index][..., :3]), format="rgb48le")
            else:
                frame = av.VideoFrame.from_ndarray(frame_bytes(images[index][..., :3]), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG)
            out.mux(stream.encode(frame))
            ctx.progress(done, len(order))
        out.mux(stream.encode(None))
        if audio_stream is not None and audio is not None:
            waveform, sample_rate = audio
            wanted = math.ceil(len(order) / fps * sample_rate)
            if waveform.shape[1] < wanted and not trim_to_audio:  # VHS pads with silence (apad)
                waveform = torch.nn.functional.pad(waveform, (0, wanted - waveform.shape[1]))
            waveform = waveform[:, :wanted]
            layout = "mono" if waveform.shape[0] == 1 else "stereo"
            samples = waveform.movedim(0, 1).reshape(1, -1).numpy()
            audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="flt", layout=layout)
            audio_frame.sample_rate, audio_frame.pts = sample_rate, 0
            out.mux(audio_stream.encode(audio_frame))
            out.mux(audio_stream.encode(None))


def encode_animation(path: Path, images: torch.Tensor, order: list[int], ext: str, fps: float, loop_count: int,
                     lossless: bool, ctx: NodeContext) -> None:
    def frames() -> Iterator[Image.Image]:
        for done, index in enumerate(order[1:], start=2):
            ctx.check_interrupted()
            ctx.progress(done, len(order))
            yield Image.fromarray(frame_bytes(images[index]))

    kwargs: dict[str, Any] = {}
    if ext == "gif":
        kwargs["disposal"] = 2
    else:
        exif = Image.Exif()
        exif[ExifTags.IFD.Exif] = {36867: datetime.datetime.now().isoformat(" ")[:19]}
        kwargs.update(exif=exif, lossless=lossless)
    first = Image.fromarray(frame_bytes(images[order[0]]))
    first.save(path, format=ext.upper(), save_all=True, append_images=frames(), duration=round(1000 / fps),
               loop=loop_count, compress_level=4, **kwargs)


@register_node
class VHS_VideoCombine(Node):
    schema = NodeSchema(
        class_type="VHS_VideoCombine",
        inputs=(
            Link("images", "IMAGE"),
            Float("frame_rate", default=8, min=1, max=None, step=1),  # type: ignore[arg-type]
            Int("loop_count", default=0, min=0, max=100, step=1),
            String("filename_prefix", default="AnimateDiff", validator=check_filename_prefix),
            Combo("format", FORMAT_CHOICES, extra={"formats": format_widgets()}),
            Boolean("pingpong", default=False),
            Boolean("save_output", default=True),
            Link("audio", "AUDIO", optional=True),
            Link("meta_batch", "VHS_BatchManager", optional=True),
            Link("vae", "VAE", optional=True),
        ),
        outputs=(OutputSpec("VHS_FILENAMES", "Filenames"),),
        category=VHS_CATEGORY,
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID"),
    )

    def run(
        self, ctx: NodeContext, images: Any, frame_rate: float, loop_count: int, filename_prefix: str = "AnimateDiff",
        format: str = "image/gif", pingpong: bool = False, save_output: bool = True, audio: Any = None,
        meta_batch: Any = None, vae: Any = None, prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None, **_hidden: Any,
    ) -> NodeOutput:
        if meta_batch is not None or vae is not None or isinstance(images, dict):
            raise ValueError("VHS_VideoCombine: meta_batch and latents with a vae are not supported by comfyd")
        images = _check_images(images)
        count, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
        if count == 0:
            return NodeOutput(values=((save_output, []),), ui=None)
        check_video_pixels(ctx.env.settings, count, width, height)
        raw = ((ctx.prompt or {}).get(ctx.node_id) or {}).get("inputs") or {}
        folder_type = "output" if save_output else "temp"
        base = ctx.env.output_dir if save_output else ctx.env.temp_dir
        target = save_target(base, expand_prefix_tokens(filename_prefix, width, height))
        counter = next_vhs_counter(target.folder, target.stem)
        prompt, extra = _prompt_for_metadata(ctx, prompt), _extra_for_metadata(ctx, extra_pnginfo)
        kind, ext = format.split("/", 1)
        widgets = format_widgets().get(format, [])
        order = list(frame_order(count, pingpong, loop_count if kind == "video" else 0))
        waveform = _waveform_for(audio)
        if kind == "image":
            lossless = bool(widget_value(widgets, raw, "lossless")) if widgets else True

            def write(path: Path) -> None:
                encode_animation(path, images, order, ext, frame_rate, loop_count, lossless, ctx)
            suffix = ""
        else:
            fmt = VIDEO_FORMATS[format]
            ext = fmt.extension
            pix_fmt, crf = widget_value(widgets, raw, "pix_fmt"), int(widget_value(widgets, raw, "crf"))
            save_metadata = bool(widget_value(widgets, raw, "save_metadata"))
            trim = bool(widget_value(widgets, raw, "trim_to_audio")) if fmt.trim_to_audio else False
            sixteen = fmt.color_depth and widget_value(widgets, raw, "input_color_depth") == "16bit"
            if width % 2 or height % 2:
                raise ValueError(f"{format} needs an even width and height; the frames are {width}x{height}")
            tags = _video_tags(prompt, extra) if save_metadata else {}

            def write(path: Path) -> None:
                encode_video(path, images, order, frame_rate, fmt, pix_fmt, crf, tags, waveform, trim, ctx, sixteen)
            suffix = "-audio" if waveform is not None else ""
        name, subfolder, counter = save_new_file(
            base, filename_prefix, width, height, ext, write, start=counter,
            name_of=lambda stem, n, e: f"{stem}_{n:05}{suffix}.{e}",
        )
        png_name = f"{target.stem}_{counter:05}.png"
        Image.fromarray(frame_bytes(images[0])).save(target.folder / png_name, pnginfo=_png_info(prompt, extra),
                                                     compress_level=4)
        preview = {"filename": name, "subfolder": subfolder, "type": folder_type, "format": format,
                   "frame_rate": frame_rate, "workflow": png_name}
        paths = [str(target.folder / png_name), str(target.folder / name)]
        return NodeOutput(values=((save_output, paths),), ui={"gifs": [preview]})


def _video_tags(prompt: dict[str, Any] | None, extra: dict[str, Any] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (extra or {}).items():
        tags[str(key)] = json.dumps(value)
    tags["CreationTime"] = datetime.datetime.now().isoformat(" ")[:19]
    return tags


def _png_info(prompt: dict[str, Any] | None, extra: dict[str, Any] | None) -> PngInfo:
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra or {}).items():
        info.add_text(str(key), json.dumps(value))
    info.add_text("CreationTime", datetime.datetime.now().isoformat(" ")[:19])
    return info
