"""Mistral Small 3.x (the text model of transformers' Mistral3) as Flux.2 [dev]'s text encoder
(CLIPLoader type "flux2"): find it in a file, build it from the shapes, tokenize with Tekken.

Files: Hugging Face names of the language model, `embed_tokens`, `layers.N.{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}`, `norm`, under one of the
prefixes the released files use: `model.` (ComfyUI's repackaged text-encoder files, as its Llama-style
encoders store them), `language_model.model.` (Mistral3ForConditionalGeneration as first released),
`model.language_model.` (transformers >= 4.52 / 5 saves), or `text_model.model.`. Vision tower,
projector and `lm_head` keys are ignored. Told from a Llama (same names) by its 131,072-row Tekken
vocabulary, from a Qwen by the missing q/k norms and biases. Sizes come from the shapes; the head
width is 128 (Mistral Small's, which the shapes do not show once the q width differs from the
hidden width) unless the key/value width is narrower (tiny test files: one head that wide).
RMSNorm eps 1e-5, rope theta 1e9: Mistral Small 3.1's config, as ComfyUI fixes it.

fp8 files with per-weight scales (`scale_weight` / `weight_scale`) are dequantized on loading.

Tokenizer: Mistral's Tekken (tiktoken ranks, 1,000 special ids in front), looked for in this order:
a `tekken_model` tensor in the file (the JSON's bytes, as ComfyUI embeds it), `tekken.json` beside
the file, else the Tekken vocabulary the `mistral-common` package ships (tekken_240911.json,
Apache-2.0): its 130,072 ranks are the ones of every Tekken release (240718 and 240911 are equal),
and the special ids used here (<s> 1, [INST] 3, [/INST] 4, [SYSTEM_PROMPT] 17, [/SYSTEM_PROMPT] 18)
are Tekken's fixed ones. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfyd.models.keymap import Source

VOCAB = 131072
PREFIXES = ("model.", "language_model.model.", "model.language_model.", "text_model.model.")
RMS_EPS = 1e-5
ROPE_THETA = 1_000_000_000.0
HEAD_DIM = 128
FULL_DEPTH = 40  # Mistral Small 3.x; shallower ("pruned") files keep their last layer unnormalised
TEKKEN_KEY = "tekken_model"
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
TEKKEN_FILE = "tekken.json"
BOS, INST, END_INST, SYSTEM, END_SYSTEM = 1, 3, 4, 17, 18
# BFL's system message for Flux.2 (diffusers' SYSTEM_MESSAGE, ComfyUI's template), verbatim.
SYSTEM_MESSAGE = (
    "You are an AI that reasons about image descriptions. You give structured responses focusing on "
    "object relationships, object\nattribution and actions without speculation."
)


def find_prefix(keys: set[str], shapes: Mapping[str, tuple[int, ...]] | None = None, base: str = "") -> str | None:
    """Where the language model's names start (`<prefix>layers.0...`), or None when `keys` hold no
    Mistral text model (a Llama's vocabulary is not Tekken's; a Qwen has q/k norms or biases)."""
    for inner in PREFIXES:
        prefix = base + inner
        if (
            f"{prefix}embed_tokens.weight" in keys
            and f"{prefix}layers.0.self_attn.q_proj.weight" in keys
            and f"{prefix}layers.0.self_attn.q_norm.weight" not in keys
            and f"{prefix}layers.0.self_attn.q_proj.bias" not in keys
            and (shapes is None or shapes[f"{prefix}embed_tokens.weight"][0] == VOCAB)
        ):
            return prefix
    return None


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """transformers MistralConfig values of the text model under `prefix`."""
    vocab, hidden = shapes[f"{prefix}embed_tokens.weight"]
    q_width = shapes[f"{prefix}layers.0.self_attn.q_proj.weight"][0]
    kv_width = shapes[f"{prefix}layers.0.self_attn.k_proj.weight"][0]
    head_dim = min(HEAD_DIM, kv_width)
    if q_width % head_dim or kv_width % head_dim:
        raise ValueError(f"Mistral text encoder widths {q_width}/{kv_width} do not split into {head_dim}-wide heads")
    layers = 1 + max(int(k[len(prefix) :].split(".")[1]) for k in shapes if k.startswith(f"{prefix}layers."))
    return {
        "vocab_size": vocab, "hidden_size": hidden, "head_dim": head_dim,
        "intermediate_size": shapes[f"{prefix}layers.0.mlp.gate_proj.weight"][0],
        "num_hidden_layers": layers, "num_attention_heads": q_width // head_dim,
        "num_key_value_heads": kv_width // head_dim, "rms_norm_eps": RMS_EPS, "hidden_act": "silu",
        "max_position_embeddings": 131072, "sliding_window": None, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
    }  # fmt: skip


def empty_encoder(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import MistralConfig, MistralModel

    with init_empty_weights():
        return MistralModel(MistralConfig(**dict(config)))


class MistralTranslator:
    """MistralModel parameter names -> the file's keys under `prefix` (which ends in '.')."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        return Source(f"{self.prefix}{name}")


def apply_weight_scales(module: nn.Module, tf: Any, prefix: str, suffixes: tuple[str, ...] = SCALE_SUFFIXES) -> int:
    """Dequantize fp8 files that carry a scale per weight (ComfyUI's "scaled fp8" `<layer>.scale_weight`,
    its mixed-precision `<layer>.weight_scale`, a scalar or one per output row): weight * scale, in
    the loaded dtype. 4-bit (nvfp4) files are refused. Returns how many weights were scaled."""
    keys = set(tf.keys())
    if any(k.startswith(prefix) and k.endswith(".weight_scale_2") for k in keys):
        raise ValueError("4-bit (nvfp4) quantized text encoders are not supported; use a bf16 or fp8 file")
    scaled = 0
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith(".weight"):
                continue
            stem = prefix + name.removesuffix(".weight")
            key = next((stem + suffix for suffix in suffixes if stem + suffix in keys), None)
            if key is None:
                continue
            scale = tf.get(key).to(device=param.device, dtype=param.dtype)
            if scale.numel() not in (1, param.shape[0]):
                raise ValueError(f"{key}: a scale of {scale.numel()} values for a weight of {param.shape[0]} rows")
            param.mul_(scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(()))
            scaled += 1
    return scaled


def finish_loading(module: nn.Module, tf: Any, path: Path | None) -> nn.Module:
    """Attach the Tekken JSON found for the file; a shallower file keeps its last layer raw (as
    ComfyUI builds Flux.2's pruned encoders, without the final norm)."""
    if len(module.layers) < FULL_DEPTH:
        module.norm = nn.Identity()
    if TEKKEN_KEY in tf:
        module.comfyd_tekken = bytes(tf.get(TEKKEN_KEY).to(torch.uint8).numpy().tobytes())
    elif path is not None and (path.parent / TEKKEN_FILE).is_file():
        module.comfyd_tekken = (path.parent / TEKKEN_FILE).read_bytes()
    else:
        module.comfyd_tekken = None
    return module


def shipped_tekken_path() -> Path:
    try:
        import mistral_common
    except ImportError as exc:  # a dependency of comfyd; say what is missing rather than crash
        raise ValueError(
            "the Mistral text encoder needs its Tekken tokenizer: put tekken.json beside the file, or "
            "install the mistral-common package (it ships Tekken's vocabulary)"
        ) from exc
    return Path(mistral_common.__file__).parent / "data" / "tekken_240911.json"


@functools.lru_cache(maxsize=2)
def _tekkenizer(digest: str, data: bytes | None) -> Any:
    import tempfile

    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    if data is None:
        return Tekkenizer.from_file(shipped_tekken_path())
    with tempfile.TemporaryDirectory() as tmp:  # Tekkenizer reads files only
        path = Path(tmp) / "tekken.json"
        path.write_bytes(data)
        try:
            return Tekkenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad tokenizer file
            raise ValueError(f"the Mistral text encoder's Tekken tokenizer cannot be read: {exc}") from exc


def tekkenizer(data: bytes | None = None) -> Any:
    """The Tekken tokenizer of a JSON's bytes (None: the shipped vocabulary), read once per process."""
    digest = hashlib.sha256(data).hexdigest() if data is not None else "shipped"
    return _tekkenizer(digest, data)


def tokenizer_for(module: nn.Module) -> Any:
    return tekkenizer(getattr(module, "comfyd_tekken", None))


@functools.lru_cache(maxsize=4)
def _special_pattern(tokenizer: Any) -> tuple[re.Pattern[str], dict[str, int]]:
    pieces = {tokenizer.id_to_piece(i): i for i in range(tokenizer.num_special_tokens)}
    alternatives = "|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True))
    return re.compile(f"({alternatives})"), pieces


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Tekken ids of `text`, its special-token spellings ("[INST]", "<s>", ...) read as those
    tokens and the text between them BPE-encoded on its own, as a transformers tokenizer with
    Tekken's special tokens added (ComfyUI's, diffusers' processor) reads a string."""
    pattern, pieces = _special_pattern(tokenizer)
    ids: list[int] = []
    for index, part in enumerate(pattern.split(text)):
        if index % 2:
            ids.append(pieces[part])
        elif part:
            ids.extend(tokenizer.encode(part, bos=False, eos=False))
    return ids


def tokenize(tokenizer: Any, text: str) -> list[int]:
    """ComfyUI's Flux.2 [dev] prompt: <s>[SYSTEM_PROMPT]system[/SYSTEM_PROMPT][INST]text[/INST],
    weights off (escaped brackets unescaped), no end token, no padding."""
    text = text.replace("\\)", ")").replace("\\(", "(")
    return [BOS, SYSTEM, *encode_text(tokenizer, SYSTEM_MESSAGE), END_SYSTEM, INST, *encode_text(tokenizer, text), END_INST]
