"""diffusers' ZImagePipeline on comfyd's tiny Z-Image files: the prompt-to-picture reference the
Z-Image tests hold comfyd to.

Why not ComfyUI: its 0.3.64 (the version comfyd's other families are held to) has no Z-Image,
and the later releases that do build Qwen3-4B from a fixed full-size config (4 billion parameters)
that neither a tiny test file nor this shared machine can satisfy (tests/fidelity/README.md).

The pipeline gets the same weights, each module built by diffusers / transformers itself: the
transformer as diffusers' `ZImageTransformer2DModel` loaded through diffusers' own single-file
converter (`convert_z_image_transformer_checkpoint_to_diffusers`, so comfyd's key map is checked
against diffusers' own), the text encoder as transformers' `Qwen3Model`, the VAE as diffusers'
`AutoencoderKL` with Flux's scale and shift. It tokenizes (through its chat template) and encodes
the prompt itself, samples with FlowMatchEulerDiscreteScheduler at shift 3 from the times
ComfyUI's `simple` scheduler picks, and starts from the same initial noise. The workflow's cfg 1
is the pipeline's guidance 0 (Turbo's setting); above 1 the negative is ConditioningZeroOut's
zeros, as in the template, at guidance cfg - 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from comfyd.models import qwen25_encoder
from comfyd.models.families import _z_image_tiny
from comfyd.sampling.noise import initial_noise
from tests.families.pictures import psnr  # noqa: F401  (tests import it from here)

WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyd" / "workflows"
SIZE = 64
STEPS = 2
SHIFT = 3.0


class _ChatTokenizer:
    """The shipped Qwen2 tokenizer with Qwen3's chat template, as the pipeline calls it."""

    def __init__(self) -> None:
        self.tokenizer = qwen25_encoder.shipped_tokenizer()

    def apply_chat_template(self, messages: list[dict[str, str]], **_: Any) -> str:
        # Qwen3's template for one user turn, generation prompt on, thinking enabled (no think block).
        [message] = messages
        return f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n<|im_start|>assistant\n"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer(*args, **kwargs)


def _text_encoder(root: Path) -> Any:
    from transformers import Qwen3Config, Qwen3Model

    model = Qwen3Model(Qwen3Config(**_z_image_tiny.tiny_encoder_config())).eval()
    state = load_file(str(root / _z_image_tiny.NAMES["qwen3_4b"]))
    model.load_state_dict({k.removeprefix("model."): v.float() for k, v in state.items()}, strict=True)
    return model


def z_image_pipeline(root: Path) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    from comfyd.models.families.flux import FAMILY as FLUX
    from comfyd.models.keymap import apply_op, vae_translator

    transformer = ZImageTransformer2DModel(**_z_image_tiny.TINY_TRANSFORMER).eval()
    stored = load_file(str(root / _z_image_tiny.NAMES["transformer"]))
    converted = convert_z_image_transformer_checkpoint_to_diffusers({k: v.float() for k, v in stored.items()})
    transformer.load_state_dict(converted, strict=True)

    vae_config = _z_image_tiny.tiny_vae_config()
    vae = AutoencoderKL.from_config(
        dict(vae_config, scaling_factor=FLUX.latent.scale_factor, shift_factor=FLUX.latent.shift)
    ).eval()
    translator = vae_translator(vae_config, "")
    stored_vae = load_file(str(root / _z_image_tiny.NAMES["vae"]))
    state = {}
    for name in vae.state_dict():
        source = translator.source(name)
        assert source is not None, name
        state[name] = apply_op(stored_vae[source.key], source).reshape(vae.state_dict()[name].shape).float()
    vae.load_state_dict(state, strict=True)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT, use_dynamic_shifting=False)
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=_text_encoder(root), tokenizer=_ChatTokenizer(),
        transformer=transformer,
    )  # fmt: skip


def simple_timesteps(steps: int) -> list[float]:
    """The unshifted times of ComfyUI's `simple` schedule on a 1000-entry flow table."""
    return [(1000 - int(k * 1000 / steps)) / 1000 for k in range(steps)]


def render(root: Path, prompt: str, noise: torch.Tensor, steps: int, cfg: float = 1.0) -> np.ndarray:
    """[H, W, 3] uint8, converted as ComfyUI's SaveImage converts (x 255, clipped, truncated).

    `cfg` is KSampler's, with ConditioningZeroOut's negative (zeros shaped like the prompt's
    conditioning): diffusers' guidance `pos + s * (pos - neg)` is ComfyUI's `neg + cfg * (pos -
    neg)` at s = cfg - 1."""
    pipe = z_image_pipeline(root)
    _, _, height, width = noise.shape
    with torch.inference_mode():
        [positive], _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        image = pipe(
            prompt_embeds=[positive], negative_prompt_embeds=[torch.zeros_like(positive)],
            height=height * 8, width=width * 8, num_inference_steps=steps, sigmas=simple_timesteps(steps),
            guidance_scale=cfg - 1.0, latents=noise, output_type="np",
        ).images[0]  # fmt: skip
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)


def tiny_workflow(**changes: Any) -> dict[str, Any]:
    """The shipped Turbo workflow pointed at the tiny files, SIZE x SIZE, STEPS steps."""
    graph = json.loads((WORKFLOWS / "z_image_turbo_api.json").read_text())
    names = {k: Path(v).name for k, v in _z_image_tiny.NAMES.items()}
    for node in graph.values():
        inputs = node["inputs"]
        kind = node["class_type"]
        if kind == "UNETLoader":
            inputs["unet_name"] = names["transformer"]
        elif kind == "CLIPLoader":
            inputs["clip_name"] = names["qwen3_4b"]
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
    return render(root, graph["6"]["inputs"]["text"], noise, int(sampler["steps"]), float(sampler["cfg"]))
