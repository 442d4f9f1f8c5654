"""Weights stored in GGUF files (ComfyUI-GGUF's diffusion models, llama.cpp-style text encoders).

A GGUF file holds each tensor in one of GGML's formats: plain (F32, F16, BF16) or block-quantized
(Q8_0, Q4_K, ...). The `gguf` library reads the file (memory mapped) and dequantizes; a tensor is
dequantized to float32 when it is asked for, one at a time, so loading never holds more than the
model in its compute dtype plus one float32 tensor. Shapes are GGML's reversed, except where the
converter recorded the original shape (`comfy.gguf.orig_shape.<name>`: tensors of more than four
dimensions, such as Wan's 3-D patch embedding).

Diffusion models keep their original key names (ComfyUI's layout, with or without the
`model.diffusion_model.` prefix). Text encoders converted by llama.cpp use its names; those of T5
(architecture `t5` / `t5encoder`) and of the Qwen language models (`qwen2vl`, `qwen3`) are renamed to
the Hugging Face names ComfyUI's files carry, as the ComfyUI-GGUF loader does.

`quantized(key)` hands a block-quantized tensor out as its raw blocks instead (for the layers of
`gguf_layers`, which dequantize in the forward), when its type has a torch dequantizer.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from comfyd.models.gguf_dequant import BLOCKS, DEQUANTIZERS, dequantize, row_bytes
from comfyd.models.gguf_layers import QuantizedTensor

log = logging.getLogger(__name__)

PLAIN_TYPES = {"F32": torch.float32, "F16": torch.float16}
# llama.cpp's names -> Hugging Face's, applied as substring replacements in this order.
_T5_NAMES = (
    ("enc.", "encoder."), (".blk.", ".block."), ("token_embd", "shared"), ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"), ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"), ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_norm", "layer.0.layer_norm"), ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"), ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"), ("ffn_norm", "layer.1.layer_norm"),
)  # fmt: skip
_DECODER_NAMES = (
    ("blk.", "model.layers."), ("attn_norm", "input_layernorm"), ("attn_q_norm.", "self_attn.q_norm."),
    ("attn_k_norm.", "self_attn.k_norm."), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_norm", "post_attention_layernorm"),
    ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output.weight", "lm_head.weight"),
)  # fmt: skip
_RENAMES = {"t5": _T5_NAMES, "t5encoder": _T5_NAMES, "qwen2vl": _DECODER_NAMES, "qwen3": _DECODER_NAMES}
# Converted with a layout comfyd does not undo (llama.cpp permutes Llama's q/k rows for its rotary
# embedding); refused by name rather than loaded wrong.
_UNSUPPORTED_TEXT_ARCHES = {"llama", "qwen3vl"}


class GGUFError(ValueError):
    """A GGUF file comfyd cannot read."""


def _rename(name: str, table: tuple[tuple[str, str], ...]) -> str:
    for old, new in table:
        name = name.replace(old, new)
    return name


class GGUFWeights:
    """Names, shapes and dequantized tensors of one GGUF file."""

    def __init__(self, path: Path) -> None:
        try:
            import gguf
        except ImportError as exc:  # a dependency, but say what is missing rather than fail obscurely
            raise GGUFError("reading .gguf files needs the gguf package (pip install gguf)") from exc
        self._gguf = gguf
        self.path = Path(path)
        try:
            self._reader = gguf.GGUFReader(str(self.path), "r")
        except Exception as exc:  # the library raises ValueError, struct errors, ... for bad files
            raise GGUFError(f"cannot read {self.path.name} as GGUF: {type(exc).__name__}: {exc}") from exc
        self.architecture = self._string_field("general.architecture") or ""
        if self.architecture in _UNSUPPORTED_TEXT_ARCHES:
            raise GGUFError(
                f"{self.path.name}: GGUF text encoders of architecture {self.architecture!r} are not supported "
                "yet (T5, Qwen2.5-VL and Qwen3 ones are); use the safetensors file"
            )
        self._unsupported_logged: set[str] = set()
        table = _RENAMES.get(self.architecture, ())
        self._tensors = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for tensor in self._reader.tensors:
            name = _rename(tensor.name, table) if table else tensor.name
            self._tensors[name] = tensor
            self._shapes[name] = self._original_shape(tensor)

    def _string_field(self, key: str) -> str | None:
        field = self._reader.get_field(key)
        if field is None or not field.data:
            return None
        return bytes(field.parts[field.data[-1]]).decode("utf-8", errors="replace")

    def _original_shape(self, tensor) -> tuple[int, ...]:
        field = self._reader.get_field(f"comfy.gguf.orig_shape.{tensor.name}")
        if field is not None:
            return tuple(int(field.parts[i][0]) for i in field.data)
        return tuple(int(v) for v in reversed(tensor.shape.tolist()))

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def type_name(self, key: str) -> str:
        return self._tensors[key].tensor_type.name

    def dtype(self, key: str) -> torch.dtype:
        """What the tensor is stored as: F16/BF16 as such, quantized ones as float32 (what they
        dequantize to)."""
        kind = self.type_name(key)
        return {"F16": torch.float16, "BF16": torch.bfloat16}.get(kind, torch.float32)

    def get(self, key: str) -> torch.Tensor:
        tensor = self._tensors[key]
        shape = self._shapes[key]
        kind = tensor.tensor_type.name
        if kind in DEQUANTIZERS and kind != "BF16":  # comfyd's torch dequantizers: same values, faster
            raw = torch.from_numpy(np.array(tensor.data, dtype=np.uint8, copy=True)).reshape(-1)
            block, size = BLOCKS[kind]
            out = dequantize(raw, kind, (raw.numel() // size * block,))
            return self._shaped(out, key, shape)
        try:
            if kind in PLAIN_TYPES:
                values = np.array(tensor.data, copy=True)
            else:
                values = self._gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise GGUFError(
                f"{self.path.name}: {key} is stored as {kind}, which cannot be dequantized"
            ) from exc
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out = torch.from_numpy(np.ascontiguousarray(values))
        return self._shaped(out, key, shape)

    def _shaped(self, out: torch.Tensor, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if out.numel() != int(np.prod(shape)):
            raise GGUFError(
                f"{self.path.name}: {key} holds {out.numel()} values, not the {shape} it declares"
            )
        return out.reshape(shape)

    def has_torch_blocks(self, key: str) -> bool:
        """Whether the tensor is block-quantized in a type with a torch dequantizer (a quantized
        type without one is logged, once per type: its tensors are dequantized at load)."""
        tensor_type = self._tensors[key].tensor_type
        kind = tensor_type.name
        if self._gguf.GGML_QUANT_SIZES.get(tensor_type, (1, 0))[0] == 1:
            return False  # one value per "block": F32, F16, BF16, integers
        if kind not in DEQUANTIZERS and kind not in self._unsupported_logged:
            self._unsupported_logged.add(kind)
            log.warning(
                "%s: GGUF type %s has no torch dequantizer in comfyd; its tensors are dequantized "
                "at load and held at their compute-dtype size",
                self.path.name,
                kind,
            )
        return kind in DEQUANTIZERS

    def quantized(self, key: str) -> QuantizedTensor | None:
        """The raw blocks of a block-quantized tensor (a copy, `[rows, row_bytes]`), or None for a
        plain one (F32/F16/BF16) or one that must be dequantized at load instead."""
        if not self.has_torch_blocks(key):
            return None
        tensor = self._tensors[key]
        kind = tensor.tensor_type.name
        shape = self._shapes[key]
        width = row_bytes(kind, shape[-1]) if shape else None
        rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        data = np.asarray(tensor.data)
        if width is None or data.size != rows * width:
            return None  # blocks that do not follow the logical rows (a reshaped tensor)
        blocks = torch.from_numpy(np.array(data, dtype=np.uint8, copy=True).reshape(rows, width))
        return QuantizedTensor(blocks, kind, shape)
