"""Flux's transformer + sampler + VAE path held to ComfyUI itself, text encoders left out.

ComfyUI builds a Flux transformer from the file's depth but with fixed widths (3072 hidden, 24
heads, 4096-wide context, rotary axes 16/56/56), and T5-XXL only at full size; a transformer cut
to one double and one single block loads in it, the T5 does not (tests/fidelity/README.md). So
both sides get the same conditioning tensors (a fixed random T5 context [1, 256, 4096] and CLIP
pooled vector [1, 768], guidance 3.5) instead of a prompt, and run (dev) ModelSamplingFlux ->
KSampler (euler / simple, cfg 1) -> VAEDecode, or (schnell, no guidance embedding, its own flow
table) KSampler -> VAEDecode on the same files: the cut transformer (random weights, BFL
layout, fp16) and a full-size random Flux VAE (ComfyUI's autoencoder is also fixed-size).

    python bench/flux_comfyui_parity.py --workdir /tmp/flux-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

(add --variant schnell for schnell, --sampler NAME for another sampler than euler,
--weight-dtype fp8_e4m3fn for UNETLoader's fp8 storage on both sides) prints RESULT psnr_flux_<variant>_db=... and max_diff=... (comfyd's PNG against ComfyUI's). The ComfyUI
side runs in ComfyUI's own Python (`--comfyui-side`), on CPU, through its public functions.

`--variant fill`: a cut Fill transformer (img_in 384 wide) and ComfyUI's canonical Fill path:
InpaintModelConditioning (a fixed picture with a rectangular mask, noise_mask on) -> KSampler on
the model's own sampling (shift 1.15, guidance 30) -> VAEDecode. `--variant kontext`: the dev
transformer and the Kontext edit path: two pictures (64x64 and 32x48) VAE-encoded, each appended
by ReferenceLatent (ComfyUI's default `offset` layout; `--ref-method index|uxo/uno` adds
FluxKontextMultiReferenceLatentMethod), guidance 2.5, KSampler from the first picture's latent.
The Fill mask is soft (a ramp inside the rectangle); `--differential` adds DifferentialDiffusion;
`--noise-mask-only` samples a VAE-encoded latent with that noise mask instead (no
InpaintModelConditioning: the model reads the noise mask and a zero image).
`--variant redux`: the dev transformer, a full-size random SigLIP-384 tower (ComfyUI's fixed
config; fp16) and a random Redux encoder: CLIPVisionEncode (center crop) of the first picture ->
StyleModelApply (strength 1, multiply) appends its 729 tokens to the context -> KSampler.
"""

from __future__ import annotations

import argparse
import gc
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
SEED = 7
SAMPLER = ["euler"]  # --sampler: both sides sample with it
WEIGHT_DTYPE = ["default"]  # --weight-dtype: UNETLoader's, both sides
GUIDANCE = 3.5
FILES = {"unet": "diffusion_models/flux-cut-{model}.safetensors", "vae": "vae/flux-ae-full.safetensors",
         "cond": "conditioning.safetensors"}


VARIANTS = ("dev", "schnell", "fill", "kontext", "redux")
REDUX_FILES = {"siglip": "clip_vision/siglip-384-full.safetensors", "redux": "style_models/redux-random.safetensors"}
GUIDANCES = {"fill": 30.0, "kontext": 2.5}


def files(variant: str) -> dict[str, str]:
    model = "dev" if variant in ("kontext", "redux") else variant  # Kontext's transformer is dev's shape
    return {k: v.format(model=model) for k, v in FILES.items()}


def pictures() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two smooth pictures [1, H, W, 3] (64x64 and 32x48) and a mask [1, 64, 64]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    first = torch.stack((xx, yy, 0.5 + 0.5 * torch.sin(6 * xx * yy)), -1)[None]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 48), indexing="ij")
    second = torch.stack((1 - yy, 0.5 * xx, torch.cos(4 * xx) ** 2), -1)[None]
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 16:48, 20:44] = torch.linspace(0.05, 1.0, 24)  # soft: DifferentialDiffusion reads the levels
    return first, second, mask


def make_files(work: Path, variant: str) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _flux_transformer as transformer
    from comfyd.models.keymap import to_original

    names = files(variant)
    if all((work / f).is_file() for f in names.values()):
        return
    if (work / names["unet"]).is_file():
        return make_shared_files(work, names)
    config = {
        "patch_size": 1, "in_channels": 384 if variant == "fill" else 64, "out_channels": 64, "num_layers": 1, "num_single_layers": 1,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": variant != "schnell", "axes_dims_rope": [16, 56, 56],
    }  # fmt: skip
    net = tiny.random_module(transformer.empty_transformer(config), 0, Path(names["unet"]).stem)
    (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(to_original(net.state_dict(), transformer.FluxTranslator(config, "")), str(work / names["unet"]))
    del net
    make_shared_files(work, names)


def make_redux_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.clip_vision import VISION_CONFIGS
    from comfyd.models.style_model import ReduxEncoder

    if all((work / f).is_file() for f in REDUX_FILES.values()):
        return
    from accelerate import init_empty_weights
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with init_empty_weights():
        tower = SiglipVisionModel(SiglipVisionConfig(**VISION_CONFIGS["siglip-384"]))
    tower = tiny.random_module(tower, 0, "siglip-384-full")
    # SiglipVisionModel's parameters lack the `vision_model.` the stored files (and ComfyUI) use.
    state = {"vision_model." + k: v.to(torch.float16) for k, v in tower.state_dict().items()}
    del tower
    (work / REDUX_FILES["siglip"]).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(work / REDUX_FILES["siglip"]))
    del state
    redux = tiny.random_module(ReduxEncoder(), 0, "redux-random")
    (work / REDUX_FILES["redux"]).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16) for k, v in redux.state_dict().items()}, str(work / REDUX_FILES["redux"]))


def make_shared_files(work: Path, names: dict[str, str]) -> None:
    from comfyd.models import tiny
    from comfyd.models.keymap import to_original, vae_translator
    from comfyd.models.loader import empty_vae

    if (work / names["vae"]).is_file() and (work / names["cond"]).is_file():
        return
    vae_config = dict(tiny.full_configs("sd1").vae, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    vae = tiny.random_module(empty_vae(vae_config), 0, "flux-ae-full")
    (work / "vae").mkdir(parents=True, exist_ok=True)
    save_file(to_original(vae.state_dict(), vae_translator(vae_config, "")), str(work / names["vae"]))
    generator = torch.Generator().manual_seed(1)
    save_file({"context": torch.randn(1, 256, 4096, generator=generator),
               "pooled": torch.randn(1, 768, generator=generator)}, str(work / names["cond"]))


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = np.clip(255.0 * image[0].detach().cpu().numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def comfyd_side(work: Path, variant: str, ref_method: str, differential: bool, noise_mask_only: bool) -> Path:
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling, flux_shift
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    names = files(variant)
    settings = Settings(models_dir=work, device="cpu", home=work / "home")
    if variant == "redux":  # the SigLIP tower's own manager goes before the transformer loads
        towers = ModelManager(settings)
        redux_model = towers.load_style_model(Path(REDUX_FILES["redux"]).name)
        redux_output = towers.load_clip_vision(Path(REDUX_FILES["siglip"]).name).encode_image(pictures()[0])
        del towers
        gc.collect()
    manager = ModelManager(settings)
    model = manager.load_diffusion_model(Path(names["unet"]).name, WEIGHT_DTYPE[0])
    if variant in ("dev", "redux"):
        model = model.with_sampling(FlowModelSampling(ExpTimeShiftSchedule(flux_shift(1.15, 0.5, SIZE, SIZE))))
    vae = manager.load_vae(Path(names["vae"]).name)
    cond = load_file(str(work / names["cond"]))
    positive = [[cond["context"], {"pooled_output": cond["pooled"], "guidance": GUIDANCES.get(variant, GUIDANCE)}]]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    if variant == "fill":
        from comfyd.nodes.advanced.differential_diffusion import DifferentialDiffusion
        from comfyd.nodes.conditioning.inpaint import InpaintModelConditioning

        if differential:
            (model,) = DifferentialDiffusion().run(None, model, 1.0)  # type: ignore[arg-type]
        first, _, mask = pictures()
        if noise_mask_only:  # SetLatentNoiseMask's latent: the model reads the noise mask, zeros for the image
            from comfyd.models.vae_codec import vae_encode

            latent = {"samples": vae_encode(vae, first), "noise_mask": mask}
        else:
            positive, _, latent = InpaintModelConditioning().run(None, positive, positive, vae, first, mask, True)  # type: ignore[arg-type]
    elif variant == "kontext":
        from comfyd.models.vae_codec import vae_encode
        from comfyd.nodes.conditioning.reference_latent import (
            FluxKontextMultiReferenceLatentMethod,
            ReferenceLatent,
        )

        latents = [{"samples": vae_encode(vae, picture)} for picture in pictures()[:2]]
        for reference in latents:
            (positive,) = ReferenceLatent().run(None, positive, reference)  # type: ignore[arg-type]
        if ref_method:
            (positive,) = FluxKontextMultiReferenceLatentMethod().run(None, positive, ref_method)  # type: ignore[arg-type]
        latent = latents[0]
    elif variant == "redux":
        from comfyd.nodes.conditioning.style_model import StyleModelApply

        (positive,) = StyleModelApply().run(None, positive, redux_model, redux_output, 1.0, "multiply")  # type: ignore[arg-type]
    out = common_ksampler(model, SEED, STEPS, 1.0, SAMPLER[0], "simple", positive, positive, latent)
    path = work / f"comfyd-{variant}.png"
    to_png(vae_decode(vae, out["samples"]), path)
    return path


def comfyui_side(
    work: Path, comfyui: Path, variant: str, ref_method: str, differential: bool, noise_mask_only: bool
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux

    names = files(variant)
    # UNETLoader's weight_dtype as its node hands it to load_diffusion_model.
    stored = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}.get(WEIGHT_DTYPE[0])
    model = comfy.sd.load_diffusion_model(str(work / names["unet"]), model_options={"dtype": stored} if stored else {})
    if variant in ("dev", "redux"):
        (model,) = ModelSamplingFlux().patch(model, 1.15, 0.5, SIZE, SIZE)
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / names["vae"])))
    cond = comfy.utils.load_torch_file(str(work / names["cond"]))
    positive = [[cond["context"], {"pooled_output": cond["pooled"], "guidance": GUIDANCES.get(variant, GUIDANCE)}]]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    if variant == "fill":
        from comfy_extras.nodes_differential_diffusion import DifferentialDiffusion

        if differential:
            model = DifferentialDiffusion.execute(model, 1.0).result[0]
        first, _, mask = pictures()
        if noise_mask_only:
            latent = {"samples": vae.encode(first), "noise_mask": mask}
        else:
            positive, _, latent = nodes.InpaintModelConditioning().encode(positive, positive, first, vae, mask, True)
    elif variant == "kontext":
        from comfy_extras.nodes_edit_model import ReferenceLatent
        from comfy_extras.nodes_flux import FluxKontextMultiReferenceLatentMethod

        latents = [{"samples": vae.encode(picture)} for picture in pictures()[:2]]
        for reference in latents:
            positive = ReferenceLatent.execute(positive, reference).result[0]
        if ref_method:
            positive = FluxKontextMultiReferenceLatentMethod.execute(positive, ref_method).result[0]
        latent = latents[0]
    elif variant == "redux":
        import comfy.clip_vision

        tower = comfy.clip_vision.load(str(work / REDUX_FILES["siglip"]))
        style = comfy.sd.load_style_model(str(work / REDUX_FILES["redux"]))
        output = tower.encode_image(pictures()[0], crop=True)
        (positive,) = nodes.StyleModelApply().apply_stylemodel(positive, style, output, 1.0, "multiply")
    (out,) = nodes.common_ksampler(model, SEED, STEPS, 1.0, SAMPLER[0], "simple", positive, positive, latent)
    to_png(vae.decode(out["samples"]), work / f"comfyui-{variant}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--variant", choices=VARIANTS, default="dev",
                        help="dev: guidance embedding + ModelSamplingFlux; schnell: neither; fill; kontext")
    parser.add_argument("--ref-method", default="", choices=("", "offset", "index", "uxo/uno"),
                        help="kontext: FluxKontextMultiReferenceLatentMethod's choice (none: the default offset)")
    parser.add_argument("--differential", action="store_true", help="fill: DifferentialDiffusion on the model")
    parser.add_argument("--noise-mask-only", action="store_true",
                        help="fill: a VAE-encoded latent with a noise mask, no InpaintModelConditioning")
    parser.add_argument("--sampler", default="euler", help="any KSampler sampler name (default euler)")
    parser.add_argument("--weight-dtype", default="default", choices=("default", "fp8_e4m3fn", "fp8_e5m2"),
                        help="UNETLoader's weight_dtype on both sides (fp8: weights stored in fp8)")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    SAMPLER[0] = args.sampler
    WEIGHT_DTYPE[0] = args.weight_dtype
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve(), args.variant, args.ref_method, args.differential,
                         args.noise_mask_only)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work, args.variant)
    if args.variant == "redux":
        make_redux_files(work)
    ours = np.asarray(Image.open(comfyd_side(work, args.variant, args.ref_method, args.differential, args.noise_mask_only)).convert("RGB")).astype(np.float64)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--variant", args.variant, "--ref-method", args.ref_method, "--sampler", args.sampler, "--weight-dtype", args.weight_dtype, "--comfyui-side",
                    *(["--differential"] if args.differential else []),
                    *(["--noise-mask-only"] if args.noise_mask_only else [])], check=True)
    theirs = np.asarray(Image.open(work / f"comfyui-{args.variant}.png").convert("RGB")).astype(np.float64)
    mse = float(((ours - theirs) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(json.dumps({"std": float(theirs.std())}))
    method = args.ref_method.split("/")[0]
    tag = ("_" + method if method else "") + ("_differential" if args.differential else "")
    tag += "_noise_mask_only" if args.noise_mask_only else ""
    tag += "" if args.sampler == "euler" else f"_{args.sampler}"
    tag += "" if args.weight_dtype == "default" else f"_{args.weight_dtype}"
    print(f"RESULT psnr_flux_{args.variant}{tag}_db={psnr:.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
