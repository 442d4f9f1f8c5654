"""Fidelity cases for the upscaling nodes: UpscaleModelLoader, ImageUpscaleWithModel,
ImageScaleToTotalPixels, and the hires-fix pattern through an upscale model.

The upscale model is make_cases' tiny random-weight ESRGAN (2x, original ESRGAN key layout),
which ComfyUI detects through spandrel with no help. ComfyUI's node tiles at 512 input pixels
with a 32-pixel overlap, so one case widens the picture past 512 to make two tiles blend.
make_cases.py adds these to its cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

INPUT_IMAGE = "parity-input.png"
UPSCALE_MODEL = "comfyd-parity-esrgan-x2.safetensors"


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _upscaled(source: list[Any]) -> dict[str, dict[str, Any]]:
    return {
        "50": node("UpscaleModelLoader", model_name=UPSCALE_MODEL),
        "51": node("ImageUpscaleWithModel", upscale_model=["50", 0], image=source),
    }


def cases(base: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    # One tile: the 70x66 input picture doubled.
    w = {"1": node("LoadImage", image=INPUT_IMAGE), **_upscaled(["1", 0])}
    w["90"] = node("SaveImage", images=["51", 0], filename_prefix="parity")
    out["upscale_model_one_tile"] = w
    # Two tiles: 600 wide, so tiles start at 0 and 480 and blend over 32 input (64 output) pixels.
    w = {
        "1": node("LoadImage", image=INPUT_IMAGE),
        "2": node("ImageScale", image=["1", 0], upscale_method="bilinear", width=600, height=40, crop="disabled"),
        **_upscaled(["2", 0]),
    }
    w["90"] = node("SaveImage", images=["51", 0], filename_prefix="parity")
    out["upscale_model_tiled"] = w
    for method, megapixels in (("bicubic", 0.01), ("lanczos", 0.02)):
        out[f"scale_to_total_pixels_{method}"] = {
            "1": node("LoadImage", image=INPUT_IMAGE),
            "2": node("ImageScaleToTotalPixels", image=["1", 0], upscale_method=method, megapixels=megapixels),
            "90": node("SaveImage", images=["2", 0], filename_prefix="parity"),
        }
    # Hires fix: sample, decode, upscale with the model, scale down to the target, encode, and
    # sample again at half denoise.
    w = base()
    w.update(_upscaled(["8", 0]))
    w["52"] = node("ImageScale", image=["51", 0], upscale_method="bilinear", width=96, height=96, crop="disabled")
    w["53"] = node("VAEEncode", pixels=["52", 0], vae=["4", 2])
    w["54"] = node("KSampler", seed=11, steps=6, cfg=7.5, sampler_name="euler", scheduler="normal",
                   denoise=0.5, model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["53", 0])
    w["55"] = node("VAEDecode", samples=["54", 0], vae=["4", 2])
    w["9"]["inputs"]["images"] = ["55", 0]
    out["hires_fix_upscale_model"] = w
    return out
