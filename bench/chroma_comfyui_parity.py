"""Chroma's transformer + sampler + VAE path held to ComfyUI itself, the text encoder left out.

ComfyUI builds a Chroma transformer from the file's depth but with fixed widths (3072 hidden, 24
heads, a 4096-wide context, a 5120-wide five-layer approximator), and T5-XXL only at full size; a
transformer cut to one double and one single block loads in it, the T5 does not
(tests/fidelity/README.md). So both sides get the same conditioning tensors (random T5 contexts of
12 and 5 tokens, as Chroma's unpadded tokenizer makes them) instead of prompts and run KSampler
(euler / beta, cfg 4, so the positive and negative contexts of different lengths go through the
model) -> VAEDecode on the same files: the cut transformer (random weights, ComfyUI's layout,
fp16) and a full-size random Flux VAE (ComfyUI's autoencoder is also fixed-size).

    python bench/chroma_comfyui_parity.py --workdir /tmp/chroma-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

prints RESULT psnr_chroma_db=... and max_diff=... (comfyd's PNG against ComfyUI's). The ComfyUI
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
SEED = 11
CFG = 4.0
FILES = {"unet": "diffusion_models/chroma-cut.safetensors", "vae": "vae/flux-ae-full.safetensors",
         "cond": "conditioning.safetensors"}


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _chroma_transformer as transformer
    from comfyd.models.keymap import to_original, vae_translator
    from comfyd.models.loader import empty_vae

    if not (work / FILES["unet"]).is_file():
        config = {
            "patch_size": 1, "in_channels": 64, "out_channels": 64, "num_layers": 1, "num_single_layers": 1,
            "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
            "axes_dims_rope": [16, 56, 56], "approximator_num_channels": 64, "approximator_hidden_dim": 5120,
            "approximator_layers": 5,
        }  # fmt: skip
        net = tiny.random_module(transformer.empty_transformer(config), 0, "chroma-cut").half()
        (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
        save_file(to_original(net.state_dict(), transformer.ChromaTranslator(config, "")), str(work / FILES["unet"]))
        del net
    if not (work / FILES["vae"]).is_file():
        vae_config = dict(tiny.full_configs("sd1").vae, latent_channels=16, use_quant_conv=False,
                          use_post_quant_conv=False)  # fmt: skip
        vae = tiny.random_module(empty_vae(vae_config), 0, "flux-ae-full")
        (work / "vae").mkdir(parents=True, exist_ok=True)
        save_file(to_original(vae.state_dict(), vae_translator(vae_config, "")), str(work / FILES["vae"]))
    if not (work / FILES["cond"]).is_file():
        generator = torch.Generator().manual_seed(1)
        save_file({"positive": torch.randn(1, 12, 4096, generator=generator),
                   "negative": torch.randn(1, 5, 4096, generator=generator)}, str(work / FILES["cond"]))


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = np.clip(255.0 * image[0].detach().cpu().numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def comfyd_side(work: Path) -> Path:
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES["unet"]).name)
    cond = load_file(str(work / FILES["cond"]))
    positive, negative = [[cond["positive"], {}]], [[cond["negative"], {}]]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = common_ksampler(model, SEED, STEPS, CFG, "euler", "beta", positive, negative, latent)
    path = work / "comfyd-chroma.png"
    to_png(vae_decode(manager.load_vae(Path(FILES["vae"]).name), out["samples"]), path)
    return path


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.utils
    import nodes

    model = comfy.sd.load_diffusion_model(str(work / FILES["unet"]))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / FILES["vae"])))
    cond = comfy.utils.load_torch_file(str(work / FILES["cond"]))
    # What ComfyUI's T5-only CLIPTextEncode hands on: no pooled vector.
    positive, negative = [[cond["positive"], {"pooled_output": None}]], [[cond["negative"], {"pooled_output": None}]]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    (out,) = nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "beta", positive, negative, latent)
    to_png(vae.decode(out["samples"]), work / "comfyui-chroma.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve())
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work)
    ours = np.asarray(Image.open(comfyd_side(work)).convert("RGB")).astype(np.float64)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--comfyui-side"], check=True)
    theirs = np.asarray(Image.open(work / "comfyui-chroma.png").convert("RGB")).astype(np.float64)
    mse = float(((ours - theirs) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(json.dumps({"std": float(theirs.std())}))
    print(f"RESULT psnr_chroma_db={psnr:.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
