"""Write the fidelity cases: API-format workflows, the LoadImage input, the LoRAs and embedding.

    python tests/fidelity/make_cases.py          # rewrites tests/fidelity/workflows and inputs
    python tests/fidelity/make_cases.py --models DIR   # also writes the parity model files into DIR

The workflows are what both sides run: ComfyUI renders them into `references/` (see
bench/comfyui_render.py and tests/fidelity/README.md) and tests/fidelity/test_parity.py runs them
through comfyd and compares. Every case is small (64x64 to 96x96, 6-10 steps) so the whole set
runs in about a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import controlnet_cases
import image_cases  # beside this file (script dir, or on sys.path in test_parity)
import lora_cases
import numpy as np
import patch_cases
import upscale_cases
from PIL import Image
from PIL.PngImagePlugin import PngInfo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases_sampling import is_stochastic_graph, sampling_cases  # noqa: E402

CHECKPOINT = "comfyd-parity-sd1.safetensors"
LORA_KOHYA = "comfyd-parity-lora-kohya.safetensors"
# kohya names in the original (LDM) layout; no peft file: ComfyUI 0.3.64 skips the attention
# layers of a peft SD1 LoRA ("lora key not loaded"), where comfyd applies them (README).
LORA_ORIGINAL = "comfyd-parity-lora-original.safetensors"
EMBEDDING = "comfyd-parity-embedding"
UPSCALE_MODEL = upscale_cases.UPSCALE_MODEL
INPUT_IMAGE = "parity-input.png"

POSITIVE = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
NEGATIVE = "text, watermark"
LONG_PROMPT = ", ".join(
    f"a (very:1.1) detailed painting of a {w} in the style of an old master number {i}"
    for i, w in enumerate(["lighthouse", "forest", "river", "castle", "harbour", "meadow", "glacier"])
)

# Samplers whose noise is drawn per step (ancestral, SDE): the bar is 30 dB for these.
STOCHASTIC = {
    "euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "lcm",
}
SAMPLERS = [
    "euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu", "lcm", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = [
    "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta",
    "linear_quadratic", "kl_optimal",
]


def base() -> dict[str, Any]:
    """ComfyUI's default graph at 64x64 and 8 steps, on the parity checkpoint."""
    return {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 156680208700286, "steps": 8, "cfg": 7.5, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "parity", "images": ["8", 0]}},
    }


def with_sampler(sampler: str, scheduler: str, **inputs: Any) -> dict[str, Any]:
    w = base()
    w["3"]["inputs"].update(sampler_name=sampler, scheduler=scheduler, **inputs)
    return w


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for sampler in SAMPLERS:
        out[f"sampler_{sampler}"] = with_sampler(sampler, "normal")
    for scheduler in SCHEDULERS:
        out[f"scheduler_{scheduler}"] = with_sampler("euler", scheduler)
    # Schedulers that interact with a sampler's own rules (penultimate-sigma drop, SDE noise).
    out["karras_dpmpp_2m"] = with_sampler("dpmpp_2m", "karras", steps=10)
    out["karras_dpmpp_2m_sde"] = with_sampler("dpmpp_2m_sde", "karras", steps=10)
    out["exponential_dpmpp_sde"] = with_sampler("dpmpp_sde", "exponential")
    out["simple_uni_pc"] = with_sampler("uni_pc", "simple", steps=10)
    out["sgm_uniform_lcm"] = with_sampler("lcm", "sgm_uniform", steps=4, cfg=1.5)
    out["ddim_uniform_dpm_2"] = with_sampler("dpm_2", "ddim_uniform")
    out["cfg_1_euler"] = with_sampler("euler", "normal", cfg=1.0)  # uncond skipped
    out["denoise_0_6_heun"] = with_sampler("heun", "karras", denoise=0.6)  # empty latent, partial

    w = base()
    w["5"]["inputs"].update(width=96, height=64, batch_size=2)
    out["batch_2_wide"] = w

    w = with_sampler("euler_ancestral", "normal")
    w["5"]["inputs"]["batch_size"] = 3
    w["10"] = node("LatentFromBatch", samples=["5", 0], batch_index=1, length=2)
    w["3"]["inputs"]["latent_image"] = ["10", 0]
    out["latent_from_batch_ancestral"] = w

    w = base()
    w["10"] = node("RepeatLatentBatch", samples=["5", 0], amount=2)
    w["3"]["inputs"]["latent_image"] = ["10", 0]
    out["repeat_latent_batch"] = w

    # Text encoding.
    w = base()
    w["6"]["inputs"]["text"] = r"a (glass bottle:1.3) on ((a table)), [dusk], \(literal parens\), (sky:0.7)"
    out["prompt_weights"] = w
    w = base()
    w["6"]["inputs"]["text"] = LONG_PROMPT
    out["prompt_long"] = w
    w = base()
    w["6"]["inputs"]["text"] = f"a photo of embedding:{EMBEDDING} in a garden"
    out["prompt_embedding"] = w
    w = base()
    w["10"] = node("CLIPSetLastLayer", clip=["4", 1], stop_at_clip_layer=-2)
    w["6"]["inputs"]["clip"] = ["10", 0]
    w["7"]["inputs"]["clip"] = ["10", 0]
    out["clip_skip_2"] = w

    # Conditioning nodes.
    w = base()
    w["5"]["inputs"].update(width=128, height=96)
    w["10"] = node("CLIPTextEncode", text="a red moon", clip=["4", 1])
    w["11"] = node("ConditioningSetArea", conditioning=["10", 0], width=64, height=64, x=40, y=16, strength=1.2)
    w["12"] = node("ConditioningCombine", conditioning_1=["6", 0], conditioning_2=["11", 0])
    w["3"]["inputs"]["positive"] = ["12", 0]
    out["area_combine"] = w
    w = base()
    w["10"] = node("CLIPTextEncode", text="a stormy sea at night", clip=["4", 1])
    w["11"] = node("ConditioningAverage", conditioning_to=["6", 0], conditioning_from=["10", 0],
                   conditioning_to_strength=0.3)
    w["3"]["inputs"]["positive"] = ["11", 0]
    out["conditioning_average"] = w
    w = base()
    w["10"] = node("CLIPTextEncode", text="a stormy sea at night", clip=["4", 1])
    # The other prompt for the first, high-noise half: late steps barely move a random model.
    w["11"] = node("ConditioningSetTimestepRange", conditioning=["6", 0], start=0.5, end=1.0)
    w["12"] = node("ConditioningSetTimestepRange", conditioning=["10", 0], start=0.0, end=0.5)
    w["13"] = node("ConditioningCombine", conditioning_1=["11", 0], conditioning_2=["12", 0])
    w["3"]["inputs"]["positive"] = ["13", 0]
    out["timestep_range"] = w
    w = base()
    w["10"] = node("ConditioningZeroOut", conditioning=["7", 0])
    w["3"]["inputs"]["negative"] = ["10", 0]
    out["zero_out_negative"] = w
    w = base()
    w["10"] = node("CLIPTextEncode", text=LONG_PROMPT, clip=["4", 1])
    w["11"] = node("ConditioningConcat", conditioning_to=["6", 0], conditioning_from=["10", 0])
    w["3"]["inputs"]["positive"] = ["11", 0]
    out["conditioning_concat"] = w

    # Two-stage sampling.
    w = base()
    w["3"] = node("KSamplerAdvanced", model=["4", 0], add_noise="enable", noise_seed=7, steps=10, cfg=7.0,
                  sampler_name="dpmpp_2m", scheduler="karras", positive=["6", 0], negative=["7", 0],
                  latent_image=["5", 0], start_at_step=0, end_at_step=6, return_with_leftover_noise="enable")
    w["10"] = node("KSamplerAdvanced", model=["4", 0], add_noise="disable", noise_seed=7, steps=10, cfg=7.0,
                   sampler_name="euler", scheduler="karras", positive=["6", 0], negative=["7", 0],
                   latent_image=["3", 0], start_at_step=6, end_at_step=10000,
                   return_with_leftover_noise="disable")
    w["8"]["inputs"]["samples"] = ["10", 0]
    out["advanced_two_stage"] = w
    for method in ("nearest-exact", "bilinear", "area", "bicubic", "bislerp"):
        w = base()
        w["10"] = node("LatentUpscale", samples=["3", 0], upscale_method=method, width=96, height=80, crop="disabled")
        w["11"] = node("KSampler", seed=3, steps=6, cfg=7.5, sampler_name="euler_ancestral", scheduler="normal",
                       denoise=0.5, model=["4", 0], positive=["6", 0], negative=["7", 0], latent_image=["10", 0])
        w["8"]["inputs"]["samples"] = ["11", 0]
        out[f"hires_{method.replace('-', '_')}"] = w
    w = base()
    w["10"] = node("LatentUpscale", samples=["3", 0], upscale_method="bilinear", width=96, height=64, crop="center")
    w["8"]["inputs"]["samples"] = ["10", 0]
    out["latent_upscale_center_crop"] = w
    w = base()
    w["10"] = node("LatentUpscaleBy", samples=["3", 0], upscale_method="bicubic", scale_by=1.5)
    w["8"]["inputs"]["samples"] = ["10", 0]
    out["latent_upscale_by"] = w

    # Image in: img2img, masks, inpainting.
    def image_in(w: dict[str, Any]) -> dict[str, Any]:
        w["20"] = node("LoadImage", image=INPUT_IMAGE)
        w["21"] = node("VAEEncode", pixels=["20", 0], vae=["4", 2])
        return w

    w = image_in(with_sampler("dpmpp_2m", "karras", denoise=0.55, steps=10))
    w["3"]["inputs"]["latent_image"] = ["21", 0]
    out["img2img"] = w
    w = image_in(with_sampler("euler", "normal", denoise=0.8))
    w["22"] = node("SetLatentNoiseMask", samples=["21", 0], mask=["20", 1])
    w["3"]["inputs"]["latent_image"] = ["22", 0]
    out["noise_mask"] = w
    w = base()
    w["20"] = node("LoadImage", image=INPUT_IMAGE)
    w["21"] = node("VAEEncodeForInpaint", pixels=["20", 0], vae=["4", 2], mask=["20", 1], grow_mask_by=6)
    w["3"]["inputs"]["latent_image"] = ["21", 0]
    out["encode_for_inpaint"] = w

    # Image nodes after decoding.
    w = base()
    w["10"] = node("ImageScale", image=["8", 0], upscale_method="bicubic", width=100, height=72, crop="center")
    w["11"] = node("ImageInvert", image=["10", 0])
    w["9"]["inputs"]["images"] = ["11", 0]
    out["image_scale_invert"] = w
    for method in ("nearest-exact", "bilinear", "area", "lanczos"):
        w = base()
        w["10"] = node("ImageScaleBy", image=["8", 0], upscale_method=method, scale_by=1.3)
        w["9"]["inputs"]["images"] = ["10", 0]
        out[f"image_scale_by_{method.replace('-', '_')}"] = w

    # LoRAs.
    w = base()
    w["10"] = node("LoraLoader", model=["4", 0], clip=["4", 1], lora_name=LORA_KOHYA,
                   strength_model=0.8, strength_clip=0.6)
    w["3"]["inputs"]["model"] = ["10", 0]
    w["6"]["inputs"]["clip"] = ["10", 1]
    w["7"]["inputs"]["clip"] = ["10", 1]
    out["lora_kohya"] = w
    w = base()
    w["10"] = node("LoraLoaderModelOnly", model=["4", 0], lora_name=LORA_ORIGINAL, strength_model=1.0)
    w["3"]["inputs"]["model"] = ["10", 0]
    out["lora_original_names_model_only"] = w
    # LoCon, LoHa, LoKr, DoRA, diff and set_weight files (lora_cases.py).
    out.update(lora_cases.cases(base))

    # Image, mask, latent, value and animated-output nodes (image_cases.py).
    out.update(image_cases.cases(base))
    out.update(sampling_cases(base, with_sampler))
    # Upscale models, ImageScaleToTotalPixels and the hires fix through a model (upscale_cases.py).
    out.update(upscale_cases.cases(base))
    # ControlNet loaders and apply nodes, chained and with start/end percent (controlnet_cases.py).
    out.update(controlnet_cases.cases(base))
    # Model patches and merges (patch_cases.py).
    out.update(patch_cases.cases(base))
    return {name: copy.deepcopy(w) for name, w in out.items()}


def threshold_db(case: dict[str, Any]) -> float:
    """The issue's bar: 40 dB, or 30 dB when any sampler in the graph draws noise per step."""
    from comfyd.sampling.samplers import STOCHASTIC as ALL_STOCHASTIC

    return 30.0 if is_stochastic_graph(case, STOCHASTIC | ALL_STOCHASTIC) else 40.0


def write_input_image(path: Path) -> None:
    """A 70x66 RGBA picture (not a multiple of 8, to exercise VAEEncode's crop) with a soft alpha hole."""
    h, w = 66, 70
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(1234)
    rgb = np.stack([
        128 + 100 * np.sin(x / 9.0) * np.cos(y / 13.0),
        255 * x / w,
        255 * (1 - y / h),
    ], axis=-1) + rng.normal(0, 12, (h, w, 3))
    alpha = np.where(((x - 40) ** 2 + (y - 30) ** 2) < 15**2, 0.0, 255.0)
    pixels = np.concatenate([np.clip(rgb, 0, 255), alpha[..., None]], axis=-1).round().astype(np.uint8)
    # No text chunks, no timestamp: the same bytes on every run.
    Image.fromarray(pixels, "RGBA").save(path, pnginfo=PngInfo(), optimize=False)


def write_models(models: Path) -> None:
    """The parity checkpoint, its two LoRAs, the embedding, an upscale model and the second
    checkpoint the merge cases use, in a ComfyUI models layout."""
    from comfyd.models.tiny import make_tiny_embedding, make_tiny_lora, write_random_checkpoint
    from comfyd.models.tiny_upscale import write_tiny_esrgan

    checkpoint = models / "checkpoints" / CHECKPOINT
    if not checkpoint.exists():
        write_random_checkpoint(checkpoint, "sd1", size="parity")
    make_tiny_lora(models / "loras", checkpoint, "kohya", name=LORA_KOHYA, seed=1)
    make_tiny_lora(models / "loras", checkpoint, "kohya", name=LORA_ORIGINAL, seed=2, unet_names="original",
                   text_encoders=False)
    lora_cases.write_models(models, checkpoint)
    make_tiny_embedding(models / "embeddings", EMBEDDING, "sd1", vectors=3, width=768, seed=3)
    write_tiny_esrgan(models / "upscale_models" / UPSCALE_MODEL, scale=2, num_filters=16, num_blocks=1, seed=4)
    controlnet_cases.write_models(models, checkpoint)
    second = models / "checkpoints" / patch_cases.SECOND_CHECKPOINT
    if not second.exists():
        patch_cases.write_second_checkpoint(checkpoint, second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="also write the model files here")
    args = parser.parse_args()
    workflows = HERE / "workflows"
    workflows.mkdir(exist_ok=True)
    for old in workflows.glob("*.json"):
        old.unlink()
    for name, workflow in cases().items():
        (workflows / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
    (HERE / "inputs").mkdir(exist_ok=True)
    write_input_image(HERE / "inputs" / INPUT_IMAGE)
    if args.models is not None:
        write_models(args.models)


if __name__ == "__main__":
    main()
