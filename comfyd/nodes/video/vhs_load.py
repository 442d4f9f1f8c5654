"""VideoHelperSuite's `VHS_LoadVideo`: a video from the input folder as IMAGE frames, decoded by
PyAV (VHS uses OpenCV), with VHS's frame selection and sizing.

Frame selection follows VHS's clock: each source frame advances time by 1/fps; a frame is
taken whenever a whole output interval (1/force_rate, or 1/fps when force_rate is 0) has
passed, so a lower force_rate drops frames and a higher one repeats them. Of the taken frames,
`skip_first_frames` are skipped, then every `select_every_nth` one is kept, up to
`frame_load_cap` (0: no cap). The size rounds to the format's multiple (8 for the default
"AnimateDiff", the chosen format's for the others; `custom_width`/`custom_height` first), resized
with lanczos after a centre crop when it changes; formats with a frame rule (Wan: 4n+1, ...)
drop the frames past the last count that fits.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import common_upscale
from comfyd.nodes.video._input_files import file_checker, resolve_input
from comfyd.nodes.video._media import MediaDecodeError, av_module, check_video_pixels, open_input
from comfyd.nodes.video._video_codec import decode_frames
from comfyd.nodes.video.vhs_combine import VHS_CATEGORY

VIDEO_EXTENSIONS = ("webm", "mp4", "mkv", "gif", "mov")
BIGMAX = 2**53 - 1
DIMMAX = 8192
# VHS's load formats: the size multiple, a default size, and the frame-count rule (n % a == b).
LOAD_FORMATS: dict[str, dict[str, Any]] = {
    "None": {},
    "AnimateDiff": {"target_rate": 8, "dim": (8, 0, 512, 512)},
    "Mochi": {"target_rate": 24, "dim": (16, 0, 848, 480), "frames": (6, 1)},
    "LTXV": {"target_rate": 24, "dim": (32, 0, 768, 512), "frames": (8, 1)},
    "Hunyuan": {"target_rate": 24, "dim": (16, 0, 848, 480), "frames": (4, 1)},
    "Cosmos": {"target_rate": 24, "dim": (16, 0, 1280, 704), "frames": (8, 1)},
    "Wan": {"target_rate": 16, "dim": (8, 0, 832, 480), "frames": (4, 1)},
}


def list_videos(env: Any) -> list[str]:
    if env is None or not env.input_dir.is_dir():
        return []
    return sorted(p.name for p in env.input_dir.iterdir()
                  if p.is_file() and "." in p.name and p.name.rsplit(".", 1)[-1].lower() in VIDEO_EXTENSIONS)


def target_size(width: int, height: int, custom_width: int, custom_height: int, multiple: int) -> tuple[int, int]:
    w, h = float(width), float(height)
    if custom_width and custom_height:
        w, h = custom_width, custom_height
    elif custom_width:
        h, w = h * custom_width / w, custom_width
    elif custom_height:
        w, h = w * custom_height / h, custom_height
    return int(w / multiple + 0.5) * multiple, int(h / multiple + 0.5) * multiple


def select_frames(frames: Iterator[np.ndarray], fps: float, force_rate: float, skip_first: int, every_nth: int,
                  cap: int) -> Iterator[np.ndarray]:
    base = 1 / fps
    interval = 1 / force_rate if force_rate else base
    current = next(frames, None)
    if current is None:
        return
    clock = interval
    taken = skipped_or_seen = 0
    evaluated = -1
    while True:
        if clock < interval:
            current = next(frames, None)
            if current is None:
                return
            clock += base
        if clock < interval:
            continue
        clock -= interval
        skipped_or_seen += 1
        if skipped_or_seen <= skip_first:
            continue
        evaluated += 1
        if evaluated % every_nth:
            continue
        yield current
        taken += 1
        if cap and taken >= cap:
            return


def _audio_slice(path: Any, start: float, duration: float) -> dict[str, Any] | None:
    """The file's first audio stream from `start` seconds, `duration` long (0: to the end)."""
    av = av_module()
    with open_input(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = int(stream.sample_rate or stream.codec_context.sample_rate)
        try:
            chunks = [frame.to_ndarray() for frame in container.decode(streams=stream.index)]
        except av.FFmpegError as exc:
            raise MediaDecodeError(f"{path.name}: cannot decode its audio: {exc}") from None
    if not chunks:
        return None
    channels = int(stream.channels)
    data = [torch.from_numpy(c) if c.shape[0] == channels else torch.from_numpy(c).view(-1, channels).t() for c in chunks]
    waveform = torch.cat(data, dim=1).float()
    begin = int(start * rate)
    end = begin + int(duration * rate) if duration else waveform.shape[1]
    return {"waveform": waveform[:, begin:end].unsqueeze(0), "sample_rate": rate}


@register_node
class VHS_LoadVideo(Node):
    schema = NodeSchema(
        class_type="VHS_LoadVideo",
        inputs=(
            Combo("video", list_videos, validator=file_checker("video")),
            Float("force_rate", default=0, min=0, max=60, step=1, extra={"disable": 0}),
            Int("custom_width", default=0, min=0, max=DIMMAX, step=None, extra={"disable": 0}),  # type: ignore[arg-type]
            Int("custom_height", default=0, min=0, max=DIMMAX, step=None, extra={"disable": 0}),  # type: ignore[arg-type]
            Int("frame_load_cap", default=0, min=0, max=BIGMAX, step=1, extra={"disable": 0}),
            Int("skip_first_frames", default=0, min=0, max=BIGMAX, step=1),
            Int("select_every_nth", default=1, min=1, max=BIGMAX, step=1),
            Link("meta_batch", "VHS_BatchManager", optional=True),
            Link("vae", "VAE", optional=True),
            Combo("format", list(LOAD_FORMATS), default="AnimateDiff", optional=True, extra={"formats": LOAD_FORMATS}),
        ),
        outputs=(OutputSpec("IMAGE", "IMAGE"), OutputSpec("INT", "frame_count"), OutputSpec("AUDIO", "audio"),
                 OutputSpec("VHS_VIDEOINFO", "video_info")),
        category=VHS_CATEGORY,
    )
    # VHS's IS_CHANGED: SHA-256 of the file's path and modification time; it lands in the prompt.
    fingerprint_is_comfyui_is_changed = True

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        try:
            path = resolve_input(ctx.env, str(inputs.get("video", "")), "video")
            return hashlib.sha256(str(path).encode() + str(os.path.getmtime(path)).encode()).hexdigest()
        except (OSError, ValueError):
            return None  # run() reports the problem

    def run(
        self, ctx: NodeContext, video: str, force_rate: float, custom_width: int, custom_height: int,
        frame_load_cap: int, skip_first_frames: int, select_every_nth: int, meta_batch: Any = None,
        vae: Any = None, format: str = "None",
    ) -> tuple[Any, ...]:
        if meta_batch is not None or vae is not None:
            raise ValueError("VHS_LoadVideo: meta_batch and vae are not supported by comfyd")
        path = resolve_input(ctx.env, video, "video")
        spec = LOAD_FORMATS.get(format, {})
        settings = ctx.env.settings
        with open_input(path) as container:
            if not container.streams.video:
                raise MediaDecodeError(f"{path.name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(1)
            fps, width, height = float(rate), int(stream.width), int(stream.height)
            source_count = int(stream.frames or 0)
            new_w, new_h = target_size(width, height, custom_width, custom_height, spec.get("dim", (1,))[0])
            frames = select_frames(decode_frames(container, path.name, None), fps, force_rate, skip_first_frames,
                                   select_every_nth, frame_load_cap)
            kept: list[np.ndarray] = []
            for frame in frames:
                kept.append(frame)
                check_video_pixels(settings, len(kept), new_w, new_h, f"video {path.name}")
                ctx.progress(len(kept), max(frame_load_cap, len(kept)))
        if not kept:
            raise MediaDecodeError(f"{path.name}: no frames selected")
        images = torch.empty((len(kept), height, width, 3), dtype=torch.float32)
        for index, frame in enumerate(kept):
            images[index] = torch.from_numpy(frame.astype(np.float32) / 255.0)
        if (new_w, new_h) != (width, height):
            images = common_upscale(images.movedim(-1, 1), new_w, new_h, "lanczos", "center").movedim(1, -1)
        if "frames" in spec:
            div, mod = spec["frames"][:2]
            if len(images) % div != mod:
                images = images[: (len(images) - mod) // div * div + mod]
        interval = 1 / force_rate if force_rate else 1 / fps
        audio = _audio_slice(path, skip_first_frames * interval, frame_load_cap * interval)
        interval *= select_every_nth
        info = {
            "source_fps": fps, "source_frame_count": source_count,
            "source_duration": source_count / fps if fps else 0.0, "source_width": width, "source_height": height,
            "loaded_fps": 1 / interval, "loaded_frame_count": len(images), "loaded_duration": len(images) * interval,
            "loaded_width": new_w, "loaded_height": new_h,
        }
        return images, len(images), audio, info
