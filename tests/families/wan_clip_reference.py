"""diffusers' WanImageToVideoPipeline with the CLIP-vision path, on comfyd's tiny img_emb I2V files:
the reference tests/families/test_wan_clip.py and bench/wan_diffusers_parity.py --clip hold
comfyd to. The transformer is diffusers' own WanTransformer3DModel (its attention processors and
image embedder, not comfyd's) with the file's weights; the CLIP features are the ones comfyd's
tower computes from the start image (both sides get the same features); prompts, VAE, sigmas and
noise as in wan_reference.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from comfyd.models import families
from comfyd.models.devices import compute_plan
from comfyd.models.families import _wan_tiny, _wan_tiny_clip
from comfyd.models.tensorfile import TensorFile
from tests.families import wan_reference
from tests.families.wan_reference import FRAMES, SIZE

WORKFLOW = Path(__file__).resolve().parents[2] / "comfyd" / "workflows" / "wan21_i2v_clip_api.json"
FLF_WORKFLOW = WORKFLOW.with_name("wan21_flf2v_api.json")
PLAN = compute_plan("cpu", "fp32")


def load_network(path: Path) -> Any:
    with TensorFile(path) as tf:
        net, _ = families.get("wan").load_diffusion_model(tf, "", PLAN, "default")
    return net


def stock_transformer(net: Any) -> Any:
    """diffusers' own transformer (its processors, its image embedder) with the same weights."""
    from diffusers import WanTransformer3DModel

    stock = WanTransformer3DModel.from_config(net.transformer.config)
    stock.load_state_dict(net.transformer.state_dict())
    return stock.eval()


def tiny_clip_workflow(
    image: str, end: str | None = None, steps: int = 2, cfg: float = 6.0, seed: int = 7
) -> dict[str, Any]:
    """The canonical Wan 2.1 I2V workflow on the tiny files at 9 frames of 64x64, euler, a lossless
    WEBP of the same frames beside the mp4; with `end`, the first/last-frame one
    (wan21_flf2v_api.json: WanFirstLastFrameToVideo, both images through CLIPVisionEncode)."""
    graph = json.loads((WORKFLOW if end is None else FLF_WORKFLOW).read_text())
    names = {k: Path(v).name for k, v in {**_wan_tiny.NAMES, **_wan_tiny_clip.NAMES}.items()}
    graph["37"]["inputs"]["unet_name"] = names["i2v_clip"]
    graph["38"]["inputs"]["clip_name"] = names["umt5xxl"]
    graph["39"]["inputs"]["vae_name"] = names["vae"]
    graph["49"]["inputs"]["clip_name"] = names["clip_vision"]
    graph["52"]["inputs"]["image"] = image
    if end is not None:
        graph["55"]["inputs"]["image"] = end
    graph["50"]["inputs"].update(width=SIZE, height=SIZE, length=FRAMES)
    graph["3"]["inputs"].update(steps=steps, cfg=cfg, seed=seed, sampler_name="euler")
    graph["28"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "filename_prefix": "frames", "fps": 16.0, "lossless": True, "quality": 90, "method": "default",
        "images": ["8", 0]}}  # fmt: skip
    return graph


def _features(models: Path, image: Image.Image) -> torch.Tensor:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=models, home=models.parent / "home"))
    tower = manager.load_clip_vision(Path(_wan_tiny_clip.NAMES["clip_vision"]).name)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
    return tower.encode_image(pixels, crop=False).penultimate_hidden_states


def reference_clip_i2v(models: Path, graph: dict[str, Any], start: Image.Image) -> np.ndarray:
    """WanImageToVideoPipeline (diffusers' own transformer) given the start image and the CLIP
    features comfyd's tower computed from it."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts = wan_reference._parts(models, graph, "i2v")  # text encoder, VAE, scheduler
    parts["transformer"] = stock_transformer(load_network(models / _wan_tiny_clip.NAMES["i2v_clip"]))
    with torch.no_grad():
        positive, negative = WanPipeline(**parts).encode_prompt(
            **wan_reference._prompts(graph), do_classifier_free_guidance=True, max_sequence_length=512, device="cpu"
        )
    features = _features(models, start)
    pipe = WanImageToVideoPipeline(**parts, image_encoder=None, image_processor=None)
    pipe.encode_image = lambda images, device: features.to(device)  # the image goes to the VAE too
    extra = {"prompt_embeds": positive, "negative_prompt_embeds": negative}
    return wan_reference._run(pipe, graph, graph["50"]["inputs"], image=start, **extra)
