"""Wan 2.2 TI2V 5B held to ComfyUI itself: latent node, transformer, sampler and 48-channel VAE.

ComfyUI builds a Wan transformer from the file's widths except the text width (fixed 4096), its
Wan 2.2 VAE at fixed widths (160 / 256) and UMT5-XXL only at full size (tests/fidelity/README.md).
So this bench writes a 5B transformer cut to two blocks of width 256 (48 latent channels in and
out, random weights, Wan's layout) with a 4096-wide text input, uses the tiny Wan 2.2 VAE of
`comfyd models make-tiny --family wan22` (ComfyUI's VAE class gets the tiny widths: its
constructor is called with them for this one file, the state dict loads strictly), and gives both
sides the same random conditioning tensors instead of prompts. Both run the TI2V template's path
on 9 frames of 64x64: Wan22ImageToVideoLatent (without and with a start image: the image encoded
into the first latent frame, its noise mask) -> ModelSamplingSD3 (shift 8) -> KSampler (cfg 5,
simple) -> VAEDecode; ComfyUI through its own node classes and `nodes.common_ksampler` (its
KSamplerX0Inpaint, WAN22's unnoised kept frame and per-frame timesteps), comfyd through its node
and `common_ksampler`.

    python bench/wan22_comfyui_parity.py --workdir /tmp/wan22-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python [--sampler uni_pc]

prints RESULT lines per case (t2v: no start image, i2v: a start image): the sampled latents' largest
difference relative to their spread, and the smallest per-frame PSNR of the decoded frames (8-bit,
as the savers write them). The ComfyUI side runs in ComfyUI's own Python (`--comfyui-side`), on CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

SIZE = 64
FRAMES = 9
STEPS = 4
CFG = 5.0
SEED = 11
SHIFT = 8.0
CUT = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 128, "in_channels": 48,
    "out_channels": 48, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 512, "num_layers": 2,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
    "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
}  # fmt: skip
FILES = {
    "unet": "diffusion_models/wan22-ti2v-cut.safetensors",
    "vae": "vae/comfyd-tiny-wan22-vae.safetensors",
    "cond": "conditioning.safetensors",
    "image": "input/start.png",
}
CASES = ("t2v", "i2v")


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _wan22_tiny, _wan22_vae, _wan_tiny
    from comfyd.models.families import _wan_transformer as transformer

    if all((work / f).is_file() for f in FILES.values()):
        return
    net = tiny.random_module(transformer.empty_transformer(CUT), 0, "wan22-ti2v-cut")
    (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file({transformer.original_name(k): v.contiguous() for k, v in net.state_dict().items()}, str(work / FILES["unet"]))
    vae = tiny.random_module(_wan22_vae.empty_vae(_wan22_tiny.TINY_VAE), 0, "wan22-vae")
    _wan_tiny._save(_wan_tiny._stored(vae, _wan22_vae.original_name), work / FILES["vae"])
    g = torch.Generator().manual_seed(SEED)
    save_file({"positive": torch.randn(1, 512, 4096, generator=g), "negative": torch.randn(1, 512, 4096, generator=g)},
              str(work / FILES["cond"]))  # fmt: skip
    y, x = np.mgrid[0:48, 0:80]  # another aspect: the node crops to the centre
    picture = np.stack([x * 3, y * 5, 255 - x * 2], -1).clip(0, 255).astype(np.uint8)
    (work / "input").mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(work / FILES["image"])


def start_image(work: Path) -> torch.Tensor:
    with Image.open(work / FILES["image"]) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).astype(np.float32) / 255.0)[None]


def conditioning(work: Path) -> tuple[list, list]:
    cond = load_file(str(work / FILES["cond"]))
    return [[cond["positive"], {}]], [[cond["negative"], {}]]


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    return np.clip(255.0 * frames.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)


def comfyd_side(
    work: Path, sampler: str, cases: tuple[str, ...] = CASES, decode: bool = True
) -> dict[str, np.ndarray | torch.Tensor]:
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.nodes.conditioning.wan22_latent import Wan22ImageToVideoLatent
    from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    class Ctx:
        class env:  # noqa: N801
            settings = None

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES["unet"]).name)
    model = model.with_sampling(FlowModelSampling(TimeShiftSchedule(shift=SHIFT, multiplier=1000.0)))
    vae = manager.load_vae(Path(FILES["vae"]).name)
    positive, negative = conditioning(work)
    out: dict[str, np.ndarray | torch.Tensor] = {}
    for case in cases:
        image = start_image(work) if case == "i2v" else None
        (latent,) = Wan22ImageToVideoLatent().run(Ctx(), vae, SIZE, SIZE, FRAMES, 1, start_image=image)
        samples = common_ksampler(model, SEED, STEPS, CFG, sampler, "simple", positive, negative, latent)["samples"]
        out[f"{case}_latent"] = samples
        if decode:
            out[f"{case}_frames"] = to_uint8(vae_decode(vae, samples))
    return out


def comfyui_side(work: Path, comfyui: Path, sampler: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")  # CPU, ComfyUI's own import set-up
    import comfy.ldm.wan.vae2_2 as vae2_2
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3
    from comfy_extras.nodes_wan import Wan22ImageToVideoLatent

    model = comfy.sd.load_diffusion_model(str(work / FILES["unet"]))
    (model,) = ModelSamplingSD3().patch(model, SHIFT)
    sd = comfy.utils.load_torch_file(str(work / FILES["vae"]))
    full_size = vae2_2.WanVAE
    try:  # ComfyUI's Wan 2.2 VAE class, at the tiny file's widths
        vae2_2.WanVAE = lambda **kw: full_size(**{**kw, "dim": 8, "dec_dim": 16})
        vae = comfy.sd.VAE(sd=sd, dtype=torch.float32)
    finally:
        vae2_2.WanVAE = full_size
    vae.first_stage_model.load_state_dict(sd, strict=True)
    positive, negative = conditioning(work)
    out: dict[str, torch.Tensor] = {}
    for case in CASES:
        image = start_image(work) if case == "i2v" else None
        latent = Wan22ImageToVideoLatent.execute(vae, SIZE, SIZE, FRAMES, 1, start_image=image).result[0]
        (sampled,) = nodes.common_ksampler(model, SEED, STEPS, CFG, sampler, "simple", positive, negative, latent)
        out[f"{case}_latent"] = sampled["samples"].float().contiguous()
        frames = vae.decode(sampled["samples"])
        out[f"{case}_frames"] = torch.from_numpy(np.ascontiguousarray(to_uint8(frames.reshape(-1, *frames.shape[-3:]))))
    save_file(out, str(work / "comfyui.safetensors"))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve(), args.sampler)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work)
    ours = comfyd_side(work, args.sampler)
    subprocess.run(
        [args.comfyui_python, __file__, "--comfyui-side", "--workdir", str(work), "--comfyui", str(args.comfyui),
         "--sampler", args.sampler],
        check=True,
    )  # fmt: skip
    theirs = load_file(str(work / "comfyui.safetensors"))
    for case in CASES:
        a, b = ours[f"{case}_latent"], theirs[f"{case}_latent"]
        assert isinstance(a, torch.Tensor)
        print(f"RESULT wan22_{case}_{args.sampler}_latent_max_rel_diff={float((a - b).abs().max() / b.std()):.3g}")
        fa, fb = ours[f"{case}_frames"], theirs[f"{case}_frames"].numpy()
        assert isinstance(fa, np.ndarray) and fa.shape == fb.shape, (getattr(fa, "shape", None), fb.shape)
        frames = [psnr(fa[i], fb[i]) for i in range(fa.shape[0])]
        print(f"RESULT wan22_{case}_{args.sampler}_frames={fa.shape[0]} min_psnr_db={min(frames):.2f} "
              f"max_diff={int(np.abs(fa.astype(int) - fb.astype(int)).max())} std={fb.std():.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
