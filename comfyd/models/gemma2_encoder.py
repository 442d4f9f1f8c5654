"""Gemma-2-2B as Lumina Image 2.0's text encoder (CLIPLoader type "lumina2"): build it from a
file's shapes, tokenize and encode as ComfyUI 0.3.64 does (comfy/text_encoders/lumina2.py,
llama.py's Gemma2_2B, sd1_clip.py's SDTokenizer / SDClipModel).

Files (gemma_2_2b*.safetensors; `text_encoders.gemma2_2b.transformer.` in all-in-one checkpoints):
transformers' Gemma2 names, `model.embed_tokens`, `model.layers.N.{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm, pre_feedforward_layernorm,
post_feedforward_layernorm}`, `model.norm`. The pre/post feed-forward norms tell it from a Llama or
a Qwen. Sizes are read from the shapes (ComfyUI fixes the 2B's: 2304 wide, 26 layers, 8 heads of
256, 4 key/value heads, 256,000-token vocabulary). Built as transformers' `Gemma2Model` with what
ComfyUI's own Gemma 2 computes: no attention-logit soft-capping, full attention in every layer (no
sliding window), the embeddings scaled by sqrt(width), norms scaled by (1 + weight).

Tokenizer: the SentencePiece model the file carries as a uint8 tensor `spiece_model` (ComfyUI's
CLIP save writes it there; `text_encoders.spiece_model` in an all-in-one checkpoint), as ComfyUI
reads it; comfyd ships no Gemma tokenizer and refuses a file without one.

Prompt (SDTokenizer with Gemma's options): weights parsed, each weighted segment tokenized on its
own without its begin token, one sequence [begin 2] + tokens, no end token and no padding. The
encoder runs causally over it and the output of the second-to-last layer, before the final norm,
is the conditioning, every token kept. Tokens with weight w != 1 become (z - z_empty) * w + z_empty
against the empty prompt [2, 0, 0, ...] of the same length, whose padding (0) is masked out of
attention as ComfyUI masks it. CLIPSetLastLayer picks another layer, as for Z-Image's Qwen3.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from comfyd.models.prompt_weights import parse_prompt_weights

BEGIN_TOKEN, PAD_TOKEN = 2, 0
MARKER = "model.layers.0.pre_feedforward_layernorm.weight"
SPIECE_KEY = "spiece_model"
DEFAULT_LAYER = -2  # ComfyUI's Gemma2_2BModel: the hidden layer before the last
ROPE_THETA = 10000.0
_LOCK = threading.Lock()
Tokens = list[tuple[int, float]]


def is_gemma2(keys: set[str], prefix: str = "") -> bool:
    return f"{prefix}{MARKER}" in keys and f"{prefix}model.embed_tokens.weight" in keys


def spiece_key(keys: set[str], prefix: str = "") -> str | None:
    """Where the file keeps the SentencePiece model: beside the encoder's keys, at the top of a
    text-encoder file, or beside the `text_encoders.` group of an all-in-one checkpoint."""
    candidates = [f"{prefix}{SPIECE_KEY}", SPIECE_KEY]
    if prefix.startswith("text_encoders."):
        candidates.insert(0, f"text_encoders.{SPIECE_KEY}")
    return next((key for key in candidates if key in keys), None)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """transformers Gemma2Config values of the model stored under `prefix` (ComfyUI's arithmetic)."""
    vocab, hidden = shapes[f"{prefix}model.embed_tokens.weight"]
    q_width = shapes[f"{prefix}model.layers.0.self_attn.q_proj.weight"][0]
    kv_width = shapes[f"{prefix}model.layers.0.self_attn.k_proj.weight"][0]
    # Gemma 2 keeps 256-wide heads at every size ComfyUI knows; a cut model keeps the ratio of
    # query to key/value heads (2:1) with heads of q_width / 8 when narrower than 256 * 8.
    head_dim = 256 if q_width % 256 == 0 and kv_width % 256 == 0 else q_width // 8
    layers = 1 + max(
        int(k[len(prefix) :].split(".")[2]) for k in shapes if k.startswith(f"{prefix}model.layers.")
    )
    return {
        "vocab_size": vocab, "hidden_size": hidden, "head_dim": head_dim,
        "intermediate_size": shapes[f"{prefix}model.layers.0.mlp.gate_proj.weight"][0],
        "num_hidden_layers": layers, "num_attention_heads": q_width // head_dim,
        "num_key_value_heads": kv_width // head_dim, "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 8192,
        "query_pre_attn_scalar": head_dim, "attention_bias": False, "tie_word_embeddings": False,
        "attn_logit_softcapping": None, "final_logit_softcapping": None,
        "layer_types": ["full_attention"] * layers, "sliding_window": 4096,  # never used
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
    }  # fmt: skip


def empty_encoder(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import Gemma2Config, Gemma2Model

    gemma_config = Gemma2Config(**dict(config))
    gemma_config._attn_implementation = "eager"  # transformers' Gemma 2 has no SDPA path
    with init_empty_weights():
        return Gemma2Model(gemma_config)


def compute_dtype(plan: Any) -> torch.dtype:
    """The dtype Gemma 2 runs in. ComfyUI keeps it in the file's own dtype (no fp16 rounding of
    the weights, unlike its CLIPs) and computes in fp32; comfyd computes in the plan's text-encoder
    dtype except fp16, where Gemma 2's activations overflow: bf16 where the device has it, else
    fp32."""
    if plan.clip_dtype != torch.float16:
        return plan.clip_dtype
    if plan.device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def storage_dtype(tf: Any, prefix: str = "") -> torch.dtype:
    """The dtype ComfyUI keeps the encoder in: the one most of its stored values have."""
    counts: dict[torch.dtype, int] = {}
    for key, shape in tf.shapes().items():
        if key.startswith(prefix) and not key.endswith(SPIECE_KEY):
            counts[tf.dtype(key)] = counts.get(tf.dtype(key), 0) + int(torch.Size(shape).numel())
    return max(counts, key=lambda d: counts[d])


def round_norm_scales(module: nn.Module, storage: torch.dtype) -> None:
    """ComfyUI's Gemma norms scale by (1 + weight) computed in the weight's storage dtype; where that
    is fp16 or bf16 the sum is rounded there. Store each weight so that transformers' fp32
    (1 + weight) gives that rounded sum exactly."""
    if storage not in (torch.float16, torch.bfloat16):
        return
    with torch.no_grad():
        for sub in module.modules():
            if type(sub).__name__.endswith("RMSNorm") and getattr(sub, "weight", None) is not None:
                rounded = (sub.weight.to(storage) + 1.0).float() - 1.0
                sub.weight.copy_(rounded.to(sub.weight.dtype))


def tokenizer_from_bytes(model_proto: bytes) -> Any:
    """A SentencePiece processor that adds the begin token (dropped per segment, as ComfyUI)."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_proto=model_proto, add_bos=True, add_eos=False)


def spiece_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.to(torch.uint8).numpy().tobytes()


def tokenize(tokenizer: Any, text: str) -> Tokens:
    tokens: Tokens = [(BEGIN_TOKEN, 1.0)]
    for segment in parse_prompt_weights(text):
        if segment.text == "":
            continue
        with _LOCK:
            ids = tokenizer.encode(segment.text)
        tokens.extend((int(t), float(segment.weight)) for t in ids[1:])
    return tokens


def _hidden(encoder: Any, ids: list[int], index: int, mask: list[int] | None) -> torch.Tensor:
    layers = encoder.layers
    device = next(encoder.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    attention = None if mask is None else torch.tensor([mask], dtype=torch.long, device=device)
    captured: list[torch.Tensor] = []
    hook = None
    if -len(layers) <= index < len(layers):
        hook = layers[index].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
    try:
        with torch.no_grad():
            last = encoder(input_ids=input_ids, attention_mask=attention, use_cache=False).last_hidden_state
    finally:
        if hook is not None:
            hook.remove()
    return (captured[0] if captured else last)[0].float()


def encode(encoder: Any, tokens: Tokens, layer_idx: int | None = None) -> torch.Tensor:
    """[1, tokens, hidden] float32 on the CPU: the output of layer `layer_idx` (counted from the
    end; None: Lumina 2's -2), unnormalised; an index past the first layer gives the last layer
    after the final norm (ComfyUI's fallback). Weighted tokens against the empty prompt."""
    if not tokens:
        raise ValueError("a Lumina 2 prompt has no tokens")
    index = DEFAULT_LAYER if layer_idx is None else layer_idx
    ids = [int(t) for t, _ in tokens]
    z = _hidden(encoder, ids, index, None)
    weights = [float(w) for _, w in tokens]
    if any(w != 1.0 for w in weights):
        empty = [BEGIN_TOKEN] + [PAD_TOKEN] * (len(ids) - 1)
        z_empty = _hidden(encoder, empty, index, [1] + [0] * (len(ids) - 1))
        w = torch.tensor(weights, dtype=z.dtype, device=z.device).unsqueeze(-1)
        changed = (w != 1.0).expand_as(z)
        z = torch.where(changed, (z - z_empty) * w + z_empty, z)
    return z.unsqueeze(0).to("cpu")
