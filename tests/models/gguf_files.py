"""Write GGUF files the way ComfyUI-GGUF's converter and llama.cpp lay them out, for the tests:
original key names (diffusion models) or llama.cpp's T5 names (text encoders), GGML's reversed
shapes, 2-D+ weights whose rows fit the block size quantized, the rest stored plainly."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file, save_file

# Hugging Face T5 names -> llama.cpp's, the inverse of comfyd.models.gguf_weights' table.
T5_TO_LLAMA_CPP = (
    ("encoder.block.", "enc.blk."), ("encoder.final_layer_norm", "enc.output_norm"), ("shared", "token_embd"),
    ("layer.0.SelfAttention.relative_attention_bias", "attn_rel_b"), ("layer.0.SelfAttention.q", "attn_q"),
    ("layer.0.SelfAttention.k", "attn_k"), ("layer.0.SelfAttention.v", "attn_v"),
    ("layer.0.SelfAttention.o", "attn_o"), ("layer.0.layer_norm", "attn_norm"),
    ("layer.1.DenseReluDense.wi_0", "ffn_gate"), ("layer.1.DenseReluDense.wi_1", "ffn_up"),
    ("layer.1.DenseReluDense.wo", "ffn_down"), ("layer.1.layer_norm", "ffn_norm"),
)  # fmt: skip


def quantize_q4_k(values: np.ndarray) -> np.ndarray:
    """`values` (rows a multiple of 256 wide) in GGML's Q4_K blocks: the `gguf` library reads
    Q4_K but cannot write it. Per 32-value sub-block a 6-bit scale and min against the super-block's
    float16 d and dmin; 4-bit values. Uint8 `[..., row_bytes]`, as `gguf.quants.quantize` returns."""
    rows = values.astype(np.float32).reshape(-1, 8, 32)
    low = np.minimum(rows.min(axis=-1), 0)
    scale = (rows.max(axis=-1) - low) / 15
    d = (scale.max(axis=-1, keepdims=True) / 63).astype(np.float16)
    dmin = (-low.min(axis=-1, keepdims=True) / 63).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.nan_to_num(np.rint(scale / d.astype(np.float32))).clip(0, 63).astype(np.uint8)
        mn = np.nan_to_num(np.rint(-low / dmin.astype(np.float32))).clip(0, 63).astype(np.uint8)
        step = (d.astype(np.float32) * sc)[..., None]
        offset = (dmin.astype(np.float32) * mn)[..., None]
        q = np.nan_to_num(np.rint((rows + offset) / step)).clip(0, 15).astype(np.uint8)
    packed = np.concatenate(
        [
            (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
            (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4),
        ],
        axis=-1,
    )
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # sub-blocks 2g (low) and 2g+1 (high)
    blocks = np.concatenate([d.view(np.uint8), dmin.view(np.uint8), packed, qs], axis=-1)
    return blocks.reshape(*values.shape[:-1], values.shape[-1] // 256 * 144)


def _quantize(values: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        return quantize_q4_k(values)
    return gguf.quants.quantize(values, qtype)


def _plain(tensor: torch.Tensor) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    if tensor.dtype == torch.float16:
        return tensor.numpy(), None
    if tensor.dtype == torch.bfloat16:
        values = tensor.float().numpy()
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    return tensor.float().numpy(), None


def write_gguf(
    source: Path, target: Path, arch: str, quant: str | None = None, t5_names: bool = False
) -> Path:
    """`source` (safetensors) as a GGUF file; `quant` ("Q8_0", "Q4_K", ...) for the weights whose
    last dimension is a multiple of its block size, plain (as stored) otherwise."""
    writer = gguf.GGUFWriter(str(target), arch)
    qtype = getattr(gguf.GGMLQuantizationType, quant) if quant else None
    for name, tensor in load_file(str(source)).items():
        if t5_names:
            for old, new in T5_TO_LLAMA_CPP:
                name = name.replace(old, new)
        block = gguf.GGML_QUANT_SIZES[qtype][0] if qtype is not None else 0
        if qtype is not None and tensor.ndim >= 2 and tensor.shape[-1] % block == 0:
            data = _quantize(tensor.float().numpy(), qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
        else:
            data, raw = _plain(tensor)
            writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def write_wide_flux(path: Path, width: int, head_dim: int = 32, layers: tuple[int, int] = (1, 2),
                    context_dim: int = 256, pooled_dim: int | None = None, seed: int = 0) -> Path:
    """A random Flux dev transformer (BFL keys, fp16) `width` wide, for K-quants (256-value blocks)
    and for memory that matters; `context_dim` / `pooled_dim`: the T5 / CLIP widths it reads
    (the tiny CLIP-L's pooled width by default)."""
    from comfyd.models import tiny
    from comfyd.models.families import _flux_tiny
    from comfyd.models.families import _flux_transformer as transformer
    from comfyd.models.keymap import to_original

    clip_dim = pooled_dim or int(tiny.tiny_configs(tiny.families.DEFAULT_FAMILY).encoders["l"]["hidden_size"])
    config = _flux_tiny.tiny_transformer_config(True, context_dim, clip_dim)
    config.update(attention_head_dim=head_dim, num_attention_heads=width // head_dim, num_layers=layers[0],
                  num_single_layers=layers[1], axes_dims_rope=list(transformer.rope_axes(head_dim)))  # fmt: skip
    net = tiny.random_module(transformer.empty_transformer(config), seed, "wide-flux")
    stored = to_original(net.state_dict(), transformer.FluxTranslator(config, ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in stored.items()}, str(path))
    return path


def write_wide_t5(path: Path, width: int = 256, seed: int = 0) -> Path:
    """A random T5 encoder (transformers keys, fp16) `width` wide: its rows hold K-quant blocks."""
    from comfyd.models import t5_encoder, tiny
    from comfyd.models.families import _flux_tiny

    config = dict(_flux_tiny.TINY_T5, d_model=width, d_kv=32, num_heads=width // 32, d_ff=2 * width)
    t5 = tiny.random_module(t5_encoder.empty_encoder(config), seed, "wide-t5")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(state, str(path))
    return path
