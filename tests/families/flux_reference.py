"""diffusers' FluxPipeline on comfyd's tiny Flux files: the reference the Flux tests hold comfyd to.

ComfyUI cannot be the reference here: it builds T5-XXL from a fixed full-size config (~19 GB in
fp32), which a tiny test file cannot satisfy (tests/fidelity/README.md). The pipeline gets the
same weights (each module loaded from the same files, in ComfyUI's layout), tokenizes and encodes
the prompt itself (T5 to 256 tokens, as ComfyUI pads Flux prompts), computes its own sigmas
(FlowMatchEulerDiscreteScheduler with Flux's dynamic shift for dev, none for schnell) and starts
from the same initial noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comfyd.models import families, loader, standalone, t5_encoder
from comfyd.models.devices import compute_plan
from comfyd.models.families import _flux_tiny
from comfyd.models.tensorfile import TensorFile
from comfyd.sampling.noise import initial_noise
from tests.families.pictures import psnr  # noqa: F401  (tests import it from here)

FLUX_SCHEDULER = {  # FLUX.1-dev's scheduler_config.json values
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}  # fmt: skip


def flux_pipeline(root: Path, variant: str, pipeline: Any = None, fixed_sigmas: bool = False):
    """diffusers' `pipeline` class (FluxPipeline by default) on the tiny files; `fixed_sigmas`:
    a scheduler that takes the caller's sigmas unshifted."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    plan = compute_plan("cpu", "fp32")
    family = families.get("flux")
    with TensorFile(root / _flux_tiny.NAMES[variant]) as tf:
        network, _ = family.load_diffusion_model(tf, "", plan, "default")
    _, clip, _ = standalone.load_text_encoder(root / _flux_tiny.NAMES["clip_l"], plan, False)
    _, t5, _ = standalone.load_text_encoder(root / _flux_tiny.NAMES["t5xxl"], plan, False)
    vae = loader.load_vae_file(root / _flux_tiny.NAMES["vae"], plan)
    vae.register_to_config(scaling_factor=family.latent.scale_factor, shift_factor=family.latent.shift)
    if fixed_sigmas:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    elif variant == "dev":
        scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return (pipeline or FluxPipeline)(
        scheduler=scheduler, vae=vae, text_encoder=clip,
        tokenizer=loader.load_clip_tokenizer({"pad_token": "<|endoftext|>"}),
        text_encoder_2=t5, tokenizer_2=t5_encoder.shipped_tokenizer(), transformer=network.transformer,
    )  # fmt: skip


def render(
    root: Path, variant: str, prompt: str, noise: torch.Tensor, steps: int, guidance: float = 3.5
) -> np.ndarray:
    """[H, W, 3] uint8, converted as ComfyUI's SaveImage converts (x 255, clipped, truncated)."""
    from diffusers import FluxPipeline

    pipe = flux_pipeline(root, variant)
    batch, channels, height, width = noise.shape
    latents = FluxPipeline._pack_latents(noise, batch, channels, height, width)
    with torch.inference_mode():
        image = pipe(
            prompt=prompt, height=height * 8, width=width * 8, num_inference_steps=steps,
            guidance_scale=guidance, latents=latents, max_sequence_length=t5_encoder.FLUX_MIN_LENGTH,
            output_type="np",
        ).images[0]  # fmt: skip
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)


WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyd" / "workflows"
SIZE = 64
STEPS = {"dev": 3, "schnell": 2}


def tiny_workflow(variant: str, **changes: Any) -> dict[str, Any]:
    """The shipped workflow pointed at the tiny files, SIZE x SIZE, STEPS[variant] steps."""
    graph = json.loads((WORKFLOWS / f"flux_{variant}_api.json").read_text())
    names = {k: Path(v).name for k, v in _flux_tiny.NAMES.items()}
    for node in graph.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "UNETLoader":
            inputs["unet_name"] = names[variant]
        elif kind == "DualCLIPLoader":
            inputs.update(clip_name1=names["t5xxl"], clip_name2=names["clip_l"])
        elif kind == "VAELoader":
            inputs["vae_name"] = names["vae"]
        if "width" in inputs:
            inputs.update(width=SIZE, height=SIZE)
        if "steps" in inputs:
            inputs["steps"] = STEPS[variant]
        inputs.update(changes.get(kind, {}))
    return graph


def seed_and_prompt(graph: dict[str, Any]) -> tuple[int, str]:
    seed = next(n["inputs"].get("noise_seed", n["inputs"].get("seed")) for n in graph.values()
                if n["class_type"] in ("RandomNoise", "KSampler"))
    return int(seed), graph["6"]["inputs"]["text"]


def reference(root: Path, variant: str, graph: dict[str, Any], guidance: float = 3.5) -> np.ndarray:
    seed, prompt = seed_and_prompt(graph)
    noise = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), seed)
    return render(root, variant, prompt, noise, STEPS[variant], guidance)
