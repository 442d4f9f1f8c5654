"""Lumina Image 2.0 held to ComfyUI itself (ComfyUI runs in its own Python, `--comfyui-side`, on CPU).

Three checks:

1. (default) the transformer + RenormCFG + sampler + VAE path. ComfyUI builds NextDiT with a fixed
   width (2304, 24 heads, 8 key/value heads, two refiner layers each side) and reads only the depth
   and the text width from the file, so the file is cut to one main layer at full width (random
   weights, bf16, loaded as a diffusion model alone). Gemma-2-2B is left out here: both sides get
   the same conditioning tensors (random 2304-wide contexts of 24 and 9 tokens, as a prompt and a
   negative of different lengths) and run RenormCFG (100, 1) -> KSampler (euler / simple, cfg 4,
   the model's own shift 6) -> VAEDecode with a full-size random Flux VAE.
       python bench/lumina2_comfyui_parity.py --workdir /tmp/lumina2-parity \
           --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python
   prints RESULT psnr_lumina2_db=... and max_diff=... (`--size 72`: an odd latent, padded).

2. `--gemma-full`: Gemma-2-2B at ComfyUI's fixed full size (2.6 B parameters, random, stored in
   bf16 under the work folder and deleted afterwards) through ComfyUI's CLIPLoader path
   (comfy.sd.load_clip, type lumina2) and comfyd's (ModelManager.load_clip), the same prompt with
   a weighted part, tokenized by the tiny SentencePiece model the file carries (comfyd ships no
   Gemma tokenizer). Prints RESULT psnr_gemma2_full_db=... over the conditioning tensors. Needs
   ~11 GB on the comfyd side (fp32 on CPU): run it under `flock /work/wt/heavy.lock`.

3. `--save-reference PATH`: what ComfyUI's own modules compute on comfyd's tiny files (`make-tiny
   --family lumina2`), for tests/families/test_lumina2.py: its NextDiT (instantiated at the tiny
   file's sizes, loaded strictly) at two latents and sigmas, and its Gemma 2 text path (its
   Gemma2BTokenizer on the file's SentencePiece model and its Gemma2_2BModel with the config cut
   to the file's sizes) on a weighted prompt, with the encoder's weights as stored (fp16) and cast
   to bf16 (as real files are); ComfyUI keeps them in that dtype, computes in fp32 and forms its
   norms' 1 + weight in the stored dtype.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

SIZE, STEPS, SEED, CFG = 64, 3, 5, 4.0
FILES = {
    "unet": "diffusion_models/lumina2-cut.safetensors",
    "vae": "vae/lumina2-ae-full.safetensors",
    "cond": "conditioning.safetensors",
    "gemma": "text_encoders/gemma2-2b-random-bf16.safetensors",
}
CUT = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "hidden_size": 2304, "num_layers": 1,
    "num_refiner_layers": 2, "num_attention_heads": 24, "num_kv_heads": 8, "multiple_of": 256,
    "ffn_dim_multiplier": None, "norm_eps": 1e-5, "axes_dim_rope": [32, 32, 32], "axes_lens": [300, 512, 512],
    "cap_feat_dim": 2304,
}  # fmt: skip
PROMPT = "a red fox (asleep in fresh snow:1.2), soft light"
TINY_PROMPT = "a small red fox (runs across:1.3) a snowy field at dawn"


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def make_files(work: Path) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _lumina2_transformer as transformer
    from comfyd.models.keymap import to_original, vae_translator
    from comfyd.models.loader import empty_vae

    if not (work / FILES["unet"]).is_file():
        net = tiny.random_module(transformer.empty_transformer(CUT), 0, "lumina2-cut").to(torch.bfloat16)
        stored = to_original(net.state_dict(), transformer.Lumina2Translator(CUT))
        stored["norm_final.weight"] = torch.ones(2304, dtype=torch.bfloat16)
        (work / "diffusion_models").mkdir(parents=True, exist_ok=True)
        save_file(stored, str(work / FILES["unet"]))
        del net, stored
    if not (work / FILES["vae"]).is_file():
        config = dict(
            tiny.full_configs("sd1").vae, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False
        )
        vae = tiny.random_module(empty_vae(config), 0, "lumina2-ae-full")
        (work / "vae").mkdir(parents=True, exist_ok=True)
        save_file(to_original(vae.state_dict(), vae_translator(config, "")), str(work / FILES["vae"]))
    if not (work / FILES["cond"]).is_file():
        g = torch.Generator().manual_seed(1)
        save_file(
            {
                "positive": torch.randn(1, 24, 2304, generator=g),
                "negative": torch.randn(1, 9, 2304, generator=g),
            },
            str(work / FILES["cond"]),
        )


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = np.clip(255.0 * image[0].detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def comfyd_side(work: Path, size: int) -> Path:
    from dataclasses import replace

    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.sampling.renorm_cfg import RenormCfg
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(FILES["unet"]).name)
    model = replace(model, guidance=model.guidance.with_cfg_function(RenormCfg(100.0, 1.0)))
    cond = load_file(str(work / FILES["cond"]))
    positive, negative = [[cond["positive"], {}]], [[cond["negative"], {}]]
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    out = common_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative, latent)
    path = work / f"comfyd-lumina2-{size}.png"
    to_png(vae_decode(manager.load_vae(Path(FILES["vae"]).name), out["samples"]), path)
    return path


def _comfyui(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")


def comfyui_side(work: Path, comfyui: Path, size: int) -> None:
    _comfyui(work, comfyui)
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_lumina2 import RenormCFG

    model = comfy.sd.load_diffusion_model(str(work / FILES["unet"]))
    model = RenormCFG.execute(model, 100.0, 1.0).result[0]
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / FILES["vae"])))
    cond = comfy.utils.load_torch_file(str(work / FILES["cond"]))
    # ComfyUI's Gemma encoder hands its (all-ones) attention mask on with the conditioning, and
    # Lumina 2's model takes the token count from it.
    positive, negative = ([[c, {"attention_mask": torch.ones(c.shape[:2], dtype=torch.long)}]]
                          for c in (cond["positive"], cond["negative"]))  # fmt: skip
    latent = {"samples": torch.zeros(1, 16, size // 8, size // 8)}
    (out,) = nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", "simple", positive, negative, latent)
    to_png(vae.decode(out["samples"]), work / f"comfyui-lumina2-{size}.png")


# --- Gemma-2-2B at full size ---------------------------------------------------------------------
def make_gemma(work: Path) -> Path:
    """A random Gemma-2-2B in bf16 (ComfyUI's fixed config) with the tiny SentencePiece model."""
    from comfyd.models import gemma2_encoder
    from comfyd.models.families._lumina2_tiny import tiny_spiece_model

    path = work / FILES["gemma"]
    if path.is_file():
        return path
    g = torch.Generator().manual_seed(3)
    hidden, inter, layers = 2304, 9216, 26

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)

    state = {
        "model.embed_tokens.weight": rand(256000, hidden, scale=0.02),
        "model.norm.weight": rand(hidden, scale=0.1),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": rand(2048, hidden, scale=hidden**-0.5),
            p + "self_attn.k_proj.weight": rand(1024, hidden, scale=hidden**-0.5),
            p + "self_attn.v_proj.weight": rand(1024, hidden, scale=hidden**-0.5),
            p + "self_attn.o_proj.weight": rand(hidden, 2048, scale=2048**-0.5),
            p + "mlp.gate_proj.weight": rand(inter, hidden, scale=hidden**-0.5),
            p + "mlp.up_proj.weight": rand(inter, hidden, scale=hidden**-0.5),
            p + "mlp.down_proj.weight": rand(hidden, inter, scale=inter**-0.5),
            **{p + n + ".weight": rand(hidden, scale=0.1) for n in (
                "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")},
        })  # fmt: skip
    state[gemma2_encoder.SPIECE_KEY] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def gemma_comfyd(work: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    clip = manager.load_clip([Path(FILES["gemma"]).name], "lumina2")
    with torch.no_grad():
        cond = encode_text(clip, PROMPT)[0][0]
    save_file({"cond": cond.float().contiguous()}, str(work / "comfyd-gemma.safetensors"))


def gemma_comfyui(work: Path, comfyui: Path) -> None:
    _comfyui(work, comfyui)
    import comfy.sd

    clip = comfy.sd.load_clip([str(work / FILES["gemma"])], clip_type=comfy.sd.CLIPType.LUMINA2)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))[0][0]
    save_file({"cond": cond.float().contiguous()}, str(work / "comfyui-gemma.safetensors"))


# --- the tiny reference for the default test suite -----------------------------------------------
def comfyui_reference(work: Path, comfyui: Path, out: Path) -> None:
    """ComfyUI's modules on comfyd's tiny files (see the module docstring, 3.)."""
    _comfyui(work, comfyui)
    import comfy.ops
    import comfy.text_encoders.llama as llama
    import comfy.text_encoders.lumina2 as lumina2
    from comfy.ldm.lumina.model import NextDiT
    from comfyd_tiny_names import NAMES  # written beside the reference by the comfyd side

    models = work / "models"
    net_sd = load_file(str(models / NAMES["transformer"]))
    dim, width = net_sd["x_embedder.weight"].shape
    head = net_sd["layers.0.attention.q_norm.weight"].shape[0]
    heads = dim // head
    net = NextDiT(
        patch_size=2, in_channels=width // 4, dim=dim, n_layers=2, n_refiner_layers=1, n_heads=heads,
        n_kv_heads=(net_sd["layers.0.attention.qkv.weight"].shape[0] // head - heads) // 2, qk_norm=True,
        cap_feat_dim=net_sd["cap_embedder.1.weight"].shape[1], axes_dims=[head // 3] * 3, axes_lens=[300, 512, 512],
        dtype=torch.float32, operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    net.load_state_dict(net_sd, strict=True)
    g = torch.Generator().manual_seed(7)
    tensors: dict[str, torch.Tensor] = {
        "x": torch.randn(2, 16, 6, 8, generator=g), "sigma": torch.tensor([0.9, 0.35]),
        "context": torch.randn(2, 11, net_sd["cap_embedder.1.weight"].shape[1], generator=g),
        "x_odd": torch.randn(1, 16, 5, 7, generator=g), "sigma_odd": torch.tensor([0.6]),
    }  # fmt: skip
    with torch.no_grad():
        tensors["out"] = net(tensors["x"], tensors["sigma"], tensors["context"], 11)
        tensors["out_odd"] = net(tensors["x_odd"], tensors["sigma_odd"], tensors["context"][:1], 11)

    te_sd = load_file(str(models / NAMES["gemma2_2b"]))
    config = {
        "vocab_size": te_sd["model.embed_tokens.weight"].shape[0], "hidden_size": te_sd["model.norm.weight"].shape[0],
        "intermediate_size": te_sd["model.layers.0.mlp.gate_proj.weight"].shape[0],
        "num_hidden_layers": 1 + max(int(k.split(".")[2]) for k in te_sd if k.startswith("model.layers.")),
    }  # fmt: skip
    head_dim = te_sd["model.layers.0.self_attn.q_proj.weight"].shape[0] // 8
    config["num_attention_heads"] = 8
    config["num_key_value_heads"] = te_sd["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim
    base = llama.Gemma2_2B_Config

    class CutConfig(base):  # ComfyUI's Gemma 2 config with the tiny file's sizes
        def __init__(self, **kw: object) -> None:
            super().__init__(**{**config, **kw})
            self.head_dim = head_dim

    llama.Gemma2_2B_Config = CutConfig
    tokenizer = lumina2.LuminaTokenizer(tokenizer_data={"spiece_model": te_sd["spiece_model"]})
    import comfy.utils

    # In the dtype ComfyUI's loaders keep a Gemma in: its weights' (llama_detect; in a real file they
    # outweigh the SentencePiece bytes, in this tiny one they do not), fp16 here.
    weights = {k: v for k, v in te_sd.items() if k != "spiece_model"}
    model = lumina2.LuminaModel(device="cpu", dtype=comfy.utils.weight_dtype(weights))
    model.load_sd(weights)
    tokens = tokenizer.tokenize_with_weights(TINY_PROMPT)
    cond, _pooled, extra = model.encode_token_weights(tokens)
    # The same encoder stored in bf16, as real files are: ComfyUI keeps it in bf16, computes in fp32.
    model_bf16 = lumina2.LuminaModel(device="cpu", dtype=torch.bfloat16)
    model_bf16.load_sd({k: v.to(torch.bfloat16) for k, v in te_sd.items() if k != "spiece_model"})
    tensors["gemma_cond_bf16"] = model_bf16.encode_token_weights(tokens)[0].float()
    llama.Gemma2_2B_Config = base
    tensors["gemma_ids"] = torch.tensor([t for t, _ in tokens["gemma2_2b"][0]])
    tensors["gemma_weights"] = torch.tensor([w for _, w in tokens["gemma2_2b"][0]])
    tensors["gemma_cond"] = cond.float()
    tensors["gemma_mask"] = extra["attention_mask"]
    digests = {name: hashlib.sha256((models / rel).read_bytes()).hexdigest() for name, rel in NAMES.items()}
    metadata = {"sha256": json.dumps(digests), "prompt": TINY_PROMPT}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=metadata)


def _child_peak_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def _run_comfyui(args: argparse.Namespace, *extra: str) -> None:
    cmd = [
        args.comfyui_python,
        __file__,
        "--workdir",
        str(args.workdir),
        "--comfyui",
        str(args.comfyui),
        *extra,
    ]
    subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--size", type=int, default=SIZE)
    parser.add_argument("--gemma-full", action="store_true")
    parser.add_argument("--save-reference", type=Path)
    parser.add_argument("--comfyui-side", choices=("sample", "gemma", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--comfyd-side", choices=("make-gemma", "gemma"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir = work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            if args.comfyui_side == "sample":
                comfyui_side(work, args.comfyui.resolve(), args.size)
            elif args.comfyui_side == "gemma":
                gemma_comfyui(work, args.comfyui.resolve())
            else:
                sys.path.insert(0, str(work))
                comfyui_reference(work, args.comfyui.resolve(), args.save_reference.resolve())
        return 0
    work.mkdir(parents=True, exist_ok=True)
    if args.comfyd_side == "make-gemma":
        make_gemma(work)
        return 0
    if args.comfyd_side == "gemma":
        gemma_comfyd(work)
        return 0
    if args.save_reference is not None:
        from comfyd.models.families import _lumina2_tiny
        from comfyd.models.tiny import make_tiny

        make_tiny(work / "models", family="lumina2")
        (work / "comfyd_tiny_names.py").write_text(f"NAMES = {dict(_lumina2_tiny.NAMES)!r}\n")
        _run_comfyui(
            args, "--comfyui-side", "reference", "--save-reference", str(args.save_reference.resolve())
        )
        print(f"wrote {args.save_reference}")
        return 0
    if args.gemma_full:  # each side in a process of its own, one after the other (memory)
        try:
            subprocess.run([sys.executable, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                            "--comfyd-side", "make-gemma"], check=True)  # fmt: skip
            _run_comfyui(args, "--comfyui-side", "gemma")
            print(f"RESULT gemma2_full_comfyui_peak_rss_gb={_child_peak_gb():.1f}")
            subprocess.run([sys.executable, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                            "--comfyd-side", "gemma"], check=True)  # fmt: skip
            print(f"RESULT gemma2_full_peak_rss_gb={_child_peak_gb():.1f} (largest child so far)")
        finally:
            (work / FILES["gemma"]).unlink(missing_ok=True)
        ours = load_file(str(work / "comfyd-gemma.safetensors"))["cond"]
        theirs = load_file(str(work / "comfyui-gemma.safetensors"))["cond"]
        peak = float(theirs.abs().max())
        print(f"RESULT gemma2_full_tokens={theirs.shape[1]} (comfyd {ours.shape[1]})")
        print(f"RESULT psnr_gemma2_full_db={psnr(ours.numpy(), theirs.numpy(), peak):.2f}")
        print(f"RESULT gemma2_full_max_diff={float((ours - theirs).abs().max()):.3g} (peak {peak:.3g})")
        return 0
    make_files(work)
    ours = np.asarray(Image.open(comfyd_side(work, args.size)).convert("RGB"))
    _run_comfyui(args, "--comfyui-side", "sample", "--size", str(args.size))
    theirs = np.asarray(Image.open(work / f"comfyui-lumina2-{args.size}.png").convert("RGB"))
    suffix = "" if args.size == SIZE else f"_{args.size}"
    print(f"RESULT psnr_lumina2{suffix}_db={psnr(ours, theirs):.2f}")
    print(f"RESULT max_diff{suffix}={int(np.abs(ours.astype(int) - theirs.astype(int)).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
