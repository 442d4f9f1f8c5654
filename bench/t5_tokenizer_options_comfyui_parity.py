"""T5TokenizerOptions held to ComfyUI itself: token ids and conditioning tensors of the T5 text
paths (Flux's and Chroma's T5-XXL, Wan's UMT5-XXL) with `min_padding` / `min_length` set.

Both sides read the same tiny files (comfyd's tiny T5 and UMT5, `comfyd models make-tiny`). The
ComfyUI side runs its own tokenizers (FluxTokenizer, PixArtTokenizer, WanT5Tokenizer on the
SentencePiece model the UMT5 file carries) with the options as CLIP.tokenize hands them over, and
its own encoder classes (sd3_clip.T5XXLModel as Flux's CLIP builds it, PixArtT5XXL for Chroma,
WanT5Model for Wan) at the tiny size through ComfyUI's own `<name>_model_config` model option, the
weights loaded with load_sd. The comfyd side loads the CLIP (DualCLIPLoader flux, CLIPLoader chroma
/ wan), applies the T5TokenizerOptions node and encodes the prompt as CLIPTextEncode does.

    python bench/t5_tokenizer_options_comfyui_parity.py --workdir /tmp/t5opts \
        --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python

prints RESULT t5opts_ids_equal_<case>=... and RESULT t5opts_max_abs_diff_<case>=... per case.
`--save-reference PATH` also writes ComfyUI's ids and tensors there: the default suite's reference
(tests/families/test_t5_tokenizer_options.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PROMPT = "a small red fox runs across a snowy field at dawn"
WEIGHTED = "a small (red fox:1.3) runs across a snowy field"
# case -> (family, prompt, min_padding, min_length)
CASES: dict[str, tuple[str, str, int, int]] = {
    "flux_pad3": ("flux", PROMPT, 3, 0),
    "flux_len40_pad2": ("flux", PROMPT, 2, 40),
    "chroma_pad1": ("chroma", PROMPT, 1, 0),
    "chroma_len3": ("chroma", PROMPT, 0, 3),  # the fennec_girl_hug setting: shorter than the prompt
    "chroma_len24_pad2": ("chroma", PROMPT, 2, 24),
    "wan_pad4": ("wan", PROMPT, 4, 0),
    "wan_len48_pad1": ("wan", PROMPT, 1, 48),
    "wan_weighted_len40": ("wan", WEIGHTED, 0, 40),
    "chroma_weighted_pad2": ("chroma", WEIGHTED, 2, 0),
}
# Bench only (the tiny AuraFlow checkpoint takes seconds to write): Pile-T5, end 2 / pad 1, masked.
AURAFLOW_CASES: dict[str, tuple[str, str, int, int]] = {
    "auraflow_pad3": ("auraflow", PROMPT, 3, 0),
    "auraflow_len40_pad1": ("auraflow", PROMPT, 1, 40),
}
# HiDream's T5: token ids of the first 128-token chunk (HiDreamTokenizer's T5XXLTokenizer(min_length
# 128, max_length 128), of which HiDream keeps [0]); (prompt, min_padding, min_length).
_LONG = "a small red fox runs across a snowy field at dawn under a pale winter sky, " * 9
HIDREAM_CASES: dict[str, tuple[str, int, int]] = {
    "hidream_pad3": ("a red fox", 3, 0),
    "hidream_len130_pad1": ("a red fox", 1, 130),
    "hidream_long_pad2": (_LONG, 2, 0),  # cut at the chunk: the first chunk takes no padding
}
FILES = {
    "clip_l": "text_encoders/comfyd-tiny-clip-l.safetensors",
    "t5xxl": "text_encoders/comfyd-tiny-t5xxl.safetensors",
    "umt5xxl": "text_encoders/comfyd-tiny-umt5xxl.safetensors",
}
ENCODER_KEY = {"flux": "t5xxl", "chroma": "t5xxl", "wan": "umt5xxl", "auraflow": "pile_t5xl"}
AURAFLOW_CHECKPOINT = "checkpoints/comfyd-tiny-auraflow.safetensors"


def write_files(root: Path, auraflow: bool = False) -> None:
    """The three tiny text-encoder files the cases read (as `make-tiny` writes them); `auraflow`:
    the tiny AuraFlow checkpoint too."""
    from comfyd.models import tiny, umt5_encoder
    from comfyd.models.families import _flux_tiny, _wan_tiny
    from comfyd.models.loader import empty_text_encoder

    if not (root / FILES["clip_l"]).is_file():
        clip_config = tiny.tiny_configs(tiny.families.DEFAULT_FAMILY).encoders["l"]
        clip = tiny.random_module(empty_text_encoder(clip_config), 0, "flux-clip-l")
        state = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
        _flux_tiny._save(state, root / FILES["clip_l"])
    if not (root / FILES["t5xxl"]).is_file():
        _flux_tiny.write_tiny_t5(root / FILES["t5xxl"], 0)
    if not (root / FILES["umt5xxl"]).is_file():
        encoder = tiny.random_module(umt5_encoder.empty_encoder(_wan_tiny.TINY_UMT5), 0, "wan-umt5xxl")
        state = {k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
        state[umt5_encoder.SPIECE_KEY] = torch.frombuffer(
            bytearray(_wan_tiny.tiny_spiece_model()), dtype=torch.uint8
        )
        _wan_tiny._save(state, root / FILES["umt5xxl"])
    if auraflow and not (root / AURAFLOW_CHECKPOINT).is_file():
        from comfyd.models.families import _auraflow_tiny

        _auraflow_tiny.write_tiny_auraflow(root)


def comfyd_side(root: Path, auraflow: bool = False) -> dict[str, torch.Tensor]:
    """comfyd's `<case>_ids` and `<case>_cond` for every case (`auraflow`: its cases too), and the
    HiDream cases' `<case>_ids`."""
    from types import SimpleNamespace

    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import conditioning_from_tokens, tokenize_for_encoder, tokenize_text
    from comfyd.models.tokenizer_options import t5_option_settings
    from comfyd.nodes.conditioning.t5_tokenizer_options import T5TokenizerOptions
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=root, device="cpu", home=root / "home", dtype="fp32"))
    names = {
        "flux": ([Path(FILES["clip_l"]).name, Path(FILES["t5xxl"]).name], "flux"),
        "chroma": ([Path(FILES["t5xxl"]).name], "chroma"),
        "wan": ([Path(FILES["umt5xxl"]).name], "wan"),
    }
    out: dict[str, torch.Tensor] = {}
    cases = {**CASES, **(AURAFLOW_CASES if auraflow else {})}
    for case, (family, text, min_padding, min_length) in cases.items():
        if family == "auraflow":
            clip = manager.load_checkpoint(Path(AURAFLOW_CHECKPOINT).name)[1]
        else:
            clip = manager.load_clip(*names[family])
        (clip,) = T5TokenizerOptions().run(None, clip, min_padding, min_length)  # type: ignore[arg-type]
        tokens = tokenize_text(clip, text)
        out[f"{case}_ids"] = torch.tensor([int(t) for t, _ in tokens[ENCODER_KEY[family]][0]])
        out[f"{case}_cond"] = conditioning_from_tokens(clip, tokens)[0][0].float().contiguous()
    for case, (text, min_padding, min_length) in HIDREAM_CASES.items():
        # HiDream's T5 tokenization needs no files: a handle-like with the node's options.
        options = tuple(sorted(t5_option_settings(min_padding, min_length).items()))
        clip = SimpleNamespace(family="hidream", tokenizers={}, tokenizer_options=options)
        [tokens] = tokenize_for_encoder(clip, "t5xxl", text)  # type: ignore[arg-type]
        out[f"{case}_ids"] = torch.tensor([int(t) for t, _ in tokens])
    return out


def comfyui_side(root: Path, comfyui: Path) -> dict[str, torch.Tensor]:
    """ComfyUI's `<case>_ids` and `<case>_cond` (run in ComfyUI's Python)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, root, None, root / "comfyui-out")
    from comfy import sd1_clip
    from comfy.text_encoders import aura_t5, flux, pixart_t5, sd3_clip, wan
    from comfy.text_encoders.spiece_tokenizer import SPieceTokenizer

    from comfyd.models.families import _auraflow_tiny, _flux_tiny, _wan_tiny

    def size(config: dict[str, Any]) -> dict[str, Any]:
        return {k: config[k] for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")}

    t5_state = load_file(str(root / FILES["t5xxl"]))
    umt5_state = load_file(str(root / FILES["umt5xxl"]))
    spiece = umt5_state.pop("spiece_model")
    t5_options = {"t5xxl_model_config": size(_flux_tiny.TINY_T5)}
    models = {
        "flux": sd3_clip.T5XXLModel(dtype=torch.float32, model_options=t5_options),
        "chroma": pixart_t5.PixArtT5XXL(dtype=torch.float32, model_options=t5_options),
        "wan": wan.WanT5Model(
            dtype=torch.float32, model_options={"umt5xxl_model_config": size(_wan_tiny.TINY_UMT5)}
        ),
    }
    tokenizers = {
        "flux": flux.FluxTokenizer(),
        "chroma": pixart_t5.PixArtTokenizer(),
        "wan": wan.WanT5Tokenizer(tokenizer_data={"spiece_model": spiece}),
    }
    states = {"flux": t5_state, "chroma": t5_state, "wan": umt5_state}
    cases = dict(CASES)
    if (root / AURAFLOW_CHECKPOINT).is_file():
        cases.update(AURAFLOW_CASES)
        prefix = _auraflow_tiny.ENCODER_PREFIX
        stored = load_file(str(root / AURAFLOW_CHECKPOINT))
        pile = {k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}
        pile_spiece = pile.pop("spiece_model")
        pile_options = {"pile_t5xl_model_config": size(_auraflow_tiny.TINY_PILE_T5)}
        models["auraflow"] = aura_t5.AuraT5Model(dtype=torch.float32, model_options=pile_options)
        states["auraflow"] = pile
        # PT5XlTokenizer's arguments, on the SentencePiece model the tiny checkpoint carries (the
        # class itself reads the real Pile-T5 vocabulary from ComfyUI's folder).
        pt5 = sd1_clip.SDTokenizer(
            pile_spiece, pad_with_end=False, embedding_size=2048, embedding_key="pile_t5xl",
            tokenizer_class=SPieceTokenizer, has_start_token=False, pad_to_max_length=False,
            max_length=99999999, min_length=256, pad_token=1, tokenizer_data={},
        )  # fmt: skip
        tokenizers["auraflow"] = sd1_clip.SD1Tokenizer(clip_name="pile_t5xl", tokenizer=lambda **_: pt5)
    for family, model in models.items():
        missing, unexpected = model.load_sd(states[family])
        if missing or unexpected:
            raise SystemExit(
                f"the tiny {family} encoder does not load in ComfyUI's module: {missing[:5]} {unexpected[:5]}"
            )
    out: dict[str, torch.Tensor] = {}
    for case, (family, text, min_padding, min_length) in cases.items():
        options = node_options(min_padding, min_length)
        tokens = tokenizers[family].tokenize_with_weights(text, tokenizer_options=options)
        key = ENCODER_KEY[family]
        out[f"{case}_ids"] = torch.tensor([int(t) for t, *_ in tokens[key][0]])
        encoded = models[family].encode_token_weights(tokens[key] if family == "flux" else tokens)
        out[f"{case}_cond"] = encoded[0].float().contiguous()
    hidream_t5 = sd3_clip.T5XXLTokenizer(min_length=128, max_length=128)
    for case, (text, min_padding, min_length) in HIDREAM_CASES.items():
        tokens = hidream_t5.tokenize_with_weights(
            text, tokenizer_options=node_options(min_padding, min_length)
        )
        out[f"{case}_ids"] = torch.tensor([int(t) for t, *_ in tokens[0]])
    return out


def node_options(min_padding: int, min_length: int) -> dict[str, int]:
    """The options ComfyUI's T5TokenizerOptions sets on the CLIP (written out here, not comfyd's)."""
    options: dict[str, int] = {}
    for t5_type in ("t5xxl", "pile_t5xl", "t5base", "mt5xl", "umt5xxl"):
        options[f"{t5_type}_min_padding"] = min_padding
        options[f"{t5_type}_min_length"] = min_length
    return options


def compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, tuple[bool, float]]:
    """case -> (ids equal, max |comfyd - ComfyUI| of the conditioning; inf when shapes differ; nan
    for the ids-only cases), for every case comfyd computed."""
    result = {}
    for case in (k[: -len("_ids")] for k in ours if k.endswith("_ids")):
        a, b = ours[f"{case}_ids"], theirs[f"{case}_ids"]
        same = a.shape == b.shape and torch.equal(a, b)
        diff = float("nan")
        if f"{case}_cond" in ours:
            x, y = ours[f"{case}_cond"], theirs[f"{case}_cond"]
            diff = float((x - y).abs().max()) if x.shape == y.shape else float("inf")
        result[case] = (same, diff)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--save-reference", type=Path, help="also write ComfyUI's ids and tensors here")
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    if args.comfyui_side:
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            save_file(comfyui_side(work, args.comfyui.resolve()), str(work / "comfyui-t5opts.safetensors"))
        return 0
    work.mkdir(parents=True, exist_ok=True)
    write_files(work, auraflow=True)
    subprocess.run([args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
                    "--comfyui-side"], check=True)  # fmt: skip
    theirs = load_file(str(work / "comfyui-t5opts.safetensors"))
    ours = comfyd_side(work, auraflow=True)
    for case, (same, diff) in compare(ours, theirs).items():
        print(f"RESULT t5opts_ids_equal_{case}={same} (length {len(theirs[f'{case}_ids'])})")
        if diff == diff:  # not an ids-only case
            print(f"RESULT t5opts_max_abs_diff_{case}={diff:.3g}")
    if args.save_reference:
        save_file(theirs, str(args.save_reference))
        print(f"reference written to {args.save_reference}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
