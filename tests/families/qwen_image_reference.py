"""diffusers' QwenImagePipeline on comfyd's tiny Qwen-Image files: the prompt-to-picture reference
the Qwen-Image tests hold comfyd to.

ComfyUI cannot be the reference for the whole path here: it builds Qwen2.5-VL-7B from a fixed
full-size config (~30 GB in fp32), which a tiny test file cannot satisfy (tests/fidelity/README.md;
bench/qwen_image_comfyui_parity.py holds the transformer + sampler + VAE path and, on a tiny
config, the text path to ComfyUI's own modules). diffusers' text path is ComfyUI's: the same chat
template, the same 34 leading tokens dropped, the last hidden state after the final norm.

The pipeline gets the same weights, each module built by diffusers / transformers itself: the
transformer as diffusers' `QwenImageTransformer2DModel` with its own rotary table (the 64x64 test
image has an even patch grid, where diffusers' positions equal ComfyUI's), the text encoder as
transformers' full `Qwen2_5_VLForConditionalGeneration` (its language model from the file, a
random one-block vision tower that a text prompt never reaches), the VAE as diffusers'
`AutoencoderKLQwenImage`. It tokenizes and encodes the prompt itself, samples with
FlowMatchEulerDiscreteScheduler at shift 3.1 from the timesteps ComfyUI's `simple` scheduler
picks, and starts from the same initial noise. cfg 1: diffusers' true CFG rescales the combined
prediction by a norm (like ComfyUI's CFGNorm, not its KSampler), so no negative prompt here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from comfyd.models import qwen25_encoder
from comfyd.models.families import _qwen_image_tiny
from comfyd.sampling.noise import initial_noise
from tests.families.pictures import psnr  # noqa: F401  (tests import it from here)

WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyd" / "workflows"
SIZE = 64
STEPS = 2
SHIFT = 3.1


def _text_encoder(root: Path) -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = _qwen_image_tiny.tiny_encoder_config()
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": text["hidden_size"],
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "fullatt_block_indexes": [0]}  # fmt: skip
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    state = load_file(str(root / _qwen_image_tiny.NAMES["qwen25_7b"]))
    language = {k.removeprefix("model."): v.float() for k, v in state.items() if k.startswith("model.")}
    model.model.language_model.load_state_dict(language, strict=True)
    return model


def qwen_pipeline(root: Path) -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    transformer = QwenImageTransformer2DModel(**_qwen_image_tiny.TINY_TRANSFORMER).eval()
    state = load_file(str(root / _qwen_image_tiny.NAMES["transformer"]))
    transformer.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)

    from comfyd.models.families import _wan_vae

    vae = AutoencoderKLQwenImage(base_dim=_qwen_image_tiny.TINY_VAE["base_dim"], z_dim=16).eval()
    stored = load_file(str(root / _qwen_image_tiny.NAMES["vae"]))
    names = _wan_vae.diffusers_names(list(stored))
    vae.load_state_dict({ours: stored[theirs].float() for ours, theirs in names.items()}, strict=True)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)
    return QwenImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=_text_encoder(root),
        tokenizer=qwen25_encoder.shipped_tokenizer(), transformer=transformer,
    )  # fmt: skip


def simple_timesteps(steps: int) -> list[float]:
    """The unshifted times of ComfyUI's `simple` schedule on a 1000-entry flow table."""
    return [(1000 - int(k * 1000 / steps)) / 1000 for k in range(steps)]


def render(root: Path, prompt: str, noise: torch.Tensor, steps: int) -> np.ndarray:
    """[H, W, 3] uint8, converted as ComfyUI's SaveImage converts (x 255, clipped, truncated)."""
    from diffusers import QwenImagePipeline

    pipe = qwen_pipeline(root)
    batch, channels, height, width = noise.shape
    latents = QwenImagePipeline._pack_latents(noise, batch, channels, height, width)
    with torch.inference_mode():
        image = pipe(
            prompt=prompt, height=height * 8, width=width * 8, num_inference_steps=steps,
            sigmas=simple_timesteps(steps), true_cfg_scale=1.0, latents=latents, output_type="np",
        ).images[0]  # fmt: skip
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)


def tiny_workflow(**changes: Any) -> dict[str, Any]:
    """The shipped workflow pointed at the tiny files, SIZE x SIZE, STEPS steps."""
    graph = json.loads((WORKFLOWS / "qwen_image_api.json").read_text())
    names = {k: Path(v).name for k, v in _qwen_image_tiny.NAMES.items()}
    for node in graph.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "UNETLoader":
            inputs["unet_name"] = names["transformer"]
        elif kind == "CLIPLoader":
            inputs["clip_name"] = names["qwen25_7b"]
        elif kind == "VAELoader":
            inputs["vae_name"] = names["vae"]
        if "width" in inputs:
            inputs.update(width=SIZE, height=SIZE)
        if "steps" in inputs:
            inputs["steps"] = STEPS
        inputs.update(changes.get(kind, {}))
    return graph


def reference(root: Path, graph: dict[str, Any]) -> np.ndarray:
    sampler = graph["3"]["inputs"]
    noise = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), int(sampler["seed"]))
    return render(root, graph["6"]["inputs"]["text"], noise, int(sampler["steps"]))
