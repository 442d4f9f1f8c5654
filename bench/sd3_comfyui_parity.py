"""The SD3 / SD3.5 MMDiT + sampler + VAE path held to ComfyUI itself, text encoders left out.

ComfyUI builds an SD3 MMDiT from the file (width // 64 blocks of width // 64 heads, context and
pooled widths, position grid, q/k norms and dual-attention blocks all read from the shapes), so a
random MMDiT two blocks deep (128 wide) with SD3's real context (4096) and pooled (2048) widths
loads in it unaided. It builds CLIP-G and T5-XXL only at full size (tests/fidelity/README.md), so
both sides get the same conditioning tensors (a fixed random context [1, 154, 4096] and pooled
vector [1, 2048] for the positive prompt, another pair for the negative) instead of prompts, and
run ModelSamplingSD3 (shift 3) -> KSampler (euler / sgm_uniform, cfg 4.5, 3 steps, 64x64) ->
VAEDecode on the same files: the MMDiT (random weights, Stability's layout) and a full-size random
16-channel VAE (ComfyUI's autoencoder is fixed-size).

    python bench/sd3_comfyui_parity.py --workdir /tmp/sd3-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python \
        [--variant medium|large|sd3]

prints RESULT psnr_sd3_<variant>_db=... and max_diff=... (comfyd's PNG against ComfyUI's).
Variants: `medium` SD3.5 medium's layout (RMS q/k norms, a dual-attention block, 384-wide
position grid), `large` SD3.5 large's (q/k norms, 192 grid), `sd3` SD3 medium's (neither). The
ComfyUI side runs in ComfyUI's own Python (`--comfyui-side`), on CPU, through its public functions.

`--slg` adds SkipLayerGuidanceSD3 on both sides (block 0 skipped, scale 3, 0% to 60% of the
schedule, so two of the three steps use it) and also prints how many levels it moved comfyd's
picture from the plain run's.

`--lora` adds a LoRA (kohya names of a fused q/k/v and of the final modulation, a diffusers
name of one context k third; strength 0.8) through ComfyUI's load_lora_for_models and comfyd's
LoRA patcher, with the same report.

`--variant workflow` runs the whole canonical workflow (comfyd/workflows/sd3.5_api.json:
CheckpointLoaderSimple, CLIPTextEncode x2, ModelSamplingSD3, EmptySD3LatentImage, KSampler,
VAEDecode, SaveImage; 64x64, 3 steps) in both, prompts included, through `comfyd run` and
bench/comfyui_render.py, on an all-in-one checkpoint ComfyUI detects unaided that carries CLIP-L
only (as `sd3_medium_incl_clips` carries two of the three encoders): full-size random CLIP-L (the
one text encoder small enough here), the medium-layout MMDiT and the full-size VAE. It prints
RESULT psnr_sd3_workflow_db, max_diff and whether the PNG text chunks are equal.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
CFG = 4.5
SHIFT = 3.0
LORA = "loras/sd3-cut-medium-lora.safetensors"


def make_lora(work: Path) -> Path:
    """`--lora`: a LoRA on the medium MMDiT in two formats ComfyUI maps for SD3: kohya (Stability
    names: a fused q/k/v, the final modulation ComfyUI stores as shift/scale) and diffusers (a k
    third of the context stream's fused q/k/v)."""
    path = work / LORA
    generator = torch.Generator().manual_seed(3)
    stored = load_file(str(work / files("medium")["unet"]))
    tensors: dict[str, torch.Tensor] = {}
    for name, kind, rows, key in (
        ("lora_unet_joint_blocks_0_x_block_attn_qkv", "kohya", None, "joint_blocks.0.x_block.attn.qkv.weight"),
        ("lora_unet_final_layer_adaLN_modulation_1", "kohya", None, "final_layer.adaLN_modulation.1.weight"),
        ("transformer.transformer_blocks.1.attn.add_k_proj", "diffusers", 128, "joint_blocks.1.context_block.attn.qkv.weight"),
    ):
        out_dim, in_dim = stored[key].shape
        down = torch.randn(4, in_dim, generator=generator) * 0.2
        up = torch.randn(rows or out_dim, 4, generator=generator) * 0.2
        a, b = ("lora_A", "lora_B") if kind == "diffusers" else ("lora_down", "lora_up")
        tensors |= {f"{name}.{a}.weight": down, f"{name}.{b}.weight": up, f"{name}.alpha": torch.tensor(4.0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


# `--slg`: SkipLayerGuidanceSD3 on both sides (block 0 skipped, scale 3, from 0% to 60%).
SLG = ("0", 3.0, 0.0, 0.6)
VARIANTS = {  # (q/k norm, dual-attention blocks, position grid side)
    "medium": ("rms_norm", (0,), 384),
    "large": ("rms_norm", (), 192),
    "sd3": (None, (), 192),
}
FILES = {"unet": "diffusion_models/sd3-cut-{variant}.safetensors", "vae": "vae/sd3-vae-full.safetensors",
         "cond": "conditioning.safetensors"}


def files(variant: str) -> dict[str, str]:
    return {k: v.format(variant=variant) for k, v in FILES.items()}


def make_files(work: Path, variant: str) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _sd3_transformer as transformer
    from comfyd.models.keymap import to_original, vae_translator
    from comfyd.models.loader import empty_vae

    names = files(variant)
    if all((work / f).is_file() for f in names.values()):
        return
    qk_norm, dual, grid = VARIANTS[variant]
    config = {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 64,
        "num_attention_heads": 2, "joint_attention_dim": 4096, "caption_projection_dim": 128,
        "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": grid,
        "dual_attention_layers": dual, "qk_norm": qk_norm,
    }  # fmt: skip
    net = tiny.random_module(transformer.empty_transformer(config), 0, f"sd3-cut-{variant}")
    (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(to_original(net.state_dict(), transformer.SD3Translator(config, "")), str(work / names["unet"]))
    del net
    if (work / names["vae"]).is_file() and (work / names["cond"]).is_file():
        return
    vae_config = dict(tiny.full_configs("sd1").vae, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    vae = tiny.random_module(empty_vae(vae_config), 0, "sd3-vae-full")
    (work / "vae").mkdir(parents=True, exist_ok=True)
    save_file(to_original(vae.state_dict(), vae_translator(vae_config, "")), str(work / names["vae"]))
    generator = torch.Generator().manual_seed(1)
    save_file({name: torch.randn(*shape, generator=generator) for name, shape in (
        ("context", (1, 154, 4096)), ("pooled", (1, 2048)),
        ("negative_context", (1, 154, 4096)), ("negative_pooled", (1, 2048)))}, str(work / names["cond"]))


CHECKPOINT = "checkpoints/sd3-clip-l-only.safetensors"
WORKFLOWS = Path(__file__).resolve().parents[1] / "comfyd" / "workflows"


def make_checkpoint(work: Path) -> Path:
    """The all-in-one file of `--variant workflow` (see the module docstring)."""
    from comfyd.models import tiny
    from comfyd.models.loader import empty_text_encoder

    path = work / CHECKPOINT
    if path.is_file():
        return path
    make_files(work, "medium")
    names = files("medium")
    clip = tiny.random_module(empty_text_encoder(tiny.full_configs("sd1").encoders["l"]), 0, "sd3-clip-l-full")
    parts = {
        "model.diffusion_model.": load_file(str(work / names["unet"])),
        # In the names ComfyUI's files use (`text_model.` included), which its detection reads.
        "text_encoders.clip_l.transformer.": {
            k if k.startswith("text_model.") else f"text_model.{k}": v
            for k, v in clip.state_dict().items() if "position_ids" not in k
        },
        "first_stage_model.": load_file(str(work / names["vae"])),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for prefix, part in parts.items() for k, v in part.items()}, str(path))
    return path


def workflow_graph() -> dict:
    graph = json.loads((WORKFLOWS / "sd3.5_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = Path(CHECKPOINT).name
    graph["53"]["inputs"].update(width=SIZE, height=SIZE)
    graph["3"]["inputs"].update(steps=STEPS, seed=SEED)
    graph["9"]["inputs"]["filename_prefix"] = "sd3_workflow"
    return graph


def run_workflow(work: Path, comfyui: Path, comfyui_python: str) -> int:
    from comfyd.cli import main as comfyd_main

    make_checkpoint(work)
    graph_path = work / "sd3_workflow.json"
    graph_path.write_text(json.dumps(workflow_graph()))
    ours_dir, theirs_dir = work / "workflow-comfyd", work / "workflow-comfyui"
    shutil.rmtree(ours_dir, ignore_errors=True)
    code = comfyd_main(["run", str(graph_path), "--models-dir", str(work), "--output-dir", str(ours_dir), "-q"])
    if code != 0:
        return code
    subprocess.run([comfyui_python, str(Path(__file__).resolve().parent / "comfyui_render.py"), "--comfyui",
                    str(comfyui), "--models-dir", str(work), "--out", str(theirs_dir), "--no-model-digests",
                    str(graph_path)], check=True)
    with Image.open(next(ours_dir.glob("*.png"))) as a, Image.open(theirs_dir / "sd3_workflow.png") as b:
        ours, theirs = (np.asarray(im.convert("RGB")).astype(np.float64) for im in (a, b))
        same_text = dict(a.text) == dict(b.text)  # type: ignore[attr-defined]
    mse = float(((ours - theirs) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(json.dumps({"std": float(theirs.std())}))
    print(f"RESULT psnr_sd3_workflow_db={psnr:.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    print(f"RESULT text_chunks_equal={same_text}")
    return 0


def conditioning(cond: dict[str, torch.Tensor]) -> tuple[list, list]:
    positive = [[cond["context"], {"pooled_output": cond["pooled"]}]]
    negative = [[cond["negative_context"], {"pooled_output": cond["negative_pooled"]}]]
    return positive, negative


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = np.clip(255.0 * image[0].detach().cpu().numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def comfyd_side(work: Path, variant: str, slg: bool = False, lora: bool = False) -> Path:
    from comfyd.models.families import sd3
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    names = files(variant)
    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(names["unet"]).name).with_sampling(sd3.model_sampling(SHIFT))
    if lora:
        model = model.with_loras(manager.lora_patch(Path(LORA).name, 0.8))
    if slg:
        from comfyd.nodes.advanced.skip_layer_guidance import SkipLayerGuidanceSD3

        (model,) = SkipLayerGuidanceSD3().run(None, model, *SLG)  # type: ignore[arg-type]
    positive, negative = conditioning(load_file(str(work / names["cond"])))
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    out = common_ksampler(model, SEED, STEPS, CFG, "euler", "sgm_uniform", positive, negative, latent)
    path = work / f"comfyd-{variant}{'-slg' if slg else ''}{'-lora' if lora else ''}.png"
    to_png(vae_decode(manager.load_vae(Path(names["vae"]).name), out["samples"]), path)
    return path


def comfyui_side(work: Path, comfyui: Path, variant: str, slg: bool = False, lora: bool = False) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    names = files(variant)
    stored = comfy.utils.load_torch_file(str(work / names["unet"]))
    model = comfy.sd.load_diffusion_model_state_dict(dict(stored))
    built = set(model.model.diffusion_model.state_dict())
    if built != set(stored):  # ComfyUI loads non-strictly: make sure every weight is the file's
        raise SystemExit(f"ComfyUI's MMDiT differs from the file: {sorted(built ^ set(stored))[:8]}")
    (model,) = ModelSamplingSD3().patch(model, SHIFT)
    if lora:
        model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(work / LORA)), 0.8, 0)
    if slg:
        from comfy_extras.nodes_sd3 import SkipLayerGuidanceSD3

        model = SkipLayerGuidanceSD3.execute(model, *SLG).result[0]
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / names["vae"])))
    positive, negative = conditioning(comfy.utils.load_torch_file(str(work / names["cond"])))
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    (out,) = nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "sgm_uniform", positive, negative, latent)
    to_png(vae.decode(out["samples"]), work / f"comfyui-{variant}{'-slg' if slg else ''}{'-lora' if lora else ''}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--variant", choices=(*VARIANTS, "workflow"), default="medium")
    parser.add_argument("--slg", action="store_true", help="add SkipLayerGuidanceSD3 on both sides")
    parser.add_argument("--lora", action="store_true", help="add a LoRA (kohya + diffusers names) on both sides")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve(), args.variant, args.slg, args.lora)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    if args.variant == "workflow":
        return run_workflow(work, args.comfyui.resolve(), args.comfyui_python)
    make_files(work, args.variant)
    if args.lora:
        make_lora(work)
    ours = np.asarray(Image.open(comfyd_side(work, args.variant, args.slg, args.lora)).convert("RGB")).astype(np.float64)
    flags = [*(["--slg"] if args.slg else []), *(["--lora"] if args.lora else [])]
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--variant", args.variant, "--comfyui-side", *flags], check=True)
    suffix = ("-slg" if args.slg else "") + ("-lora" if args.lora else "")
    theirs = np.asarray(Image.open(work / f"comfyui-{args.variant}{suffix}.png").convert("RGB")).astype(np.float64)
    mse = float(((ours - theirs) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(json.dumps({"std": float(theirs.std())}))
    print(f"RESULT psnr_sd3_{args.variant}{suffix.replace('-', '_')}_db={psnr:.2f}")
    if flags:  # the patch must change the picture, or the comparison says nothing of it
        plain = work / f"comfyd-{args.variant}.png"
        if plain.is_file():
            base = np.asarray(Image.open(plain).convert("RGB")).astype(np.float64)
            print(f"RESULT {suffix.strip('-').replace('-', '_')}_changes_levels={int(np.abs(base - ours).max())}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
