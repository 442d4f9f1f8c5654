"""AUDIO in and out: LoadAudio, SaveAudio (FLAC), SaveAudioMP3, SaveAudioOpus, PreviewAudio.

AUDIO is ComfyUI's dict `{"waveform": float tensor [batch, channels, samples], "sample_rate": int}`.
Files are written as ComfyUI 0.3.64 writes them: one file per batch item named
`{prefix}_{counter:05}_.{ext}` (`%batch_num%` in the prefix becomes the item's index), the whole
waveform handed to the encoder as one float frame, the prompt and each extra_pnginfo key as JSON
container tags; the UI entry is `{"audio": [...]}`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Link, Node, NodeOutput, NodeSchema, OutputSpec, String, register_node
from comfyd.nodes.image.output_names import check_filename_prefix, expand_prefix_tokens, save_target
from comfyd.nodes.image.save_load import (
    _extra_for_metadata,
    _prompt_for_metadata,
    next_counter,
    preview_prefix,
)
from comfyd.nodes.video._input_files import file_checker, list_input_files, resolve_input
from comfyd.nodes.video._media import MediaDecodeError, av_module, open_input, save_new_file

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
BIT_RATES = {"64k": 64000, "96k": 96000, "128k": 128000, "192k": 192000, "320k": 320000}
# Decoded samples (all channels) LoadAudio accepts: an hour of 48 kHz stereo.
MAX_AUDIO_SAMPLES = 48000 * 2 * 3600


def _pcm_float(wav: torch.Tensor) -> torch.Tensor:
    if wav.dtype.is_floating_point:
        return wav
    if wav.dtype == torch.int16:
        return wav.float() / (2**15)
    if wav.dtype == torch.int32:
        return wav.float() / (2**31)
    raise ValueError(f"unsupported sample type {wav.dtype}")


def load_audio_file(path: Path) -> tuple[torch.Tensor, int]:
    """(waveform [channels, samples], sample rate) of a file's first audio stream."""
    av = av_module()
    with open_input(path, "audio") as container:
        if not container.streams.audio:
            raise MediaDecodeError(f"{path.name} has no audio stream")
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.channels
        chunks, total = [], 0
        try:
            for frame in container.decode(streams=stream.index):
                buf = torch.from_numpy(frame.to_ndarray())
                if buf.shape[0] != channels:  # packed samples: interleaved channels
                    buf = buf.view(-1, channels).t()
                total += buf.numel()
                if total > MAX_AUDIO_SAMPLES:
                    raise ValueError(f"{path.name} holds more than {MAX_AUDIO_SAMPLES} samples")
                chunks.append(buf)
        except av.FFmpegError as exc:
            raise MediaDecodeError(f"{path.name}: cannot decode its audio: {exc}") from None
    if not chunks:
        raise MediaDecodeError(f"{path.name}: no audio frames decoded")
    return _pcm_float(torch.cat(chunks, dim=1)), rate


def _encode(waveform: torch.Tensor, sample_rate: int, format: str, quality: str, tags: dict[str, str]) -> bytes:
    av = av_module()
    rate = sample_rate
    if format == "opus" and rate not in OPUS_RATES:
        # Opus takes these rates only: the next one up, 48 kHz at most. ComfyUI resamples with
        # torchaudio first; here the encoder's own resampler (libswresample) does it.
        rate = next((r for r in OPUS_RATES if r > rate), 48000)
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format=format)
    for key, value in tags.items():
        container.metadata[key] = value
    codec = {"opus": "libopus", "mp3": "libmp3lame"}.get(format, "flac")
    stream = container.add_stream(codec, rate=rate, layout=layout)
    if format == "opus" and quality in BIT_RATES:
        stream.bit_rate = BIT_RATES[quality]
    elif format == "mp3":
        if quality == "V0":
            stream.codec_context.qscale = 1
        elif quality in ("128k", "320k"):
            stream.bit_rate = BIT_RATES[quality]
    frame = av.AudioFrame.from_ndarray(
        waveform.movedim(0, 1).reshape(1, -1).float().numpy(), format="flt", layout=layout
    )
    frame.sample_rate, frame.pts = sample_rate, 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
    container.close()
    return buffer.getvalue()


def save_audio(
    ctx: NodeContext, audio: dict[str, Any], filename_prefix: str, format: str, quality: str,
    folder_type: str, prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None,
) -> list[dict[str, str]]:
    if not isinstance(audio, dict) or not isinstance(audio.get("waveform"), torch.Tensor):
        raise TypeError("expected AUDIO ({'waveform': tensor [batch, channels, samples], 'sample_rate': int})")
    waveforms = audio["waveform"].detach().cpu()
    if waveforms.ndim != 3 or waveforms.shape[1] not in (1, 2):
        raise ValueError(f"expected a mono or stereo waveform [batch, 1|2, samples], got {tuple(waveforms.shape)}")
    tags: dict[str, str] = {}
    prompt = _prompt_for_metadata(ctx, prompt)
    if prompt is not None:
        tags["prompt"] = json.dumps(prompt)
    for key, value in (_extra_for_metadata(ctx, extra_pnginfo) or {}).items():
        tags[str(key)] = json.dumps(value)
    base = ctx.env.output_dir if folder_type == "output" else ctx.env.temp_dir
    target = save_target(base, expand_prefix_tokens(filename_prefix, 0, 0))
    counter = next_counter(target.folder, target.stem)
    results = []
    for batch_number, waveform in enumerate(waveforms):
        ctx.check_interrupted()
        data = _encode(waveform, int(audio["sample_rate"]), format, quality, tags)
        prefix = filename_prefix.replace("%batch_num%", str(batch_number))

        def write(path: Path, data: bytes = data) -> None:
            path.write_bytes(data)

        name, subfolder, counter = save_new_file(base, prefix, 0, 0, format, write, start=counter)
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return results


def _save_schema(class_type: str, *quality: Any, output: bool = True) -> NodeSchema:
    inputs: tuple[Any, ...] = (Link("audio", "AUDIO"),)
    if output:
        inputs += (String("filename_prefix", default="audio/ComfyUI", validator=check_filename_prefix), *quality)
    return NodeSchema(class_type=class_type, inputs=inputs, outputs=(), category="audio", output_node=True,
                      hidden=("PROMPT", "EXTRA_PNGINFO"))


class _SaveAudioBase(Node):
    format = "flac"

    def run(
        self, ctx: NodeContext, audio: dict[str, Any], filename_prefix: str = "ComfyUI", quality: str = "128k",
        prompt: dict[str, Any] | None = None, extra_pnginfo: dict[str, Any] | None = None, **_hidden: Any,
    ) -> NodeOutput:
        results = save_audio(ctx, audio, filename_prefix, self.format, quality, "output", prompt, extra_pnginfo)
        return NodeOutput(values=(), ui={"audio": results})


@register_node
class SaveAudio(_SaveAudioBase):
    schema = _save_schema("SaveAudio")


@register_node
class SaveAudioMP3(_SaveAudioBase):
    schema = _save_schema("SaveAudioMP3", Combo("quality", ["V0", "128k", "320k"], default="V0"))
    format = "mp3"


@register_node
class SaveAudioOpus(_SaveAudioBase):
    schema = _save_schema("SaveAudioOpus", Combo("quality", list(BIT_RATES), default="128k"))
    format = "opus"


@register_node
class PreviewAudio(Node):
    schema = _save_schema("PreviewAudio", output=False)

    def run(
        self, ctx: NodeContext, audio: dict[str, Any], prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None, **_hidden: Any,
    ) -> NodeOutput:
        results = save_audio(ctx, audio, preview_prefix(), "flac", "128k", "temp", prompt, extra_pnginfo)
        return NodeOutput(values=(), ui={"audio": results})


@register_node
class LoadAudio(Node):
    schema = NodeSchema(
        class_type="LoadAudio",
        inputs=(
            Combo("audio", lambda env: list_input_files(env, ("audio", "video")), extra={"audio_upload": True},
                  validator=file_checker("audio")),
        ),
        outputs=(OutputSpec("AUDIO"),),
        category="audio",
    )
    # ComfyUI's LoadAudio.IS_CHANGED is the file's SHA-256 hex; it lands in the saved prompt.
    fingerprint_is_comfyui_is_changed = True

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        try:
            path = resolve_input(ctx.env, str(inputs.get("audio", "")), "audio")
        except (OSError, ValueError):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def run(self, ctx: NodeContext, audio: str) -> tuple[dict[str, Any]]:
        waveform, rate = load_audio_file(resolve_input(ctx.env, audio, "audio"))
        return ({"waveform": waveform.unsqueeze(0), "sample_rate": rate},)
