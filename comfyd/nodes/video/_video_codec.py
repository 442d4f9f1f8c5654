"""The VIDEO value and its encoding and decoding through PyAV.

A VIDEO is what ComfyUI's video nodes pass around: either components (an IMAGE batch, a frame
rate and optional AUDIO) or a file that is only read when something asks for its frames.
Encoding follows ComfyUI 0.3.64's choices (h264 in mp4, yuv420p, the frame rate rounded to
1/1000, 8-bit frames by truncation, AAC audio cut to the video's length, metadata as JSON
container tags), so decoding comfyd's file gives ComfyUI's frames. Frames go to the encoder one
at a time: memory does not grow with the frame count beyond the IMAGE batch itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comfyd.nodes.video._media import MediaDecodeError, av_module, check_video_pixels, open_input

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class VideoComponents:
    images: torch.Tensor  # IMAGE [frames, H, W, C]
    frame_rate: Fraction
    audio: dict[str, Any] | None = None  # AUDIO: {"waveform": [B, C, N], "sample_rate": int}
    metadata: dict[str, Any] | None = None


class VideoFromComponents:
    def __init__(self, components: VideoComponents) -> None:
        self.components = components

    @property
    def nbytes(self) -> int:  # for the node-output cache's accounting
        audio = self.components.audio
        waveform = audio.get("waveform") if isinstance(audio, dict) else None
        return int(self.components.images.nbytes) + int(getattr(waveform, "nbytes", 0) or 0)

    def dimensions(self) -> tuple[int, int]:
        images = self.components.images
        return int(images.shape[2]), int(images.shape[1])

    def get_components(self, settings: Any = None) -> VideoComponents:
        return VideoComponents(self.components.images, self.components.frame_rate, self.components.audio)


class VideoFromFile:
    """A video file, probed and decoded on demand (LoadVideo's value)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nbytes = len(str(path))

    def dimensions(self) -> tuple[int, int]:
        with open_input(self.path) as container:
            for stream in container.streams.video:
                return int(stream.width), int(stream.height)
        raise MediaDecodeError(f"{self.path.name} has no video stream")

    def get_components(self, settings: Any = None, progress: Progress | None = None) -> VideoComponents:
        with open_input(self.path) as container:
            return decode_container(container, self.path.name, settings, progress)


def _frame_budget_check(settings: Any, count: int, width: int, height: int, name: str) -> None:
    if settings is not None:
        check_video_pixels(settings, count, width, height, f"video {name}")


def decode_frames(container: Any, name: str, settings: Any, progress: Progress | None = None) -> Iterator[np.ndarray]:
    """RGB24 frames of the first video stream, checked against the video budget as they come
    (the declared frame count first, when the container states one)."""
    av = av_module()
    if not container.streams.video:
        raise MediaDecodeError(f"{name} has no video stream")
    stream = container.streams.video[0]
    declared = int(stream.frames or 0)
    if declared:
        _frame_budget_check(settings, declared, int(stream.width), int(stream.height), name)
    count = 0
    try:
        for frame in container.decode(video=0):
            count += 1
            _frame_budget_check(settings, count, frame.width, frame.height, name)
            if progress is not None:
                progress(count, max(declared, count))
            yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as exc:
        raise MediaDecodeError(f"{name}: cannot decode frame {count + 1}: {exc}") from None


def frames_to_images(frames: Iterable[np.ndarray]) -> torch.Tensor:
    """IMAGE [F, H, W, 3] from uint8 frames, as ComfyUI divides them (x / 255.0 in float32). The
    uint8 frames are kept until the end, a quarter of the float batch, so the batch is built
    once instead of stacked from a list of float frames."""
    kept = list(frames)
    if not kept:
        return torch.zeros(0, 3, 0, 0)  # ComfyUI's empty result, shape included
    out = torch.empty((len(kept), *kept[0].shape), dtype=torch.float32)
    for index, frame in enumerate(kept):
        out[index] = torch.from_numpy(frame) / 255.0
    return out


def decode_audio(container: Any) -> dict[str, Any] | None:
    """The container's audio streams, as ComfyUI reads them next to the frames (the last audio
    stream with frames wins; samples as float arrays [channels, samples])."""
    audio = None
    container.seek(0)
    for stream in container.streams:
        if stream.type != "audio":
            continue
        chunks = [frame.to_ndarray() for packet in container.demux(stream) for frame in packet.decode()]
        if chunks:
            waveform = torch.from_numpy(np.concatenate(chunks, axis=1)).unsqueeze(0)
            audio = {"waveform": waveform, "sample_rate": int(stream.sample_rate) if stream.sample_rate else 1}
    return audio


def decode_container(container: Any, name: str, settings: Any, progress: Progress | None = None) -> VideoComponents:
    images = frames_to_images(decode_frames(container, name, settings, progress))
    stream = container.streams.video[0]
    frame_rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(1)
    av = av_module()
    try:
        audio = decode_audio(container)
    except av.FFmpegError as exc:
        raise MediaDecodeError(f"{name}: cannot decode its audio: {exc}") from None
    return VideoComponents(images=images, frame_rate=frame_rate, audio=audio, metadata=dict(container.metadata))


def frame_to_rgb24(frame: torch.Tensor) -> np.ndarray:
    """One IMAGE frame [H, W, C] -> uint8 RGB, truncating like ComfyUI ((x * 255).clamp().byte())."""
    return (frame[..., :3] * 255).clamp(0, 255).to(device="cpu", dtype=torch.uint8).numpy()


def _metadata_tags(metadata: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): json.dumps(v) for k, v in (metadata or {}).items()}


def encode_mp4(
    path: Path, components: VideoComponents, metadata: dict[str, Any] | None,
    check_interrupted: Callable[[], None] | None = None, progress: Progress | None = None,
) -> None:
    """SaveVideo's mp4: h264 (libx264 defaults), yuv420p, AAC audio when there is any."""
    av = av_module()
    images = components.images
    frames, height, width = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    if frames == 0:
        raise ValueError("the video has no frames to save")
    if width % 2 or height % 2:
        raise ValueError(f"h264 with yuv420p needs an even width and height; the frames are {width}x{height}")
    frame_rate = Fraction(round(components.frame_rate * 1000), 1000)
    with av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as output:
        for key, value in _metadata_tags(metadata).items():
            output.metadata[key] = value
        video_stream = output.add_stream("h264", rate=frame_rate)
        video_stream.width, video_stream.height, video_stream.pix_fmt = width, height, "yuv420p"
        audio = components.audio
        audio_stream = None
        if audio:
            audio_rate = int(audio["sample_rate"])
            audio_stream = output.add_stream("aac", rate=audio_rate)
        for index in range(frames):
            if check_interrupted is not None:
                check_interrupted()
            frame = av.VideoFrame.from_ndarray(frame_to_rgb24(images[index]), format="rgb24")
            output.mux(video_stream.encode(frame.reformat(format="yuv420p")))
            if progress is not None:
                progress(index + 1, frames)
        output.mux(video_stream.encode(None))
        if audio_stream is not None and audio:
            waveform = audio["waveform"]
            waveform = waveform[:, :, : math.ceil((audio_rate / frame_rate) * frames)]
            layout = "mono" if waveform.shape[1] == 1 else "stereo"
            samples = waveform.movedim(2, 1).reshape(1, -1).float().cpu().numpy()
            audio_frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=layout)
            audio_frame.sample_rate, audio_frame.pts = audio_rate, 0
            output.mux(audio_stream.encode(audio_frame))
            output.mux(audio_stream.encode(None))


def remux(source: Path, path: Path, metadata: dict[str, Any] | None) -> None:
    """Copy a file's video, audio and subtitle packets into a new container without re-encoding
    (SaveVideo of a loaded video with format and codec auto), its tags kept and ours added."""
    av = av_module()
    with open_input(source) as container, av.open(str(path), mode="w", options={"movflags": "use_metadata_tags"}) as out:
        ours = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
        for key, value in container.metadata.items():
            if key not in ours:
                out.metadata[key] = value
        for key, value in ours.items():
            out.metadata[key] = value
        mapping = {}
        for stream in container.streams:
            if stream.type in ("video", "audio", "subtitle"):
                mapping[stream] = out.add_stream_from_template(template=stream, opaque=True)
        try:
            for packet in container.demux():
                if packet.stream in mapping and packet.dts is not None:
                    packet.stream = mapping[packet.stream]
                    out.mux(packet)
        except av.FFmpegError as exc:
            raise MediaDecodeError(f"{source.name}: cannot copy its packets: {exc}") from None


def container_names(source: Path) -> tuple[str, str | None]:
    """(container format names, e.g. "mov,mp4,m4a,3gp,3g2,mj2"; first video codec name)."""
    with open_input(source) as container:
        codec = container.streams.video[0].codec.name if container.streams.video else None
        return str(container.format.name), codec
