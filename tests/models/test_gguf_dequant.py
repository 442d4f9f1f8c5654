"""comfyd's torch dequantizers against the `gguf` library's numpy ones: bit for bit, on random
blocks of every type they cover (float16 scale fields kept finite, every other byte random)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from torch import nn

from comfyd.models import gguf_layers
from comfyd.models.gguf_dequant import BLOCKS, DEQUANTIZERS, dequantize

# Where each type keeps its float16 scale fields (byte offsets in a block).
HALF_FIELDS = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}  # fmt: skip


def _random_blocks(type_name: str, count: int, rng: np.random.Generator) -> np.ndarray:
    _, size = BLOCKS[type_name]
    if type_name == "BF16":
        values = rng.standard_normal(count).astype(np.float32)
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16).view(np.uint8).reshape(count, 2)
    raw = rng.integers(0, 256, size=(count, size), dtype=np.uint8)
    for offset in HALF_FIELDS[type_name]:
        raw[:, offset : offset + 2] = rng.standard_normal((count, 1)).astype(np.float16).view(np.uint8)
    return raw


@pytest.mark.parametrize("type_name", sorted(DEQUANTIZERS))
def test_each_type_matches_the_gguf_library_bit_for_bit(type_name: str) -> None:
    rng = np.random.default_rng(len(type_name) * 7 + sum(map(ord, type_name)))
    block, size = BLOCKS[type_name]
    assert gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, type_name)] == (block, size)
    raw = _random_blocks(type_name, 48, rng).reshape(6, -1)  # 6 rows of 8 blocks
    expected = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, type_name))
    got = dequantize(torch.from_numpy(raw.copy()), type_name, expected.shape)
    assert got.dtype == torch.float32 and tuple(got.shape) == expected.shape
    assert np.isfinite(expected).all()
    assert torch.equal(got.view(torch.int32), torch.from_numpy(expected.copy()).view(torch.int32))


def test_a_linear_and_an_embedding_compute_with_their_weight_dequantized() -> None:
    # Rows of blocks: a Linear [8, 64] and an Embedding [10, 64] stored as Q8_0 / Q4_1.
    rng = np.random.default_rng(0)
    linear, embedding = nn.Linear(64, 8), nn.Embedding(10, 64)
    module = nn.ModuleDict({"proj": linear, "embed": embedding}).requires_grad_(False)
    held, weights = {}, {}
    for name, rows, kind in (("proj", 8, "Q8_0"), ("embed", 10, "Q4_1")):
        values = rng.standard_normal((rows, 64)).astype(np.float32)
        raw = gguf.quants.quantize(values, getattr(gguf.GGMLQuantizationType, kind))
        weights[name] = torch.from_numpy(gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, kind)))
        held[f"{name}.weight"] = gguf_layers.QuantizedTensor(torch.from_numpy(raw.copy()), kind, (rows, 64))
    bias = linear.bias.clone()
    gguf_layers.install(module, held, torch.device("cpu"), torch.float32)
    assert isinstance(linear, nn.Linear) and "weight" not in dict(linear.named_parameters())
    assert torch.equal(linear.weight, weights["proj"])  # read outside forward: dequantized then
    x, ids = torch.randn(3, 64), torch.tensor([[1, 9, 1]])
    assert torch.equal(linear(x), nn.functional.linear(x, weights["proj"], bias))
    assert torch.equal(embedding(ids), weights["embed"][ids])
    # What memory accounting sees: the blocks (34 bytes per 32 values for Q8_0, 20 for Q4_1).
    assert gguf_layers.quantized_bytes(module) == 8 * 2 * 34 + 10 * 2 * 20
    # A LoRA-patched weight is kept beside the blocks until the patches are dropped.
    slot = gguf_layers.quantized_weights(module)["proj.weight"]
    slot.patch([lambda w: w + 1.0])
    assert torch.equal(linear(x), nn.functional.linear(x, weights["proj"] + 1.0, bias))
    gguf_layers.drop_patches(module)
    assert torch.equal(linear(x), nn.functional.linear(x, weights["proj"], bias))


def test_materialize_keeps_torch_types_quantized_and_dequantizes_the_others_at_load(tmp_path, caplog) -> None:
    from comfyd.models.keymap import IdentityTranslator
    from comfyd.models.loader import materialize
    from comfyd.models.manager import module_bytes
    from comfyd.models.tensorfile import TensorFile

    rng = np.random.default_rng(1)
    tq2, q8 = gguf.GGMLQuantizationType.TQ2_0, gguf.GGMLQuantizationType.Q8_0
    first = gguf.quants.quantize(rng.standard_normal((32, 256)).astype(np.float32), tq2)
    second = gguf.quants.quantize(rng.standard_normal((4, 32)).astype(np.float32), q8)
    writer = gguf.GGUFWriter(str(tmp_path / "two.gguf"), "test")
    writer.add_tensor("0.weight", first, raw_dtype=tq2)  # no torch dequantizer
    writer.add_tensor("0.bias", np.zeros(32, dtype=np.float32))
    writer.add_tensor("1.weight", second, raw_dtype=q8)
    writer.add_tensor("1.bias", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with torch.device("meta"):
        module = nn.Sequential(nn.Linear(256, 32), nn.Linear(32, 4))
    with caplog.at_level("WARNING"), TensorFile(tmp_path / "two.gguf") as tf:
        materialize(module, IdentityTranslator(), tf, torch.device("cpu"), torch.float32)
    assert "GGUF type TQ2_0 has no torch dequantizer" in caplog.text
    assert type(module[0]) is nn.Linear and isinstance(module[1], gguf_layers.GGUFLinear)
    assert torch.equal(module[0].weight, torch.from_numpy(gguf.quants.dequantize(first, tq2)))
    assert torch.equal(module[1].weight, torch.from_numpy(gguf.quants.dequantize(second, q8)))
    # Counted: the first weight as float32 values, the second as its blocks (4 rows of 34 bytes).
    assert sum(module_bytes(module)) == 32 * 256 * 4 + 32 * 4 + 4 * 34 + 4 * 4
