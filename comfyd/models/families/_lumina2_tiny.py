"""Tiny random-weight Lumina 2 files (tests, demo; `comfyd models make-tiny --family lumina2`), in
both of ComfyUI's layouts: the parts (a NextDiT in `diffusion_models/` with the original release's
keys, 96 wide, four 24-wide heads and two key/value heads, one refiner layer each side, two main
layers; a Gemma-2-shaped encoder in `text_encoders/`, three layers 32 wide with eight 8-wide heads
and four key/value heads, carrying a tiny SentencePiece model with Gemma's special ids (pad 0,
end 1, begin 2, unknown 3) as `spiece_model`; a 16-channel autoencoder in `vae/`, Flux's LDM
keys) and the same weights as one all-in-one checkpoint in `checkpoints/` under ComfyUI's
prefixes (`model.diffusion_model.`, `text_encoders.gemma2_2b.transformer.`,
`text_encoders.spiece_model`, `vae.`).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyd.models import gemma2_encoder
from comfyd.models.families import _lumina2_transformer as transformer
from comfyd.models.families._wan_tiny import _CORPUS
from comfyd.models.families._z_image_tiny import tiny_vae_config
from comfyd.models.keymap import to_original, vae_translator

TINY_GEMMA = {
    "vocab_size": 256,
    "hidden_size": 32,
    "q_width": 64,
    "kv_width": 32,
    "intermediate": 64,
    "layers": 3,
}
TINY_TRANSFORMER = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "hidden_size": 96, "num_layers": 2,
    "num_refiner_layers": 1, "num_attention_heads": 4, "num_kv_heads": 2, "multiple_of": 256,
    "ffn_dim_multiplier": None, "norm_eps": 1e-5, "axes_dim_rope": transformer.rope_axes(24),
    "axes_lens": [300, 512, 512], "cap_feat_dim": TINY_GEMMA["hidden_size"],
}  # fmt: skip
NAMES = {
    "transformer": "diffusion_models/comfyd-tiny-lumina2.safetensors",
    "gemma2_2b": "text_encoders/comfyd-tiny-gemma2-2b.safetensors",
    "vae": "vae/comfyd-tiny-lumina2-ae.safetensors",
    "checkpoint": "checkpoints/comfyd-tiny-lumina2-aio.safetensors",
}
ENCODER_PREFIX = "text_encoders.gemma2_2b.transformer."


def tiny_spiece_model() -> bytes:
    """A unigram SentencePiece model with Gemma's special ids."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=out, vocab_size=TINY_GEMMA["vocab_size"],
        model_type="unigram", pad_id=0, eos_id=1, bos_id=2, unk_id=3, num_threads=1,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    return out.getvalue()


def tiny_encoder_config() -> dict:
    t = TINY_GEMMA
    shapes = {
        "model.embed_tokens.weight": (t["vocab_size"], t["hidden_size"]),
        "model.layers.0.self_attn.q_proj.weight": (t["q_width"], t["hidden_size"]),
        "model.layers.0.self_attn.k_proj.weight": (t["kv_width"], t["hidden_size"]),
        "model.layers.0.mlp.gate_proj.weight": (t["intermediate"], t["hidden_size"]),
        **{f"model.layers.{i}.input_layernorm.weight": (t["hidden_size"],) for i in range(t["layers"])},
    }
    return gemma2_encoder.infer_config(shapes)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def tiny_states(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """The stored tensors of each part: transformer, encoder (with `spiece_model`), VAE."""
    from comfyd.models import tiny
    from comfyd.models.loader import empty_vae

    net = tiny.random_module(transformer.empty_transformer(TINY_TRANSFORMER), seed, "lumina2")
    stored = to_original(net.state_dict(), transformer.Lumina2Translator(TINY_TRANSFORMER))
    stored["norm_final.weight"] = torch.ones(TINY_TRANSFORMER["hidden_size"])  # unused, as in real files
    encoder = tiny.random_module(gemma2_encoder.empty_encoder(tiny_encoder_config()), seed, "gemma2-2b")
    text = {f"model.{k}": v for k, v in encoder.state_dict().items()}
    text[gemma2_encoder.SPIECE_KEY] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    vae_config = tiny_vae_config()
    vae = tiny.random_module(empty_vae(vae_config), seed, "lumina2-vae")
    return {
        "transformer": stored,
        "gemma2_2b": text,
        "vae": to_original(vae.state_dict(), vae_translator(vae_config, "")),
    }


def write_tiny_lumina2(root: Path, seed: int = 0) -> list[Path]:
    parts = tiny_states(seed)
    written = [_save(parts[name], root / NAMES[name]) for name in ("transformer", "gemma2_2b", "vae")]
    combined = {f"model.diffusion_model.{k}": v for k, v in parts["transformer"].items()}
    spiece = parts["gemma2_2b"].pop(gemma2_encoder.SPIECE_KEY)
    combined.update({ENCODER_PREFIX + k: v for k, v in parts["gemma2_2b"].items()})
    combined[f"text_encoders.{gemma2_encoder.SPIECE_KEY}"] = spiece
    combined.update({f"vae.{k}": v for k, v in parts["vae"].items()})
    written.append(_save(combined, root / NAMES["checkpoint"]))
    return written
