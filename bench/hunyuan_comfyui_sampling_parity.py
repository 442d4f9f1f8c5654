"""HunyuanVideo's transformer + sampler + VAE path held to ComfyUI itself, text encoders left out.

ComfyUI builds a HunyuanVideo transformer from the file's shapes except the pooled-vector width
(768, CLIP-L's) and its VAE at full size (128 wide, four levels), and its text encoders only at
full size (Llama-3-8B); so, as bench/flux_comfyui_parity.py does for Flux, both sides get the same
conditioning tensors (a fixed random Llama context [1, 24, 256] and CLIP-L pooled vector [1, 768],
guidance 6.0) instead of a prompt and run UNETLoader -> ModelSamplingSD3 (shift 7) -> KSampler
(euler / simple, cfg 1) -> VAEDecode on the same files: a cut transformer (2 heads of 128, one
double and one single block, random weights, ComfyUI's layout) and a full-size random
HunyuanVideo VAE, 9 frames of 64x64.

    python bench/hunyuan_comfyui_sampling_parity.py --workdir /tmp/hunyuan-sampling \
        --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python

prints RESULT min_psnr_db=... (the worst of the 9 frames, 8-bit) and max_diff=... (comfyd's frames
against ComfyUI's). The ComfyUI side runs in ComfyUI's own Python (`--comfyui-side`), on CPU,
through its public functions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

SIZE, FRAMES, STEPS, SEED, GUIDANCE, SHIFT = 64, 9, 3, 5, 6.0, 7.0
FILES = {"unet": "diffusion_models/hunyuan-video-cut.safetensors", "vae": "vae/hunyuan-video-vae-full.safetensors",
         "cond": "conditioning.safetensors"}  # fmt: skip
FULL_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "down_block_types": ["HunyuanVideoDownBlock3D"] * 4, "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "spatial_compression_ratio": 8, "temporal_compression_ratio": 4, "mid_block_add_attention": True,
}  # fmt: skip


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _hunyuan_tiny, _hunyuan_transformer, _hunyuan_vae
    from comfyd.models.keymap import to_original

    if all((work / f).is_file() for f in FILES.values()):
        return
    config = _hunyuan_tiny.tiny_transformer_config(256, 768)
    net = tiny.random_module(_hunyuan_transformer.empty_transformer(config), 0, "hunyuan-video-cut")
    (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
    stored = to_original(net.state_dict(), _hunyuan_transformer.HunyuanTranslator(config, [], ""))
    save_file({k: v.contiguous() for k, v in stored.items()}, str(work / FILES["unet"]))
    vae = tiny.random_module(_hunyuan_vae.empty_vae(FULL_VAE), 0, "hunyuan-video-vae-full")
    state = to_original(vae.state_dict(), _hunyuan_vae.translator(FULL_VAE))
    for key in [k for k in state if ".mid.attn_1." in k and k.endswith("weight") and state[k].ndim == 4]:
        state[key] = state[key].reshape(*state[key].shape[:2], 1, 1, 1)
    (work / "vae").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(work / FILES["vae"]))
    generator = torch.Generator().manual_seed(1)
    save_file({"context": torch.randn(1, 24, 256, generator=generator),
               "pooled": torch.randn(1, 768, generator=generator)}, str(work / FILES["cond"]))  # fmt: skip


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return np.clip(255.0 * frames.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)


def comfyd_side(work: Path) -> np.ndarray:
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES["unet"]).name)
    model = model.with_sampling(FlowModelSampling(TimeShiftSchedule(shift=SHIFT, multiplier=1000.0)))
    cond = load_file(str(work / FILES["cond"]))
    positive = [[cond["context"], {"pooled_output": cond["pooled"], "guidance": GUIDANCE}]]
    latent = {"samples": torch.zeros(1, 16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)}
    out = common_ksampler(model, SEED, STEPS, 1.0, "euler", "simple", positive, positive, latent)
    return to_uint8(vae_decode(manager.load_vae(Path(FILES["vae"]).name), out["samples"]))


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    model = comfy.sd.load_diffusion_model(str(work / FILES["unet"]))
    (model,) = ModelSamplingSD3().patch(model, SHIFT)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / FILES["vae"])))
    cond = comfy.utils.load_torch_file(str(work / FILES["cond"]))
    positive = [[cond["context"], {"pooled_output": cond["pooled"], "guidance": GUIDANCE}]]
    latent = {"samples": torch.zeros(1, 16, (FRAMES - 1) // 4 + 1, SIZE // 8, SIZE // 8)}
    (out,) = nodes.common_ksampler(model, SEED, STEPS, 1.0, "euler", "simple", positive, positive, latent)
    images = vae.decode(out["samples"])
    images = images.reshape(-1, *images.shape[-3:])  # VAEDecode's [B * T, H, W, 3]
    np.save(work / "comfyui-frames.npy", to_uint8(images))


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
    ours = comfyd_side(work).astype(np.float64)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--comfyui-side"], check=True)  # fmt: skip
    theirs = np.load(work / "comfyui-frames.npy").astype(np.float64)
    print(json.dumps({"ours": list(ours.shape), "theirs": list(theirs.shape), "std": float(theirs.std())}))
    psnrs = []
    for a, b in zip(ours, theirs, strict=True):
        mse = float(((a - b) ** 2).mean())
        psnrs.append(float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse))
    print(f"RESULT frames={len(psnrs)} min_psnr_db={min(psnrs):.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
