"""HiDream-I1 held to ComfyUI itself: the transformer + sampler + VAE path, and the Llama
all-layers text path.

Transformer (default): ComfyUI 0.3.64 fixes every size of a HiDream transformer (20 heads of 128,
16 double and 32 single blocks, 4 experts with 2 active, 4096-wide T5 and Llama inputs, a
2048-wide pooled vector, Llama layer i into block i); nothing is read from the file but its key.
A full-size transformer (17B parameters) does not fit this machine, so the ComfyUI side runs its
own model code on a cut file with four of its detected values replaced by the file's (depth 2+2,
2 heads, 4 experts, Llama layers [0, 1, 2, 3]: the first entries of its list); widths and
everything else are ComfyUI's. Both sides get the same conditioning tensors (T5 context
[1, 128, 4096], pooled [1, 2048], Llama stack [1, 32, 128, 4096] per prompt), then run
ModelSamplingSD3 (shift 3) -> KSampler (euler / simple, cfg 5, 3 steps, 64x48: a non-square
latent, which diffusers would pad and ComfyUI does not) -> VAEDecode on the same files (the cut
transformer, a full-size random 16-channel VAE).

    python bench/hidream_comfyui_parity.py --workdir /tmp/hidream-parity \
        --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python

prints RESULT psnr_hidream_db=... and max_diff=... (comfyd's PNG against ComfyUI's).

`--save-reference PATH`: the default suite's reference (tests/families/test_hidream.py): one
double and one single block, narrower text and pooled inputs (64 / 96 / 48 wide; these widths
replaced in ComfyUI's detected config as well), T5 and Llama 32 tokens, the sampled latent only
(ComfyUI's VAE is full-size; the default run covers it). Prints how far comfyd's latent is.

`--text`: the Llama text path on comfyd's tiny HiDream files (`comfyd models make-tiny --family
hidream`: a 4-layer Llama, 256 wide, and its small Llama-3-style tokenizer). ComfyUI's side is its
SDTokenizer / SDClipModel with the arguments its HiDream LLAMA3Tokenizer and LLAMAModel pass
(begin token, <|eot_id|> padding to 128 and masked, layer "all", no final norm on intermediates),
its Llama2 module at the tiny config, then `[:, 1:]` as HiDreamTEModel drops the embeddings;
comfyd's is the HiDream CLIP's Llama output. Prompts: a plain one and a weighted one (ComfyUI
re-weights by layer index there, see comfyd/models/hidream_llama.py). Prints
RESULT llama_all_layers_max_abs_diff_{plain,weighted}=... and the shapes; also whether the T5
prompt's first 128-token chunk equals ComfyUI's T5XXLTokenizer(min_length=128, max_length=128)[0]
for a short prompt, one split long segment and a short weighted segment moved past the chunk.
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

WIDTH, HEIGHT = 64, 48
STEPS = 3
SEED = 7
CFG = 5.0
SHIFT = 3.0
SCHEDULER = "simple"
CUT = {"num_layers": 2, "num_single_layers": 2, "num_attention_heads": 2, "num_routed_experts": 4}
# `--save-reference` cuts widths too (text and pooled inputs) and depth to 1+1, for the default suite.
REFERENCE_CUT = {**CUT, "num_layers": 1, "num_single_layers": 1, "caption_channels": [64, 96], "text_emb_dim": 48}
FILES = {"unet": "diffusion_models/hidream-cut.safetensors", "vae": "vae/hidream-vae-full.safetensors",
         "cond": "conditioning.safetensors"}  # fmt: skip
# `--save-reference`: the default suite's variant (tests/families/test_hidream.py): the sampled
# latent only (ComfyUI's VAE is full-size, held to ComfyUI by the default run), REFERENCE_CUT and
# shorter text (T5 32 tokens, Llama 32), so the test rebuilds the inputs in a second or two.
REFERENCE_FILES = {"unet": "diffusion_models/hidream-cut-narrow.safetensors", "cond": "conditioning-short.safetensors"}
TEXT_TOKENS = {False: (128, 128), True: (32, 32)}  # (T5, Llama) tokens of the conditioning
PROMPTS = {"plain": "a small red fox runs across a snowy field", "weighted": "a (small red fox:1.3) runs at dawn"}
# T5 prompts around HiDream's 128-token chunk: short, one long segment (split at the chunk), and a
# short weighted segment that does not fit (moved whole: the first chunk ends early, unpadded).
_LONG = "a small red fox runs across a snowy field at dawn under a pale winter sky, " * 9
T5_PROMPTS = {"short": "a red fox", "long": _LONG, "straddling": _LONG[:430] + " (bright red scarf:1.2) and more"}


def cut(short: bool) -> dict:
    return REFERENCE_CUT if short else CUT


def cut_config(short: bool = False) -> dict:
    from comfyd.models.families import _hidream_transformer as transformer

    blocks = cut(short)["num_layers"] + cut(short)["num_single_layers"]
    return {
        "patch_size": 2, "in_channels": 16, "out_channels": 16, "caption_channels": [4096, 4096],
        "text_emb_dim": 2048, **cut(short), "attention_head_dim": transformer.HEAD_DIM, "num_activated_experts": 2, "axes_dims_rope": list(transformer.AXES_DIMS_ROPE),
        "max_resolution": [128, 128], "llama_layers": list(range(blocks)),
    }  # fmt: skip


def files(short: bool) -> dict[str, str]:
    return REFERENCE_FILES if short else FILES


def make_conditioning(short: bool) -> dict[str, torch.Tensor]:
    """The fixed conditioning tensors both sides get (seeded: the test rebuilds them)."""
    t5_tokens, llama_tokens = TEXT_TOKENS[short]
    config = cut_config(short)
    t5_width, llama_width = config["caption_channels"]
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for side in ("", "negative_"):
        tensors[f"{side}context"] = torch.randn(1, t5_tokens, t5_width, generator=generator)
        tensors[f"{side}pooled"] = torch.randn(1, config["text_emb_dim"], generator=generator)
        tensors[f"{side}llama"] = torch.randn(1, 32, llama_tokens, llama_width, generator=generator)
    return tensors


def make_transformer(path: Path, short: bool = False) -> None:
    from comfyd.models import tiny
    from comfyd.models.families import _hidream_transformer as transformer
    from comfyd.models.keymap import to_original

    net = tiny.random_module(transformer.empty_transformer(cut_config(short)), 0, "hidream-cut")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(to_original(net.state_dict(), transformer.HiDreamTranslator("")), str(path))


def make_files(work: Path, short: bool = False) -> None:
    from comfyd.models import tiny
    from comfyd.models.keymap import to_original, vae_translator
    from comfyd.models.loader import empty_vae

    names = files(short)
    if all((work / f).is_file() for f in names.values()):
        return
    make_transformer(work / names["unet"], short)
    save_file(make_conditioning(short), str(work / names["cond"]))
    if short:
        return
    vae_config = dict(tiny.full_configs("sd1").vae, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    vae = tiny.random_module(empty_vae(vae_config), 0, "hidream-vae-full")
    (work / "vae").mkdir(parents=True, exist_ok=True)
    save_file(to_original(vae.state_dict(), vae_translator(vae_config, "")), str(work / FILES["vae"]))


def conditioning(cond: dict[str, torch.Tensor]) -> tuple[list, list]:
    def entry(side: str) -> list:
        return [[cond[f"{side}context"], {"pooled_output": cond[f"{side}pooled"], "conditioning_llama3": cond[f"{side}llama"]}]]

    return entry(""), entry("negative_")


def to_png(image: torch.Tensor, path: Path) -> None:
    pixels = np.clip(255.0 * image[0].detach().cpu().numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def comfyd_sample(work: Path, short: bool) -> tuple[torch.Tensor, object]:
    """(sampled latent, the model manager) of comfyd on the bench's files."""
    from comfyd.models.families import hidream
    from comfyd.models.manager import ModelManager
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    names = files(short)
    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    model = manager.load_diffusion_model(Path(names["unet"]).name).with_sampling(hidream.model_sampling(SHIFT))
    positive, negative = conditioning(load_file(str(work / names["cond"])))
    latent = {"samples": torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8)}
    out = common_ksampler(model, SEED, STEPS, CFG, "euler", SCHEDULER, positive, negative, latent)
    return out["samples"], manager


def comfyd_side(work: Path) -> Path:
    from comfyd.models.vae_codec import vae_decode

    samples, manager = comfyd_sample(work, False)
    path = work / "comfyd-hidream.png"
    to_png(vae_decode(manager.load_vae(Path(FILES["vae"]).name), samples), path)  # type: ignore[attr-defined]
    return path


def comfyui_side(work: Path, comfyui: Path, reference: Path | None = None) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.model_detection
    import comfy.sd
    import comfy.utils
    import nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    detect = comfy.model_detection.detect_unet_config
    replaced = cut(reference is not None)

    def cut_detect(state_dict, key_prefix, metadata=None):  # the bench's only change to ComfyUI
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is not None and config.get("image_model") == "hidream":
            blocks = replaced["num_layers"] + replaced["num_single_layers"]
            config = {**config, **replaced, "llama_layers": config["llama_layers"][:blocks]}
        return config

    comfy.model_detection.detect_unet_config = cut_detect
    names = files(reference is not None)
    stored = comfy.utils.load_torch_file(str(work / names["unet"]))
    model = comfy.sd.load_diffusion_model_state_dict(dict(stored))
    built = set(model.model.diffusion_model.state_dict())
    if built != set(stored):  # ComfyUI loads non-strictly: make sure every weight is the file's
        raise SystemExit(f"ComfyUI's HiDream model differs from the file: {sorted(built ^ set(stored))[:8]}")
    (model,) = ModelSamplingSD3().patch(model, SHIFT)
    positive, negative = conditioning(comfy.utils.load_torch_file(str(work / names["cond"])))
    latent = {"samples": torch.zeros(1, 16, HEIGHT // 8, WIDTH // 8)}
    (out,) = nodes.common_ksampler(model, SEED, STEPS, CFG, "euler", SCHEDULER, positive, negative, latent)
    if reference is not None:
        save_file({"samples": out["samples"].float().contiguous()}, str(reference))
        return
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(work / names["vae"])))
    to_png(vae.decode(out["samples"]), work / "comfyui-hidream.png")


# --- the Llama text path --------------------------------------------------------------------------


def comfyd_text(work: Path) -> None:
    from comfyd.models.families import _hidream_tiny
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encoder_outputs, tokenize_for_encoder
    from comfyd.settings import Settings

    if not (work / _hidream_tiny.NAMES["llama"]).is_file():
        _hidream_tiny.write_tiny_hidream(work)
    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home", dtype="fp32"))
    clip = manager.load_clip([Path(_hidream_tiny.NAMES["llama"]).name], "hidream")
    out = {}
    for name, text in PROMPTS.items():
        tokens = {"llama": tokenize_for_encoder(clip, "llama", text)}
        out[name] = encoder_outputs(clip, tokens)["llama"][0]
        out[f"{name}_ids"] = torch.tensor([t for t, _ in tokens["llama"][0]])
    from comfyd.models import t5_first_chunk

    for name, text in T5_PROMPTS.items():
        out[f"t5_{name}"] = torch.tensor([[t, w] for t, w in t5_first_chunk.first_chunk(text, 128, 128)])
    save_file(out, str(work / "comfyd-llama.safetensors"))


def comfyui_text(work: Path, comfyui: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.text_encoders.llama
    from comfy import sd1_clip
    from transformers import PreTrainedTokenizerFast

    from comfyd.models.families import _hidream_tiny, _hunyuan_tiny

    folder = work / Path(_hidream_tiny.NAMES["tokenizer"]).parent
    # ComfyUI names LlamaTokenizerFast, which transformers 5 (installed here) rebuilds as a
    # SentencePiece-style pipeline; PreTrainedTokenizerFast reads the byte-level tokenizer.json as
    # transformers 4's LlamaTokenizerFast does (bench/hunyuan_comfyui_parity.py, the same issue).
    copy = work / "comfyui-llama-tokenizer"
    copy.mkdir(exist_ok=True)
    (copy / "tokenizer.json").write_bytes((folder / "tokenizer.json").read_bytes())
    (copy / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "add_bos_token": True,
        "add_eos_token": False, "clean_up_tokenization_spaces": True, "tokenizer_class": "LlamaTokenizerFast",
    }))  # fmt: skip
    fast = PreTrainedTokenizerFast.from_pretrained(str(copy))
    begin, eot = fast.convert_tokens_to_ids("<|begin_of_text|>"), fast.convert_tokens_to_ids("<|eot_id|>")
    # HiDream's LLAMA3Tokenizer arguments, on the tiny vocabulary.
    tokenizer = sd1_clip.SDTokenizer(
        str(copy), pad_with_end=False, embedding_size=256, embedding_key="llama",
        tokenizer_class=PreTrainedTokenizerFast, has_start_token=True, has_end_token=False, pad_to_max_length=False,
        max_length=99999999, pad_token=eot, min_length=128, tokenizer_data={},
    )  # fmt: skip
    config = {**_hunyuan_tiny.TINY_LLAMA, "vocab_size": fast.vocab_size + len(fast.get_added_vocab())}
    config = {k: v for k, v in config.items() if k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                                                       "rope_theta", "vocab_size")}  # fmt: skip
    stored = load_file(str(work / _hidream_tiny.NAMES["llama"]))
    config["vocab_size"] = stored["model.embed_tokens.weight"].shape[0]
    # HiDream's LLAMAModel arguments (layer "all", begin / pad ids), the Llama2 module at the tiny size.
    model = sd1_clip.SDClipModel(
        device="cpu", layer="all", layer_idx=None, textmodel_json_config=config, dtype=torch.float32,
        special_tokens={"start": begin, "pad": eot}, layer_norm_hidden_state=False,
        model_class=comfy.text_encoders.llama.Llama2, enable_attention_masks=True, return_attention_masks=True,
        model_options={"model_name": "llama"},
    )  # fmt: skip
    missing, unexpected = model.load_sd(stored)
    if unexpected or [k for k in missing if "rotary" not in k and "inv_freq" not in k]:
        raise SystemExit(f"the tiny Llama does not load in ComfyUI's module: {missing[:5]} {unexpected[:5]}")
    out = {}
    for name, text in PROMPTS.items():
        tokens = tokenizer.tokenize_with_weights(text)
        out[f"{name}_ids"] = torch.tensor([t for t, _w, *_ in tokens[0]])
        out[name] = model.encode_token_weights(tokens)[0][:, 1:].contiguous()
    from comfy.text_encoders.sd3_clip import T5XXLTokenizer

    t5 = T5XXLTokenizer(min_length=128, max_length=128)  # HiDreamTokenizer's T5, of which it keeps [0]
    for name, text in T5_PROMPTS.items():
        out[f"t5_{name}"] = torch.tensor([[t, w] for t, w, *_ in t5.tokenize_with_weights(text)[0]])
    save_file(out, str(work / "comfyui-llama.safetensors"))


def run_text(work: Path, comfyui: Path, comfyui_python: str) -> int:
    comfyd_text(work)
    subprocess.run([comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(comfyui), "--text",
                    "--comfyui-side"], check=True)  # fmt: skip
    ours, theirs = load_file(str(work / "comfyd-llama.safetensors")), load_file(str(work / "comfyui-llama.safetensors"))
    for name in PROMPTS:
        same_ids = torch.equal(ours[f"{name}_ids"], theirs[f"{name}_ids"])
        print(json.dumps({name: {"comfyd": list(ours[name].shape), "comfyui": list(theirs[name].shape)}}))
        print(f"RESULT llama_token_ids_equal_{name}={same_ids}")
        if ours[name].shape == theirs[name].shape:
            diff = float((ours[name] - theirs[name]).abs().max())
            print(f"RESULT llama_all_layers_max_abs_diff_{name}={diff:.3g}")
            print(f"RESULT llama_all_layers_scale_{name}={float(theirs[name].abs().max()):.3g}")
    for name in T5_PROMPTS:
        a, b = ours[f"t5_{name}"], theirs[f"t5_{name}"]
        print(f"RESULT t5_first_chunk_equal_{name}={a.shape == b.shape and torch.equal(a, b)} (length {len(b)})")
    return 0


def save_reference(work: Path, comfyui: Path, comfyui_python: str, reference: Path) -> int:
    make_files(work, short=True)
    subprocess.run([comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(comfyui), "--comfyui-side",
                    "--save-reference", str(reference)], check=True)  # fmt: skip
    samples, _ = comfyd_sample(work, True)
    theirs = load_file(str(reference))["samples"]
    print(f"RESULT reference_latent_max_abs_diff={float((samples - theirs).abs().max()):.3g}")
    print(f"RESULT reference_latent_std={float(theirs.std()):.3g}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--text", action="store_true", help="the Llama all-layers text path instead")
    parser.add_argument("--save-reference", type=Path, help="write the default suite's ComfyUI reference here")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    reference = args.save_reference.resolve() if args.save_reference else None
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            if args.text:
                comfyui_text(work, args.comfyui.resolve())
            else:
                comfyui_side(work, args.comfyui.resolve(), reference)
        return 0
    work.mkdir(parents=True, exist_ok=True)
    if args.text:
        return run_text(work, args.comfyui.resolve(), args.comfyui_python)
    if reference is not None:
        return save_reference(work, args.comfyui.resolve(), args.comfyui_python, reference)
    make_files(work)
    ours = np.asarray(Image.open(comfyd_side(work)).convert("RGB")).astype(np.float64)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--comfyui-side"], check=True)  # fmt: skip
    theirs = np.asarray(Image.open(work / "comfyui-hidream.png").convert("RGB")).astype(np.float64)
    mse = float(((ours - theirs) ** 2).mean())
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(json.dumps({"std": float(theirs.std())}))
    print(f"RESULT psnr_hidream_db={psnr:.2f}")
    print(f"RESULT max_diff={int(np.abs(ours - theirs).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
