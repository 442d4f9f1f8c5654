"""diffusers' WanPipeline and WanImageToVideoPipeline on comfyd's tiny Wan files: the references
the Wan tests hold comfyd to.

ComfyUI cannot be the reference here: it builds UMT5-XXL from a fixed full-size config
(umt5_config_xxl.json, ~5.7B parameters, ~23 GB in fp32), which a tiny test file cannot satisfy
(tests/fidelity/README.md). The pipeline gets the same weights (each module loaded from the same
files, in ComfyUI's layout), tokenizes (sentencepiece on the model the text-encoder file carries,
behind the tokenizer call WanPipeline makes) and encodes the prompts itself (512 tokens, the part after the end
token zeroed), computes its own sigmas (FlowMatchEulerDiscreteScheduler with shift 8, at the
unshifted points ComfyUI's `simple` scheduler picks) and starts from the same initial noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comfyd.models import families, loader, standalone
from comfyd.models.devices import compute_plan
from comfyd.models.families import _wan_tiny
from comfyd.models.tensorfile import TensorFile
from comfyd.sampling.noise import initial_noise
from tests.families.pictures import psnr  # noqa: F401  (tests import it from here)

SIZE = 64
FRAMES = 9
WORKFLOW = Path(__file__).resolve().parents[2] / "comfyd" / "workflows" / "wan_t2v_api.json"
I2V_WORKFLOW = WORKFLOW.with_name("wan_i2v_api.json")
SHIFT_NODE = {"t2v": "48", "i2v": "54"}  # the ModelSamplingSD3 node of each workflow


def tiny_workflow(steps: int = 2, cfg: float = 6.0, seed: int = 7) -> dict[str, Any]:
    """The canonical Wan T2V workflow on the tiny files, 9 frames of 64x64, euler."""
    graph = json.loads(WORKFLOW.read_text())
    names = {k: Path(v).name for k, v in _wan_tiny.NAMES.items()}
    graph["37"]["inputs"]["unet_name"] = names["t2v"]
    graph["38"]["inputs"]["clip_name"] = names["umt5xxl"]
    graph["39"]["inputs"]["vae_name"] = names["vae"]
    graph["40"]["inputs"].update(width=SIZE, height=SIZE, length=FRAMES)
    graph["3"]["inputs"].update(steps=steps, cfg=cfg, seed=seed, sampler_name="euler")
    graph["28"]["inputs"].update(lossless=True)
    return graph


def tiny_i2v_workflow(image: str, steps: int = 2, cfg: float = 6.0, seed: int = 7) -> dict[str, Any]:
    """The canonical Wan I2V workflow on the tiny files, 9 frames of 64x64 from `image`, euler."""
    graph = json.loads(I2V_WORKFLOW.read_text())
    names = {k: Path(v).name for k, v in _wan_tiny.NAMES.items()}
    graph["37"]["inputs"]["unet_name"] = names["i2v"]
    graph["38"]["inputs"]["clip_name"] = names["umt5xxl"]
    graph["39"]["inputs"]["vae_name"] = names["vae"]
    graph["52"]["inputs"]["image"] = image
    graph["50"]["inputs"].update(width=SIZE, height=SIZE, length=FRAMES)
    graph["3"]["inputs"].update(steps=steps, cfg=cfg, seed=seed, sampler_name="euler")
    graph["28"]["inputs"].update(lossless=True)
    return graph


class _SentencePieceTokenizer:
    """The slice of a transformers tokenizer WanPipeline calls, on the file's SentencePiece model
    (sentencepiece itself: pieces, then the end token, pads of 0 to max_length, the mask)."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)

    def __call__(self, prompts: list[str], max_length: int, **_: Any) -> Any:
        from types import SimpleNamespace

        rows = [(self.sp.encode(p) + [1])[:max_length] for p in prompts]
        ids = torch.tensor([r + [0] * (max_length - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (max_length - len(r)) for r in rows])
        return SimpleNamespace(input_ids=ids, attention_mask=mask)


def _tokenizer(root: Path) -> _SentencePieceTokenizer:
    with TensorFile(root / _wan_tiny.NAMES["umt5xxl"]) as tf:
        return _SentencePieceTokenizer(tf.get("spiece_model").numpy().tobytes())


def simple_unshifted(steps: int, table: int = 1000) -> list[float]:
    """The table points ComfyUI's `simple` scheduler takes, before the time shift."""
    stride = table / steps
    return [(table - int(x * stride)) / table for x in range(steps)]


def _parts(root: Path, graph: dict[str, Any], unet: str) -> dict[str, Any]:
    """The pipeline modules on the tiny files, and a scheduler at ComfyUI's `simple` points."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    plan = compute_plan("cpu", "fp32")
    with TensorFile(root / _wan_tiny.NAMES[unet]) as tf:
        network, _ = families.get("wan").load_diffusion_model(tf, "", plan, "default")
    _, umt5, _ = standalone.load_text_encoder(root / _wan_tiny.NAMES["umt5xxl"], plan, False)
    vae = loader.load_vae_file(root / _wan_tiny.NAMES["vae"], plan)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=graph[SHIFT_NODE[unet]]["inputs"]["shift"])
    set_timesteps = scheduler.set_timesteps
    unshifted = simple_unshifted(int(graph["3"]["inputs"]["steps"]))
    scheduler.set_timesteps = lambda *a, device=None, **k: set_timesteps(sigmas=unshifted, device=device)
    return {
        "tokenizer": _tokenizer(root), "text_encoder": umt5, "transformer": network.transformer,
        "vae": vae, "scheduler": scheduler,
    }  # fmt: skip


def _prompts(graph: dict[str, Any]) -> dict[str, str]:
    return {"prompt": graph["6"]["inputs"]["text"], "negative_prompt": graph["7"]["inputs"]["text"]}


def _run(pipe: Any, graph: dict[str, Any], size: dict[str, Any], **extra: Any) -> np.ndarray:
    """[T, H, W, 3] uint8 frames, converted as ComfyUI's savers convert (x 255, clipped, truncated)."""
    sampler = graph["3"]["inputs"]
    shape = (1, 16, (size["length"] - 1) // 4 + 1, size["height"] // 8, size["width"] // 8)
    noise = initial_noise(torch.zeros(shape), int(sampler["seed"]))
    with torch.no_grad():
        frames = pipe(
            height=size["height"], width=size["width"], num_frames=size["length"],
            num_inference_steps=int(sampler["steps"]), guidance_scale=float(sampler["cfg"]),
            latents=noise, output_type="np", max_sequence_length=512, **extra,
        ).frames[0]  # fmt: skip
    return np.clip(255.0 * np.asarray(frames), 0, 255).astype(np.uint8)


def reference(root: Path, graph: dict[str, Any]) -> np.ndarray:
    """WanPipeline on the T2V workflow `graph` (tiny_workflow)."""
    from diffusers import WanPipeline

    return _run(WanPipeline(**_parts(root, graph, "t2v")), graph, graph["40"]["inputs"], **_prompts(graph))


def reference_i2v(root: Path, graph: dict[str, Any], start: Any) -> np.ndarray:
    """WanImageToVideoPipeline (no image encoder: the tiny I2V transformer has no CLIP-vision
    embedder) on the I2V workflow `graph` (tiny_i2v_workflow), with `start` the PIL start image."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts = _parts(root, graph, "i2v")
    # The prompts are encoded by WanPipeline's code, the same as the I2V pipeline's except that
    # this diffusers release's I2V prompt cleaning needs ftfy unconditionally.
    with torch.no_grad():
        positive, negative = WanPipeline(**parts).encode_prompt(
            **_prompts(graph), do_classifier_free_guidance=True, max_sequence_length=512, device="cpu"
        )
    embeds = {"prompt_embeds": positive, "negative_prompt_embeds": negative}
    return _run(WanImageToVideoPipeline(**parts), graph, graph["50"]["inputs"], image=start, **embeds)
