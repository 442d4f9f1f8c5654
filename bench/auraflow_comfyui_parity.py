"""AuraFlow's transformer + sampler + VAE path held to ComfyUI itself, the text encoder left out.

ComfyUI builds an AuraFlow MMDiT from the file's depth, positions and text width but with fixed
widths (3072 hidden, 12 heads, 3072-wide conditioning), and Pile-T5-XL only at full size with the
tokenizer it ships; a transformer cut to one double and one single block loads in it, the encoder
is left out (tests/fidelity/README.md). So both sides get the same conditioning tensors (random
2048-wide Pile-T5 contexts of 256 tokens, zero after their end token as Pile-T5's masked padding
leaves them) instead of prompts, and run KSampler (euler / normal, cfg 3.5, the model's own shift
1.73) -> VAEDecode on the same files: the cut MMDiT (random weights, fal's layout, fp16, loaded as
a diffusion model alone) and a full-size random 4-channel SDXL-style VAE.

    python bench/auraflow_comfyui_parity.py --workdir /tmp/auraflow-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

prints RESULT psnr_auraflow_db=... and max_diff=... (`--size 72`: psnr_auraflow_72_db, a 9x9 latent
padded to an odd 5x5 patch grid, which checks ComfyUI's position window) (comfyd's PNG against ComfyUI's). The ComfyUI
side runs in ComfyUI's own Python (`--comfyui-side`), on CPU, through its public functions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

SIZE = 64
STEPS = 3
SEED = 5
CFG = 3.5
FILES = {
    "unet": "diffusion_models/auraflow-cut.safetensors",
    "vae": "vae/aura-sdxl-vae-full.safetensors",
    "cond": "conditioning.safetensors",
}


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _auraflow_transformer as transformer
    from comfyd.models.keymap import to_original, vae_translator
    from comfyd.models.loader import empty_vae

    if not (work / FILES["unet"]).is_file():
        config = {
            "sample_size": 64, "patch_size": 2, "in_channels": 4, "num_mmdit_layers": 1,
            "num_single_dit_layers": 1, "attention_head_dim": 256, "num_attention_heads": 12,
            "joint_attention_dim": 2048, "caption_projection_dim": 3072, "out_channels": 4,
            "pos_embed_max_size": 1024,
        }  # fmt: skip
        net = tiny.random_module(transformer.empty_transformer(config), 0, "auraflow-cut").half()
        (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
        save_file(
            to_original(net.state_dict(), transformer.AuraFlowTranslator(config, "")),
            str(work / FILES["unet"]),
        )
        del net
    if not (work / FILES["vae"]).is_file():
        vae_config = dict(tiny.full_configs("sd1").vae)
        vae = tiny.random_module(empty_vae(vae_config), 0, "aura-vae-full")
        (work / "vae").mkdir(parents=True, exist_ok=True)
        save_file(to_original(vae.state_dict(), vae_translator(vae_config, "")), str(work / FILES["vae"]))
    if not (work / FILES["cond"]).is_file():
        generator = torch.Generator().manual_seed(1)
        positive, negative = (
            torch.randn(1, 256, 2048, generator=generator),
            torch.randn(1, 256, 2048, generator=generator),
        )
        positive[:, 12:] = 0  # a prompt of 11 tokens and its end token, then zeroed padding
        negative[:, 1:] = 0  # the empty prompt: the end token alone
        save_file({"positive": positive, "negative": negative}, str(work / FILES["cond"]))


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = np.clip(255.0 * image[0].detach().cpu().numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def comfyd_side(work: Path, size: int) -> Path:
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES["unet"]).name)
    cond = load_file(str(work / FILES["cond"]))
    positive, negative = [[cond["positive"], {}]], [[cond["negative"], {}]]
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    out = common_ksampler(model, SEED, STEPS, CFG, "euler", "normal", positive, negative, latent)
    path = work / "comfyd-auraflow.png"
    to_png(vae_decode(manager.load_vae(Path(FILES["vae"]).name), out["samples"]), path)
    return path


def comfyui_side(work: Path, comfyui: Path, size: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.utils
    import nodes

    model = comfy.sd.load_diffusion_model(str(work / FILES["unet"]))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / FILES["vae"])))
    cond = comfy.utils.load_torch_file(str(work / FILES["cond"]))
    positive, negative = [[cond["positive"], {}]], [[cond["negative"], {}]]
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    (out,) = nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "normal", positive, negative, latent)
    to_png(vae.decode(out["samples"]), work / "comfyui-auraflow.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--size", type=int, default=SIZE, help="picture side (72: an odd 5x5 patch grid)")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve(), args.size)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work)
    ours = np.asarray(Image.open(comfyd_side(work, args.size)).convert("RGB")).astype(np.float64)
    subprocess.run(
        [
            args.comfyui_python,
            __file__,
            "--workdir",
            str(work),
            "--comfyui",
            str(args.comfyui),
            "--comfyui-side",
            "--size",
            str(args.size),
        ],
        check=True,
    )
    theirs = np.asarray(Image.open(work / "comfyui-auraflow.png").convert("RGB")).astype(np.float64)
    mse = float(((ours - theirs) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(json.dumps({"std": float(theirs.std()), "std_comfyd": float(ours.std())}))
    suffix = "" if args.size == SIZE else f"_{args.size}"
    print(f"RESULT psnr_auraflow{suffix}_db={psnr:.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
