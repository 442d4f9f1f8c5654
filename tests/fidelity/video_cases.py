"""Fidelity cases for the video and audio nodes: pixel-only graphs, no model.

    python tests/fidelity/video_cases.py            # writes video_workflows/*.json and the inputs
    python bench/comfyui_render.py --comfyui PATH --models-dir EMPTY --no-model-digests \\
        --input-dir tests/fidelity/inputs --out tests/fidelity/video_references \\
        tests/fidelity/video_workflows/*.json

The inputs are a short clip (`parity-clip.mp4`: 8 frames of 64x48 at 12 fps, h264, with a stereo
AAC track) and a tone (`parity-tone.flac`, 24 kHz stereo: an Opus rate, so SaveAudioOpus needs no
resampling, which ComfyUI does with torchaudio). test_video_parity.py compares decoded frames
and samples, never encoded bytes.
"""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORKFLOWS = HERE / "video_workflows"
INPUTS = HERE / "inputs"
CLIP, TONE, PICTURE = "parity-clip.mp4", "parity-tone.flac", "parity-input.png"
TONE_RATE = 24000


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _four_frames() -> dict[str, Any]:
    """LoadImage (70x66), its inverse, and both flipped: four different frames as nodes 1-5."""
    return {
        "1": node("LoadImage", image=PICTURE),
        "2": node("ImageInvert", image=["1", 0]),
        "3": node("ImageBatch", image1=["1", 0], image2=["2", 0]),
        "4": node("ImageFlip", image=["3", 0], flip_method="x-axis: vertically"),
        "5": node("ImageBatch", image1=["3", 0], image2=["4", 0]),
    }


def cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    w = _four_frames()
    w["6"] = node("CreateVideo", images=["5", 0], fps=12.0)
    w["90"] = node("SaveVideo", video=["6", 0], filename_prefix="video/parity", format="auto", codec="auto")
    out["video_create_save_mp4"] = w
    w = _four_frames()
    w["7"] = node("LoadAudio", audio=TONE)
    w["6"] = node("CreateVideo", images=["5", 0], fps=8.0, audio=["7", 0])
    w["90"] = node("SaveVideo", video=["6", 0], filename_prefix="video/parity", format="mp4", codec="h264")
    out["video_create_save_mp4_audio"] = w
    for codec in ("vp9", "av1"):
        w = _four_frames()
        w["90"] = node("SaveWEBM", images=["5", 0], filename_prefix="parity", codec=codec, fps=24.0, crf=32.0)
        out[f"video_save_webm_{codec}"] = w
    # Decoding: every frame of the clip as ComfyUI reads it, saved losslessly.
    out["video_load_components_apng"] = {
        "1": node("LoadVideo", file=CLIP),
        "2": node("GetVideoComponents", video=["1", 0]),
        "90": node("SaveAnimatedPNG", images=["2", 0], filename_prefix="parity", fps=12.0, compress_level=4),
    }
    # A loaded video saved as it is (its packets copied) and re-encoded from its components.
    out["video_load_save_copy"] = {
        "1": node("LoadVideo", file=CLIP),
        "90": node("SaveVideo", video=["1", 0], filename_prefix="video/parity", format="auto", codec="auto"),
    }
    out["video_load_components_reencode"] = {
        "1": node("LoadVideo", file=CLIP),
        "2": node("GetVideoComponents", video=["1", 0]),
        "3": node("CreateVideo", images=["2", 0], fps=["2", 2], audio=["2", 1]),
        "90": node("SaveVideo", video=["3", 0], filename_prefix="video/parity", format="auto", codec="auto"),
    }
    out["audio_load_save_flac"] = {"1": node("LoadAudio", audio=TONE),
                                   "90": node("SaveAudio", audio=["1", 0], filename_prefix="audio/parity")}
    out["audio_load_save_mp3"] = {"1": node("LoadAudio", audio=TONE),
                                  "90": node("SaveAudioMP3", audio=["1", 0], filename_prefix="audio/parity",
                                             quality="V0")}
    out["audio_load_save_opus"] = {"1": node("LoadAudio", audio=TONE),
                                   "90": node("SaveAudioOpus", audio=["1", 0], filename_prefix="audio/parity",
                                              quality="128k")}
    # The audio track of a video file, as LoadAudio reads it.
    out["audio_from_video_flac"] = {"1": node("LoadAudio", audio=CLIP),
                                    "90": node("SaveAudio", audio=["1", 0], filename_prefix="audio/parity")}
    out.update(vhs_cases())
    return out


def vhs_cases() -> dict[str, dict[str, Any]]:
    """VideoHelperSuite's two nodes, rendered by ComfyUI with the VHS pack loaded
    (bench/comfyui_render.py --custom-node)."""
    out: dict[str, dict[str, Any]] = {}
    combine = {"frame_rate": 12, "loop_count": 0, "filename_prefix": "parity", "pingpong": False, "save_output": True}
    for name, options in {
        "vhs_combine_h264": {"format": "video/h264-mp4", "crf": 19, "pix_fmt": "yuv420p", "save_metadata": True,
                             "trim_to_audio": False},
        "vhs_combine_webm": {"format": "video/webm", "crf": 20, "pix_fmt": "yuv420p", "save_metadata": True,
                             "trim_to_audio": False},
        "vhs_combine_gif_pingpong": {"format": "image/gif", "pingpong": True},
        "vhs_combine_webp_loop": {"format": "image/webp", "lossless": True, "loop_count": 2},
    }.items():
        w = _four_frames()
        w["90"] = node("VHS_VideoCombine", images=["5", 0], **{**combine, **options})
        out[name] = w
    load = {"video": CLIP, "force_rate": 0, "custom_width": 0, "custom_height": 0, "frame_load_cap": 0,
            "skip_first_frames": 0, "select_every_nth": 1, "format": "AnimateDiff"}
    for name, options in {
        "vhs_load_skip_nth": {"skip_first_frames": 1, "select_every_nth": 2},
        "vhs_load_rate_resize": {"force_rate": 6, "custom_width": 40},
    }.items():
        out[name] = {
            "1": node("VHS_LoadVideo", **{**load, **options}),
            "90": node("SaveAnimatedPNG", images=["1", 0], filename_prefix="parity", fps=12.0, compress_level=4),
        }
    out["vhs_load_combine_audio"] = {
        "1": node("VHS_LoadVideo", **load),
        "90": node("VHS_VideoCombine", images=["1", 0], audio=["1", 2], **{**combine, "format": "video/h264-mp4",
                   "crf": 19, "pix_fmt": "yuv420p", "save_metadata": True, "trim_to_audio": False}),
    }
    return out


def tone(seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return (np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 523.25 * t)]) * 0.3).astype(np.float32)


def write_inputs() -> None:
    import av

    samples = tone(1.5, TONE_RATE)
    with av.open(str(INPUTS / TONE), mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=TONE_RATE, layout="stereo")
        frame = av.AudioFrame.from_ndarray(samples.T.reshape(1, -1).copy(), format="flt", layout="stereo")
        frame.sample_rate, frame.pts = TONE_RATE, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:48, 0:64].astype(np.float32)
    with av.open(str(INPUTS / CLIP), mode="w") as container:
        video = container.add_stream("h264", rate=Fraction(12))
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("aac", rate=TONE_RATE)
        for index in range(8):  # a moving gradient with some grain
            r = (x * 3 + index * 20) % 256
            g = (y * 5 + index * 9) % 256
            b = 128 + 60 * np.sin((x + y + index * 4) / 6)
            rgb = np.stack([r, g, b], axis=-1) + rng.normal(0, 6, (48, 64, 3))
            frame = av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(video.encode(frame.reformat(format="yuv420p")))
        container.mux(video.encode(None))
        clip_audio = tone(8 / 12, TONE_RATE)
        frame = av.AudioFrame.from_ndarray(clip_audio.T.reshape(1, -1).copy(), format="flt", layout="stereo")
        frame.sample_rate, frame.pts = TONE_RATE, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def main(argv: list[str]) -> int:
    WORKFLOWS.mkdir(exist_ok=True)
    for name, workflow in cases().items():
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
    if "--no-inputs" not in argv:
        write_inputs()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
