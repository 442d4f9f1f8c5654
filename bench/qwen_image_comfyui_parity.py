"""Qwen-Image held to ComfyUI itself: the transformer + sampler + VAE path on shared conditioning
tensors, and the text path (tokenizer, chat template, Qwen2.5-VL, dropped tokens) on a tiny config.

ComfyUI builds the Qwen-Image transformer from the file's input width and depth but with fixed
widths (24 heads of 128, 3584-wide text), its VAE as the fixed-size Wan 2.1 VAE, and
Qwen2.5-VL-7B only at full size (~30 GB in fp32: out of reach here; tests/fidelity/README.md).
So the picture path gets a transformer cut to one block at the real widths (random weights, fp16),
a full-size random VAE, and the same random conditioning tensors on both sides instead of prompts
(a positive context of 12 tokens and a negative one of 7: different lengths, run as separate
batches), through ModelSamplingAuraFlow (shift 3.1) -> KSampler (euler / simple, 3 steps, cfg 2.5,
64x64, an EmptySD3LatentImage-shaped latent) -> VAEDecode, once as it is, once with CFGNorm
(strength 1) on the model, and once with a reference latent in the positive conditioning (what
ReferenceLatent / Qwen-Image-Edit's encoders set: an odd 5x3 latent, its tokens appended). The text path compares ComfyUI's
QwenImageTokenizer and QwenImageTEModel, the latter's Qwen2.5-VL config swapped for the tiny one
of comfyd's test files (and its vision tower cut to one block, which text never reaches), with
comfyd's tokenize + encode on the same tiny file, for three prompts.

    python bench/qwen_image_comfyui_parity.py --workdir /tmp/qwen-parity \
        --comfyui /path/to/ComfyUI --comfyui-python /path/to/comfyui-venv/bin/python

(`--size 80`: an odd 5x5 patch grid, where ComfyUI centres the rotary positions one place off
diffusers' table) prints RESULT psnr_qwen_image_db=... max_diff=..., psnr_qwen_image_cfgnorm_db=... and
psnr_qwen_image_ref_db=... (comfyd's PNGs against ComfyUI's) and, per
prompt, RESULT qwen_prompt<i>_tokens_identical=... cond_max_abs_diff=... The ComfyUI side runs in
ComfyUI's own Python (`--comfyui-side`), on CPU, through its public functions.
"""

from __future__ import annotations

import argparse
import functools
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
SEED = 11
CFG = 2.5
SHIFT = 3.1
FILES = {"unet": "diffusion_models/qwen-image-cut.safetensors", "vae": "vae/qwen-image-vae-full.safetensors",
         "cond": "conditioning.safetensors", "text": "text_encoders/comfyd-tiny-qwen25-vl.safetensors"}  # fmt: skip
PROMPTS = (
    "a red fox in the snow",
    'a sign that says "Qwen-Image", 中文标题, (not a weight:1.3) \\(escaped\\)',
    "<|im_start|>user\nmy own template<|im_end|>\n<|im_start|>assistant\n",
)
TINY_TEXT = {"vocab_size": 152064, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _qwen_image_tiny
    from comfyd.models.families import _qwen_image_transformer as transformer
    from comfyd.models.families import _wan_vae as video_vae

    if not (work / FILES["unet"]).is_file():
        config = {
            "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False,
            "axes_dims_rope": [16, 56, 56],
        }  # fmt: skip
        net = tiny.random_module(transformer.empty_transformer(config), 0, "qwen-image-cut")
        (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(work / FILES["unet"]))
        del net
    if not (work / FILES["vae"]).is_file():
        vae = tiny.random_module(video_vae.empty_vae({"base_dim": 96, "z_dim": 16}), 0, "qwen-image-vae-full")
        (work / "vae").mkdir(parents=True, exist_ok=True)
        stored = {video_vae.original_name(k): v.contiguous() for k, v in vae.state_dict().items()}
        save_file(stored, str(work / FILES["vae"]))
        del vae
    if not (work / FILES["text"]).is_file():
        _qwen_image_tiny.write_tiny_qwen_image(work)
    if "reference" not in (load_file(str(work / FILES["cond"])) if (work / FILES["cond"]).is_file() else {}):
        generator = torch.Generator().manual_seed(1)
        save_file({"positive": torch.randn(1, 12, 3584, generator=generator),
                   "negative": torch.randn(1, 7, 3584, generator=generator),
                   # A reference latent as a Qwen VAE encodes a 40x24 picture: [1, 16, 1, 5, 3].
                   "reference": torch.randn(1, 16, 1, 5, 3, generator=generator)}, str(work / FILES["cond"]))  # fmt: skip


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = image.reshape(-1, *image.shape[-3:])[0]
    Image.fromarray(np.clip(255.0 * pixels.detach().cpu().numpy(), 0, 255).astype(np.uint8)).save(path)


def comfyd_side(work: Path) -> None:
    from dataclasses import replace

    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.cfg_norm import CfgNorm
    from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES["unet"]).name)
    model = model.with_sampling(FlowModelSampling(TimeShiftSchedule(shift=SHIFT, multiplier=1.0)))
    cond = load_file(str(work / FILES["cond"]))
    positive = [[cond["positive"], {"pooled_output": None}]]
    negative = [[cond["negative"], {"pooled_output": None}]]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    normed = replace(model, guidance=model.guidance.with_post_cfg(CfgNorm(1.0)))
    referenced = [[cond["positive"], {"pooled_output": None, "reference_latents": [cond["reference"]]}]]
    runs = (
        ("comfyd", model, positive),
        ("comfyd-cfgnorm", normed, positive),
        ("comfyd-ref", model, referenced),
    )
    outs = {name: common_ksampler(m, SEED, STEPS, CFG, "euler", "simple", p, negative, latent)
            for name, m, p in runs}  # fmt: skip
    del model, normed
    gc.collect()
    vae = manager.load_vae(Path(FILES["vae"]).name)
    for name, out in outs.items():
        to_png(vae_decode(vae, out["samples"]), work / f"{name}.png")


def comfyd_text(work: Path) -> dict[str, torch.Tensor]:
    from comfyd.models import qwen25_encoder, standalone
    from comfyd.models.devices import compute_plan

    _, encoder, _ = standalone.load_text_encoder(work / FILES["text"], compute_plan("cpu", "fp32"), False)
    tokenizer = qwen25_encoder.shipped_tokenizer()
    out = {}
    for i, prompt in enumerate(PROMPTS):
        ids = qwen25_encoder.tokenize(tokenizer, prompt)
        out[f"tokens{i}"] = torch.tensor(ids)
        out[f"cond{i}"] = qwen25_encoder.encode(encoder, ids)
    return out


def comfyui_side(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_cfg import CFGNorm
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    save_file(comfyui_text(work), str(work / "comfyui-text.safetensors"))
    model = comfy.sd.load_diffusion_model(str(work / FILES["unet"]))
    (model,) = ModelSamplingAuraFlow().patch_aura(model, SHIFT)
    cond = comfy.utils.load_torch_file(str(work / FILES["cond"]))
    positive, negative = [[cond["positive"], {}]], [[cond["negative"], {}]]
    latent = {"samples": torch.zeros(1, 16, SIZE // 8, SIZE // 8)}
    normed = CFGNorm.execute(model, 1.0).result[0]
    referenced = [[cond["positive"], {"reference_latents": [cond["reference"]]}]]
    runs = (
        ("comfyui", model, positive),
        ("comfyui-cfgnorm", normed, positive),
        ("comfyui-ref", model, referenced),
    )
    outs = {name: nodes.common_ksampler(m, SEED, STEPS, CFG, "euler", "simple", p, negative, latent)[0]
            for name, m, p in runs}  # fmt: skip
    del model, normed
    gc.collect()
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / FILES["vae"])))
    for name, out in outs.items():
        to_png(vae.decode(out["samples"]), work / f"{name}.png")


def comfyui_text(work: Path) -> dict[str, torch.Tensor]:
    """ComfyUI's Qwen-Image tokenizer and text model (its prompt template and dropped tokens),
    the Qwen2.5-VL config swapped for the tiny one of comfyd's test file."""
    import comfy.text_encoders.llama as llama
    import comfy.text_encoders.qwen_image as qwen_image
    import comfy.text_encoders.qwen_vl as qwen_vl

    full = llama.Qwen25_7BVLI_Config

    class TinyConfig(full):  # type: ignore[misc, valid-type]
        head_dim = 8
        rope_dims = [1, 1, 2]

    llama.Qwen25_7BVLI_Config = lambda **kw: TinyConfig(**{**TINY_TEXT, **kw})
    qwen_vl.Qwen2VLVisionTransformer = functools.partial(
        qwen_vl.Qwen2VLVisionTransformer, num_layers=1, intermediate_size=64
    )
    te = qwen_image.QwenImageTEModel(device="cpu", dtype=torch.float32)
    state = {k: v.float() for k, v in load_file(str(work / FILES["text"])).items() if k.startswith("model.")}
    missing, unexpected = getattr(te, te.clip).transformer.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("visual.") for k in missing), (missing, unexpected)
    tokenizer = qwen_image.QwenImageTokenizer()
    out: dict[str, torch.Tensor] = {}
    for i, prompt in enumerate(PROMPTS):
        pairs = tokenizer.tokenize_with_weights(prompt)
        out[f"tokens{i}"] = torch.tensor([t for t, *_ in pairs["qwen25_7b"][0]])
        with torch.no_grad():
            out[f"cond{i}"] = te.encode_token_weights(pairs)[0].float().contiguous()
    return out


def main() -> int:
    global SIZE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=SIZE, help="picture size (80: an odd 5x5 patch grid)")
    parser.add_argument(
        "--reuse-comfyui", action="store_true", help="compare with ComfyUI's outputs of a former run"
    )
    args = parser.parse_args()
    SIZE = args.size
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_side(work, args.comfyui.resolve())
        return 0
    work.mkdir(parents=True, exist_ok=True)
    make_files(work)
    ours_text = comfyd_text(work)
    comfyd_side(work)
    gc.collect()
    if not args.reuse_comfyui:
        subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                        "--comfyui-side", "--size", str(SIZE)], check=True)  # fmt: skip
    for variant in ("", "-cfgnorm", "-ref"):
        ours = np.asarray(Image.open(work / f"comfyd{variant}.png").convert("RGB")).astype(np.float64)
        theirs = np.asarray(Image.open(work / f"comfyui{variant}.png").convert("RGB")).astype(np.float64)
        mse = float(((ours - theirs) ** 2).mean())
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        name = variant.replace("-", "_")
        print(json.dumps({f"std{name}": float(theirs.std())}))
        print(f"RESULT psnr_qwen_image{name}_db={psnr:.2f} max_diff{name}={int(np.abs(ours - theirs).max())}")
    theirs_text = load_file(str(work / "comfyui-text.safetensors"))
    for i in range(len(PROMPTS)):
        same = torch.equal(ours_text[f"tokens{i}"], theirs_text[f"tokens{i}"])
        a, b = ours_text[f"cond{i}"], theirs_text[f"cond{i}"]
        diff = float((a - b).abs().max()) if a.shape == b.shape else float("nan")
        print(
            f"RESULT qwen_prompt{i}_tokens_identical={same} cond_max_abs_diff={diff:.3g} shape={tuple(a.shape)}"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
