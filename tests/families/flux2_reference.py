"""diffusers' Flux2Pipeline on comfyd's tiny Flux.2 files: the reference the Flux.2 tests hold
comfyd to.

ComfyUI cannot be the reference here: 0.3.64 (the ComfyUI this project renders with) has no
Flux.2 at all (tests/fidelity/README.md). Flux.2's text encoder (Mistral Small 3.x) is not
supported yet, so the graph encodes its prompt with a tiny UMT5 stand-in (CLIPLoader type wan) and
the pipeline gets that very conditioning as `prompt_embeds`, padded with zeros in front to 512
tokens as ComfyUI's Flux2 model pads it. Everything after the prompt is compared: the
transformer (same weights, loaded from the same BFL-layout file), the sigmas (the pipeline's
FlowMatchEulerDiscreteScheduler with Flux.2's empirical mu against Flux2Scheduler), the guidance
embedding, the latent batch norm, the patches and the VAE decoder, from the same initial noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from comfyd.models import families, loader
from comfyd.models.devices import compute_plan
from comfyd.models.families import _flux2_tiny
from comfyd.models.families._flux2_transformer import pad_context
from comfyd.models.tensorfile import TensorFile
from comfyd.sampling.noise import initial_noise

SIZE = 64
STEPS = 2
SEED = 42
GUIDANCE = 4.0
PROMPT = "a small red fox runs across a snowy field at dawn"


def tiny_workflow(variant: str = "dev", **inputs: Any) -> dict[str, Any]:
    """The Flux.2 template's graph on the tiny files (the stand-in text encoder, see above)."""
    names = {k: Path(v).name for k, v in _flux2_tiny.NAMES.items()}
    graph: dict[str, Any] = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": names[variant], "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": names["standin_text_encoder"], "type": "wan",
                                                      "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"guidance": GUIDANCE, "conditioning": ["4", 0]}},
        "6": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["5", 0]}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "9": {"class_type": "Flux2Scheduler", "inputs": {"steps": STEPS, "width": SIZE, "height": SIZE}},
        "10": {"class_type": "EmptyFlux2LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": ["6", 0], "sampler": ["8", 0], "sigmas": ["9", 0], "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["3", 0]}},
        "13": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux2", "images": ["12", 0]}},
    }  # fmt: skip
    for node, changes in inputs.items():
        graph[node]["inputs"].update(changes)
    return graph


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def standin_context(root: Path, prompt: str = PROMPT) -> torch.Tensor:
    """The stand-in encoder's conditioning of `prompt`, as comfyd's CLIPTextEncode computes it."""
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=root, output_dir=root / "out", temp_dir=root / "temp",
                                    input_dir=root / "in", device="cpu"))  # fmt: skip
    clip = manager.load_clip([Path(_flux2_tiny.NAMES["standin_text_encoder"]).name], "wan")
    return encode_text(clip, prompt)[0][0].float()


def flux2_pipeline(root: Path, variant: str) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2Pipeline

    plan = compute_plan("cpu", "fp32")
    with TensorFile(root / _flux2_tiny.NAMES[variant]) as tf:
        network, _ = families.get("flux2").load_diffusion_model(tf, "", plan, "default")
    vae = loader.load_vae_file(root / _flux2_tiny.NAMES["vae"], plan)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)  # mu comes from the pipeline
    return Flux2Pipeline(scheduler=scheduler, vae=vae.vae, text_encoder=None, tokenizer=None,
                         transformer=network.transformer)  # fmt: skip


def reference(root: Path, variant: str = "dev", steps: int = STEPS, seed: int = SEED) -> np.ndarray:
    """[H, W, 3] uint8 of the pipeline, converted as ComfyUI's SaveImage converts."""
    pipe = flux2_pipeline(root, variant)
    noise = initial_noise(torch.zeros(1, 128, SIZE // 16, SIZE // 16), seed)
    context = pad_context(standin_context(root))
    with torch.inference_mode():
        image = pipe(
            prompt_embeds=context, height=SIZE, width=SIZE, num_inference_steps=steps,
            guidance_scale=GUIDANCE, latents=noise, output_type="np",
        ).images[0]  # fmt: skip
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)
