"""Fidelity cases for the image-prompt nodes: CLIP vision, unCLIP and the T2I style model.

    python tests/fidelity/image_prompt_cases.py                 # rewrites image_prompt/workflows
    python tests/fidelity/image_prompt_cases.py --models DIR    # also writes the model files

ComfyUI builds CLIP vision towers and SD2 text encoders from fixed configs, so these cases need
full-size random towers: a ViT-L CLIP vision file (600 MB), an SD2.1 unCLIP-L parity checkpoint
(real-size OpenCLIP-H text encoder, VAE and ViT-L tower, a two-level UNet at 320/640 channels:
1.5 GB) and a T2I style adapter, besides make_cases' SD1 parity checkpoint. They live apart
from the other cases (image_prompt/: workflows, references, renders.json) and their test
(test_image_prompt_parity.py) runs only when asked (COMFYD_HEAVY_FIDELITY=1): writing and
reading 2.7 GB of random weights takes minutes on two cores, past the default suite's budget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "image_prompt"
SD1_CHECKPOINT = "comfyd-parity-sd1.safetensors"
UNCLIP_CHECKPOINT = "comfyd-parity-sd21-unclip-l.safetensors"
CLIP_VISION = "comfyd-parity-clip-vision-vit-l.safetensors"
STYLE_MODEL = "comfyd-parity-t2i-style.safetensors"
INPUT_IMAGE = "parity-input.png"  # tests/fidelity/inputs
POSITIVE = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
NEGATIVE = "text, watermark"


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _sampled(loader: dict[str, Any], positive: list[Any], steps: int, seed: int) -> dict[str, Any]:
    """Loader "4" (MODEL, CLIP, VAE first) -> prompts "6"/"7" -> KSampler "3" at 64x64 -> SaveImage."""
    return {
        "4": loader,
        "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "6": node("CLIPTextEncode", text=POSITIVE, clip=["4", 1]),
        "7": node("CLIPTextEncode", text=NEGATIVE, clip=["4", 1]),
        "3": node("KSampler", seed=seed, steps=steps, cfg=6.0, sampler_name="euler", scheduler="normal",
                  denoise=1.0, model=["4", 0], positive=positive, negative=["7", 0], latent_image=["5", 0]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="parity", images=["8", 0]),
    }  # fmt: skip


def cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    image = {"21": node("LoadImage", image=INPUT_IMAGE)}

    # unCLIP: the checkpoint's own tower encodes the picture (centre crop); one image embedding,
    # noised at level 0.1 with the sampler's seed.
    w = _sampled(node("unCLIPCheckpointLoader", ckpt_name=UNCLIP_CHECKPOINT), ["23", 0], steps=3, seed=7)
    w.update(image)
    w["22"] = node("CLIPVisionEncode", clip_vision=["4", 3], image=["21", 0], crop="center")
    w["23"] = node("unCLIPConditioning", conditioning=["6", 0], clip_vision_output=["22", 0],
                   strength=1.0, noise_augmentation=0.1)  # fmt: skip
    out["unclip_one_image"] = w

    # Two unCLIP items (the second squashed, not cropped): summed and noised again at the merge
    # level, the merge noise continuing the reseeded generator.
    w = _sampled(node("unCLIPCheckpointLoader", ckpt_name=UNCLIP_CHECKPOINT), ["25", 0], steps=3, seed=3)
    w.update(image)
    w["22"] = node("CLIPVisionEncode", clip_vision=["4", 3], image=["21", 0], crop="center")
    w["24"] = node("CLIPVisionEncode", clip_vision=["4", 3], image=["21", 0], crop="none")
    w["23"] = node("unCLIPConditioning", conditioning=["6", 0], clip_vision_output=["22", 0],
                   strength=0.8, noise_augmentation=0.0)  # fmt: skip
    w["25"] = node("unCLIPConditioning", conditioning=["23", 0], clip_vision_output=["24", 0],
                   strength=0.6, noise_augmentation=0.3)  # fmt: skip
    out["unclip_two_images"] = w

    # Style model on SD1: a standalone ViT-L file (transformers names), its tokens appended.
    for strength_type, strength in (("multiply", 0.7), ("attn_bias", 0.5)):
        w = _sampled(node("CheckpointLoaderSimple", ckpt_name=SD1_CHECKPOINT), ["26", 0], steps=3, seed=11)
        w.update(image)
        w["20"] = node("CLIPVisionLoader", clip_name=CLIP_VISION)
        w["22"] = node("CLIPVisionEncode", clip_vision=["20", 0], image=["21", 0], crop="none")
        w["25"] = node("StyleModelLoader", style_model_name=STYLE_MODEL)
        w["26"] = node("StyleModelApply", conditioning=["6", 0], style_model=["25", 0],
                       clip_vision_output=["22", 0], strength=strength, strength_type=strength_type)  # fmt: skip
        out[f"style_model_{strength_type}"] = w
    return out


def write_models(models: Path) -> None:
    """The four model files, in a ComfyUI models layout (existing files are kept)."""
    from comfyd.models.tiny import write_random_checkpoint
    from comfyd.models.tiny_vision import write_clip_vision, write_style_model, write_unclip_checkpoint

    targets = {
        models / "checkpoints" / SD1_CHECKPOINT: lambda p: write_random_checkpoint(p, "sd1", size="parity"),
        models / "checkpoints" / UNCLIP_CHECKPOINT: lambda p: write_unclip_checkpoint(p, seed=5, size="parity"),
        models / "clip_vision" / CLIP_VISION: lambda p: write_clip_vision(p, "vit-l", seed=6, layout="hf"),
        models / "style_models" / STYLE_MODEL: lambda p: write_style_model(p, seed=7),
    }
    for path, write in targets.items():
        if not path.exists():
            write(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="also write the model files here")
    args = parser.parse_args()
    workflows = CASES_DIR / "workflows"
    workflows.mkdir(parents=True, exist_ok=True)
    for old in workflows.glob("*.json"):
        old.unlink()
    for name, workflow in cases().items():
        (workflows / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
    if args.models is not None:
        write_models(args.models)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    main()
