"""diffusers' FluxFillPipeline / FluxKontextPipeline on comfyd's tiny Flux files: the references
the Fill and Kontext tests hold comfyd to (tests/fidelity/README.md says why not ComfyUI), and the
canonical workflows pointed at the tiny files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from comfyd.models.families import _flux_tiny
from comfyd.models.families.flux import model_sampling_for
from comfyd.nodes.conditioning.reference_latent import FluxKontextImageScale
from comfyd.sampling.noise import initial_noise
from comfyd.sampling.sigmas import calculate_sigmas
from tests.families.flux_reference import SIZE, WORKFLOWS, flux_pipeline

STEPS = 2
NAMES = {k: Path(v).name for k, v in _flux_tiny.NAMES.items()}


def edit_graph(name: str, changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    graph = json.loads((WORKFLOWS / name).read_text())
    for node in graph.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "UNETLoader":
            inputs["unet_name"] = NAMES["fill" if "fill" in name else "dev"]
        elif kind == "DualCLIPLoader":
            inputs.update(clip_name1=NAMES["clip_l"], clip_name2=NAMES["t5xxl"])
        elif kind == "VAELoader":
            inputs["vae_name"] = NAMES["vae"]
        elif kind == "KSampler":
            inputs["steps"] = STEPS
        inputs.update(changes.get(kind, {}))
    return graph


def kontext_graph(picture: str) -> dict[str, Any]:
    """The Kontext workflow on `picture`: FluxKontextImageScale takes it to 1024x1024, and an
    ImageScale brings it back to SIZE so the tiny run stays tiny (diffusers gets those pixels)."""
    graph = edit_graph("flux_kontext_api.json", {"LoadImage": {"image": picture}})
    graph["43"] = {"class_type": "ImageScale", "inputs": {"image": ["42", 0], "upscale_method": "area",
                                                          "width": SIZE, "height": SIZE, "crop": "disabled"}}  # fmt: skip
    graph["124"]["inputs"]["pixels"] = ["43", 0]
    return graph


def sampler_inputs(graph: dict[str, Any]) -> tuple[torch.Tensor, list[float], str]:
    """The initial noise, sigmas and prompt comfyd's KSampler uses (the model's own shift 1.15)."""
    sampler = next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")
    prompt = next(n["inputs"]["text"] for n in graph.values() if n["class_type"] == "CLIPTextEncode" and n["inputs"]["text"])
    noise = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), int(sampler["seed"]))
    schedule = model_sampling_for(True).schedule
    sigmas = calculate_sigmas(schedule, sampler["scheduler"], int(sampler["steps"]))
    return noise, [float(s) for s in sigmas[:-1]], prompt


def encode_to_mode(vae: Any) -> None:
    """diffusers' Fill pipeline draws its masked-image latent from the VAE's distribution; ComfyUI
    (and comfyd) take the distribution's mode. Make the draw the mode, so both read one latent."""
    encode = vae.encode

    def mode_encode(*args: Any, **kwargs: Any) -> Any:
        out = encode(*args, **kwargs)
        dist = out.latent_dist
        dist.sample = lambda generator=None: dist.mode()
        return out

    vae.encode = mode_encode


def diffusers_render(pipe: Any, noise: torch.Tensor, **kwargs: Any) -> np.ndarray:
    latents = pipe._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8)
    with torch.inference_mode():
        image = pipe(height=SIZE, width=SIZE, latents=latents, max_sequence_length=256, output_type="np", **kwargs)
    return np.clip(255.0 * image.images[0], 0, 255).astype(np.uint8)


def kontext_reference(models: Path, graph: dict[str, Any], picture: Path) -> np.ndarray:
    """diffusers' FluxKontextPipeline on the pixels the Kontext graph gives its VAEEncode."""
    from diffusers import FluxKontextPipeline

    noise, sigmas, prompt = sampler_inputs(graph)
    pixels = torch.from_numpy(np.asarray(Image.open(picture).convert("RGB"), np.float32) / 255.0)
    (scaled,) = FluxKontextImageScale().run(None, pixels[None])  # type: ignore[arg-type]
    scaled = torch.nn.functional.interpolate(scaled.movedim(-1, 1), size=(SIZE, SIZE), mode="area")
    image = Image.fromarray(np.clip(255.0 * scaled[0].movedim(0, -1).numpy(), 0, 255).round().astype(np.uint8))
    pipe = flux_pipeline(models, "dev", FluxKontextPipeline, fixed_sigmas=True)
    return diffusers_render(pipe, noise, prompt=prompt, image=image, sigmas=sigmas, num_inference_steps=len(sigmas),
                            guidance_scale=2.5, max_area=SIZE * SIZE, _auto_resize=False)  # fmt: skip
