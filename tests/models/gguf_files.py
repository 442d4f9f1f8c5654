"""Write GGUF files the way ComfyUI-GGUF's converter and llama.cpp lay them out, for the tests:
original key names (diffusion models) or llama.cpp's T5 names (text encoders), GGML's reversed
shapes, 2-D+ weights whose rows fit the block size quantized, the rest stored plainly."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import load_file

# Hugging Face T5 names -> llama.cpp's, the inverse of comfyd.models.gguf_weights' table.
T5_TO_LLAMA_CPP = (
    ("encoder.block.", "enc.blk."), ("encoder.final_layer_norm", "enc.output_norm"), ("shared", "token_embd"),
    ("layer.0.SelfAttention.relative_attention_bias", "attn_rel_b"), ("layer.0.SelfAttention.q", "attn_q"),
    ("layer.0.SelfAttention.k", "attn_k"), ("layer.0.SelfAttention.v", "attn_v"),
    ("layer.0.SelfAttention.o", "attn_o"), ("layer.0.layer_norm", "attn_norm"),
    ("layer.1.DenseReluDense.wi_0", "ffn_gate"), ("layer.1.DenseReluDense.wi_1", "ffn_up"),
    ("layer.1.DenseReluDense.wo", "ffn_down"), ("layer.1.layer_norm", "ffn_norm"),
)  # fmt: skip


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
            data = gguf.quants.quantize(tensor.float().numpy(), qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
        else:
            data, raw = _plain(tensor)
            writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
