"""comfyd's Lumina 2 workflow through `comfyd run` against diffusers' Lumina2Pipeline on the same tiny
files (`make-tiny --family lumina2`), prompt, sigmas and initial noise.

The pipeline's text path is ComfyUI's for an unweighted prompt: "<system prompt> <Prompt Start>
<prompt>" tokenized whole after the begin token, Gemma 2's second-to-last hidden state (its padding
to 256 tokens is masked, and Gemma is causal, so the real tokens see the same thing), the negative
prompt without a system prompt (so comfyd's negative is a plain CLIPTextEncode). Gemma 2 is the
module comfyd builds (ComfyUI's, without soft-capping). diffusers' own tokenizer is not used
(comfyd ships no Gemma tokenizer): a small adapter runs the file's SentencePiece model with
diffusers' padding. Its sigmas are ComfyUI's simple schedule on shift 6 (linspace(1, 1/N) shifted),
its step Euler's. Guidance: plain CFG (the pipeline's `cfg_normalization` normalises per latent
row, not ComfyUI's RenormCFG, so it is off, and comfyd's workflow has no RenormCFG).

    python bench/lumina2_diffusers_parity.py [--steps 4] [--cfg 4]

prints RESULT psnr_lumina2_vs_diffusers_db=... and max_diff=...
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image

SIZE, SEED = 64, 11
PROMPT = "a small red fox runs across a snowy field at dawn"


class SentencePieceAdapter:
    """What Lumina2Pipeline asks of its tokenizer, from the file's SentencePiece model."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto, add_bos=True, add_eos=False)

    def __call__(self, prompts: list[str], padding: str = "longest", max_length: int | None = None,
                 truncation: bool = False, return_tensors: str = "pt") -> Any:  # fmt: skip
        ids = [self.sp.encode(p) for p in prompts]
        length = max_length if padding == "max_length" and max_length else max(len(i) for i in ids)
        ids = [i[:length] for i in ids] if truncation else ids
        mask = [[1] * len(i) + [0] * (length - len(i)) for i in ids]
        padded = [i + [0] * (length - len(i)) for i in ids]
        return SimpleNamespace(input_ids=torch.tensor(padded), attention_mask=torch.tensor(mask))

    def batch_decode(self, ids: Any) -> list[str]:
        return [self.sp.decode([int(t) for t in row]) for row in ids]


def comfyd_render(root: Path, work: Path, steps: int, cfg: float) -> np.ndarray:
    from comfyd.cli import main
    from comfyd.models.families import _lumina2_tiny

    names = {k: Path(v).name for k, v in _lumina2_tiny.NAMES.items()}
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": names["transformer"], "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": names["gemma2_2b"], "type": "lumina2"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": names["vae"]}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 6.0, "model": ["1", 0]}},
        "5": {"class_type": "CLIPTextEncodeLumina2",
              "inputs": {"system_prompt": "superior", "user_prompt": PROMPT, "clip": ["2", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["2", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "8": {"class_type": "KSampler", "inputs": {"seed": SEED, "steps": steps, "cfg": cfg, "sampler_name": "euler",
              "scheduler": "simple", "denoise": 1.0, "model": ["4", 0], "positive": ["5", 0],
              "negative": ["6", 0], "latent_image": ["7", 0]}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "lumina2", "images": ["9", 0]}},
    }  # fmt: skip
    path = work / "workflow.json"
    path.write_text(json.dumps(graph))
    out = work / "out"
    assert main(["run", str(path), "--models-dir", str(root), "--output-dir", str(out), "-q"]) == 0
    return np.asarray(Image.open(next(out.glob("*.png"))).convert("RGB"))


def diffusers_render(root: Path, steps: int, cfg: float) -> np.ndarray:
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline

    from comfyd.models import families, loader, standalone
    from comfyd.models.devices import compute_plan
    from comfyd.models.families import _lumina2_tiny
    from comfyd.models.tensorfile import TensorFile
    from comfyd.sampling.noise import initial_noise

    plan = compute_plan("cpu", "fp32")
    family = families.get("lumina2")
    with TensorFile(root / _lumina2_tiny.NAMES["transformer"]) as tf:
        network, _ = family.load_diffusion_model(tf, "", plan, "default")
    _, gemma, _ = standalone.load_text_encoder(root / _lumina2_tiny.NAMES["gemma2_2b"], plan, False)
    vae = loader.load_vae_file(root / _lumina2_tiny.NAMES["vae"], plan)
    vae.register_to_config(scaling_factor=family.latent.scale_factor, shift_factor=family.latent.shift)
    pipe = Lumina2Pipeline(
        transformer=network.transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=6.0),
        vae=vae, text_encoder=gemma, tokenizer=SentencePieceAdapter(gemma.comfyd_spiece_model),
    )  # fmt: skip
    noise = initial_noise(torch.zeros(1, 16, SIZE // 8, SIZE // 8), SEED)
    with torch.inference_mode():
        image = pipe(
            PROMPT, negative_prompt="", height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=cfg,
            latents=noise, cfg_normalization=False, output_type="np",
        ).images[0]  # fmt: skip
    return np.clip(255.0 * image, 0, 255).astype(np.uint8)  # SaveImage truncates


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg", type=float, default=4.0)
    args = parser.parse_args()
    from comfyd.models.tiny import make_tiny

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "models"
        make_tiny(root, family="lumina2")
        ours = comfyd_render(root, work, args.steps, args.cfg).astype(np.float64)
        theirs = diffusers_render(root, args.steps, args.cfg).astype(np.float64)
    mse = float(np.mean((ours - theirs) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(f"RESULT psnr_lumina2_vs_diffusers_db={psnr:.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
