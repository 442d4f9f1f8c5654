"""Fidelity case for the T2I-Adapter: ControlNetLoader on a full SD1.x adapter, applied with
ControlNetApplyAdvanced, rendered by ComfyUI.

    python tests/fidelity/t2i_cases.py                 # rewrites t2i/workflows
    python tests/fidelity/t2i_cases.py --models DIR    # also writes the model files

An SD1.x adapter adds one residual at the end of each of the UNet's four levels, after the
second block of each (ComfyUI counts input blocks: every third one). The parity UNet has one
block per level, so ComfyUI would try the first residual on the downsampler and skip it (shape
mismatch). The smallest UNet ComfyUI detects as SD1.5 that takes the residuals: model channels
320 (the SD1.5 rule) and two blocks per level, so the parity UNet with a second block per level
(two levels, 320 and 640 channels; ComfyUI never reaches the adapter's last two residuals).
The adapter's first level must then be 320 wide too: a full adapter at 320/640/1280/1280
(72 M parameters, 145 MB). The checkpoint is the parity checkpoint (its text encoder and VAE)
with that UNet: 650 MB more. Writing and loading both takes longer than the default suite's
budget allows, so the case lives apart (t2i/: workflows, references, renders.json) and its test
(test_t2i_parity.py) runs only with COMFYD_HEAVY_FIDELITY=1, as the image-prompt cases do. The
default suite holds the same code on tiny models (tests/controlnet/test_control_sampling.py:
where the residuals land, and a four-level UNet against diffusers' own adapter call).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "t2i"
SD1_CHECKPOINT = "comfyd-parity-sd1.safetensors"
T2I_CHECKPOINT = "comfyd-parity-sd1-two-blocks.safetensors"
T2I_ADAPTER = "comfyd-parity-t2i-adapter.safetensors"
INPUT_IMAGE = "parity-input.png"  # tests/fidelity/inputs
POSITIVE = "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,"
NEGATIVE = "text, watermark"
STEPS = 3


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def cases() -> dict[str, dict[str, Any]]:
    w: dict[str, dict[str, Any]] = {
        "1": node("LoadImage", image=INPUT_IMAGE),
        "3": node("KSampler", seed=156680208700286, steps=STEPS, cfg=7.5, sampler_name="euler", scheduler="normal",
                  denoise=1.0, model=["4", 0], positive=["41", 0], negative=["41", 1], latent_image=["5", 0]),
        "4": node("CheckpointLoaderSimple", ckpt_name=T2I_CHECKPOINT),
        "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "6": node("CLIPTextEncode", text=POSITIVE, clip=["4", 1]),
        "7": node("CLIPTextEncode", text=NEGATIVE, clip=["4", 1]),
        "8": node("VAEDecode", samples=["3", 0], vae=["4", 2]),
        "9": node("SaveImage", filename_prefix="parity", images=["8", 0]),
        "40": node("ControlNetLoader", control_net_name=T2I_ADAPTER),
        "41": node("ControlNetApplyAdvanced", positive=["6", 0], negative=["7", 0], control_net=["40", 0],
                   image=["1", 0], strength=0.8, start_percent=0.0, end_percent=1.0),
    }
    return {"t2i_adapter_advanced": w}


def write_two_block_checkpoint(parity: Path, target: Path, seed: int = 9) -> None:
    """The parity checkpoint with its UNet replaced by a random one with two blocks per level."""
    import torch
    from safetensors.torch import load_file, save_file

    from comfyd.models import families
    from comfyd.models.keymap import to_original
    from comfyd.models.tiny import empty_unet, parity_configs, random_module

    unet_config = dict(parity_configs("sd1").unet, layers_per_block=2)
    unet = random_module(empty_unet(unet_config), seed, "unet").state_dict()
    state = {k: v for k, v in load_file(str(parity)).items() if not k.startswith("model.diffusion_model.")}
    state.update(to_original(dict(unet), families.get("sd1").unet_key_map(unet_config)))
    target.parent.mkdir(parents=True, exist_ok=True)
    stored: dict[str, torch.Tensor] = {k: v.contiguous() for k, v in state.items()}
    save_file(stored, str(target), metadata={"comfyd.random_weights": "sd1 parity two blocks per level"})


def write_models(models: Path) -> None:
    from comfyd.models.tiny import write_random_checkpoint
    from comfyd.models.tiny_control import write_tiny_t2i_adapter

    parity = models / "checkpoints" / SD1_CHECKPOINT
    if not parity.exists():
        write_random_checkpoint(parity, "sd1", size="parity")
    target = models / "checkpoints" / T2I_CHECKPOINT
    if not target.exists():
        write_two_block_checkpoint(parity, target)
    adapter = models / "controlnet" / T2I_ADAPTER
    if not adapter.exists():
        write_tiny_t2i_adapter(adapter, seed=10, channels=320, layout="original")


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
