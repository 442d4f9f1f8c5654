"""diffusers' StableDiffusion3Pipeline on comfyd's tiny SD3.5 files: the reference the SD3 tests
hold the whole prompt-to-picture path to.

ComfyUI cannot be the reference for the whole workflow here: it builds T5-XXL and CLIP-G from
fixed full-size configs, which tiny test files cannot satisfy (tests/fidelity/README.md;
bench/sd3_comfyui_parity.py holds the MMDiT, sampling and VAE to ComfyUI itself). The pipeline
gets the same weights (each module from the same files), tokenizes and encodes the prompt itself
(T5 to 77 tokens, as ComfyUI pads SD3 prompts), computes its own sigmas
(FlowMatchEulerDiscreteScheduler, shift 3: ComfyUI's `normal` scheduler on SD3's flow table) and
starts from the same initial noise. ComfyUI pools CLIP-L without its text projection, diffusers
with it: the tiny CLIP-L's projection is the identity, so both see the same vector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from comfyd.models import families, loader, t5_encoder
from comfyd.models.devices import compute_plan
from comfyd.models.families import _sd3_tiny
from comfyd.models.tensorfile import TensorFile
from comfyd.sampling.noise import initial_noise
from tests.families.pictures import psnr  # noqa: F401  (tests import it from here)

WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyd" / "workflows"
SIZE = 64
STEPS = 2
CFG = 4.5
NAMES = {k: Path(v).name for k, v in _sd3_tiny.NAMES.items()}


def _clip_with_projection(path: Path, config: dict[str, Any]) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config))
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    return model.eval()


def sd3_pipeline(root: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel

    plan = compute_plan("cpu", "fp32")
    family = families.get("sd3")
    with TensorFile(root / _sd3_tiny.NAMES["transformer"]) as tf:
        network, _ = family.load_diffusion_model(tf, "", plan, "default")
    clip_l_config, clip_g_config = _sd3_tiny.tiny_clip_configs()
    t5 = T5EncoderModel(T5Config(**_sd3_tiny.TINY_T5))
    t5_state = {k: v.float() for k, v in load_file(str(root / _sd3_tiny.NAMES["t5xxl"])).items()}
    t5.load_state_dict({**t5_state, "encoder.embed_tokens.weight": t5_state["shared.weight"]})
    vae = loader.load_vae_file(root / _sd3_tiny.NAMES["vae"], plan)
    vae.register_to_config(scaling_factor=family.latent.scale_factor, shift_factor=family.latent.shift)
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, transformer=network.transformer,
        text_encoder=_clip_with_projection(root / _sd3_tiny.NAMES["clip_l"], clip_l_config),
        tokenizer=loader.load_clip_tokenizer({"pad_token": "<|endoftext|>"}),
        text_encoder_2=_clip_with_projection(root / _sd3_tiny.NAMES["clip_g"], clip_g_config),
        tokenizer_2=loader.load_clip_tokenizer({"pad_token": "!"}),
        text_encoder_3=t5.eval(), tokenizer_3=t5_encoder.shipped_tokenizer(),
    )  # fmt: skip


def render(root: Path, prompt: str, negative: str, noise: torch.Tensor, steps: int, cfg: float) -> np.ndarray:
    """[H, W, 3] uint8, converted as ComfyUI's SaveImage converts (x 255, clipped, truncated)."""
    pipe = sd3_pipeline(root)
    height, width = noise.shape[-2:]
    with torch.inference_mode():
        image = pipe(
            prompt=prompt, negative_prompt=negative, height=height * 8, width=width * 8,
            num_inference_steps=steps, guidance_scale=cfg, latents=noise,
            max_sequence_length=families.get("sd3").encoder("t5xxl").min_length, output_type="np",
        ).images[0]  # fmt: skip
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)


def tiny_workflow(split: bool = False, **changes: Any) -> dict[str, Any]:
    """The shipped SD3.5 workflow on the tiny all-in-one checkpoint (or, `split`, on the split
    files: UNETLoader, TripleCLIPLoader, VAELoader), SIZE x SIZE, STEPS steps, cfg CFG, and the
    `normal` scheduler (the schedule diffusers' pipeline computes)."""
    graph = json.loads((WORKFLOWS / "sd3.5_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = NAMES["checkpoint"]
    graph["53"]["inputs"].update(width=SIZE, height=SIZE)
    graph["3"]["inputs"].update(steps=STEPS, cfg=CFG, scheduler="normal")
    if split:
        graph["4"] = {"class_type": "UNETLoader", "inputs": {"unet_name": NAMES["transformer"], "weight_dtype": "default"}}
        graph["41"] = {"class_type": "TripleCLIPLoader", "inputs": {
            "clip_name1": NAMES["clip_g"], "clip_name2": NAMES["clip_l"], "clip_name3": NAMES["t5xxl"]}}
        graph["42"] = {"class_type": "VAELoader", "inputs": {"vae_name": NAMES["vae"]}}
        for node in ("16", "40"):
            graph[node]["inputs"]["clip"] = ["41", 0]
        graph["8"]["inputs"]["vae"] = ["42", 0]
    for node in graph.values():
        node["inputs"].update(changes.get(node["class_type"], {}))
    return graph


def reference(root: Path, graph: dict[str, Any]) -> np.ndarray:
    sampler = graph["3"]["inputs"]
    noise = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), int(sampler["seed"]))
    prompt, negative = graph["16"]["inputs"]["text"], graph["40"]["inputs"]["text"]
    return render(root, prompt, negative, noise, int(sampler["steps"]), float(sampler["cfg"]))
