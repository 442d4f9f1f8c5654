"""Diffusion models stored in fp8 (comfyd.models.families._network.load_transformer): each tensor
goes from the file straight to its storage dtype, a file already in fp8 stays in fp8 where ComfyUI
keeps it so, every Flux parameter holds ComfyUI's fp8-rounded value, and the model manager counts
the fp8 bytes. A tiny Flux dev transformer in BFL's layout stands in for the full-size one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models import loader
from comfyd.models.detect import UnknownCheckpointLayout
from comfyd.models.families import _flux_tiny, _network
from comfyd.models.families import _flux_transformer as flux_transformer
from comfyd.models.manager import ModelManager, module_bytes
from comfyd.models.tensorfile import TensorFile
from comfyd.models.tiny import random_module

from .conftest import make_settings

FP8 = torch.float8_e4m3fn
FILES = {
    "bf16": "flux-bf16.safetensors",
    "fp8": "flux-fp8.safetensors",
    "rounded": "flux-rounded.safetensors",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Flux dev transformer stored in bf16, in fp8, and in fp32 holding fp8's values."""
    root = tmp_path_factory.mktemp("fp8-models")
    config = _flux_tiny.tiny_transformer_config(True, 32, 32)
    net = random_module(flux_transformer.empty_transformer(config), 0, "flux-dev")
    stored = {k: v.to(torch.bfloat16).contiguous() for k, v in _stored(net, config).items()}
    folder = root / "diffusion_models"
    folder.mkdir()
    save_file(stored, str(folder / FILES["bf16"]))
    save_file({k: v.to(FP8) for k, v in stored.items()}, str(folder / FILES["fp8"]))
    save_file({k: v.to(FP8).float() for k, v in stored.items()}, str(folder / FILES["rounded"]))
    return root


def _stored(net: Any, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from comfyd.models.keymap import to_original

    return to_original(net.state_dict(), flux_transformer.FluxTranslator(config, ""))


def _inputs(config: Any) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 16, config.in_channels, generator=g),
        "encoder_hidden_states": torch.randn(1, 5, config.joint_attention_dim, generator=g),
        "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=g),
        "timestep": torch.tensor([0.7]),
        "guidance": torch.tensor([3.5]),
        "img_ids": torch.zeros(16, 3),
        "txt_ids": torch.zeros(5, 3),
    }


def _run(handle: Any) -> torch.Tensor:
    with torch.inference_mode(), handle.patched() as network:
        net = network.transformer
        return net(**_inputs(net.config), return_dict=False)[0]


def _manager(root: Path) -> ModelManager:
    return ModelManager(make_settings(root, device="cpu"))


def test_fp8_storage_reads_each_weight_straight_into_fp8_with_comfyuis_values(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conversions: list[tuple[torch.dtype, torch.dtype, int]] = []
    convert = loader.convert_tensor

    def recording(
        tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, rounding: Any = None
    ) -> torch.Tensor:
        conversions.append((tensor.dtype, dtype, tensor.numel()))
        return convert(tensor, device, dtype, rounding)

    monkeypatch.setattr(loader, "convert_tensor", recording)
    manager = _manager(root)
    fp8 = manager.load_diffusion_model(FILES["bf16"], "fp8_e4m3fn")
    net = fp8.unet.transformer
    # Every linear (the modulation ones too, as ComfyUI stores them) is kept in fp8 ...
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == FP8 for m in linears)
    assert any("norm1.linear" in n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear))
    # ... read from bf16 straight into it: no tensor of the file was made fp32 first.
    fp8_reads = [c for c in conversions if c[1] == FP8]
    assert len(fp8_reads) >= len(linears) and all(src == torch.bfloat16 for src, _, _ in fp8_reads)
    wide = [c for c in conversions if c[1] == torch.float32]
    assert sum(n for *_, n in wide) < sum(n for *_, n in fp8_reads) / 20  # biases, norm scales

    # The numbers: those of the same network with every parameter rounded through fp8 (ComfyUI
    # builds each Flux parameter in fp8, the RMSNorm scales included), computed in fp32.
    rounded = manager.load_diffusion_model(FILES["rounded"])
    assert {p.dtype for p in rounded.unet.parameters()} == {torch.float32}
    torch.testing.assert_close(_run(fp8), _run(rounded), rtol=0, atol=1e-5)
    plain = _run(manager.load_diffusion_model(FILES["bf16"]))
    assert not torch.allclose(_run(fp8), plain, atol=1e-5)  # the rounding shows


def test_the_model_manager_counts_the_fp8_bytes(root: Path) -> None:
    manager = _manager(root)
    fp8 = manager.load_diffusion_model(FILES["bf16"], "fp8_e4m3fn")
    wide = manager.load_diffusion_model(FILES["bf16"])
    entries = {e["name"]: e for e in manager.stats()["loaded"]}
    assert len(manager.stats()["loaded"]) == 2 and set(entries) == {FILES["bf16"]}
    fp8_bytes, wide_bytes = (module_bytes(h.unet)[1] for h in (fp8, wide))
    parameters = sum(p.numel() for p in wide.unet.parameters())
    assert manager.stats()["host_bytes"] == fp8_bytes + wide_bytes
    assert wide_bytes == 4 * parameters
    assert fp8_bytes < 1.1 * parameters  # ~1 byte a weight, not 4


def test_an_fp8_file_stays_fp8_where_comfyui_keeps_it(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ComfyUI keeps an fp8 file in fp8 under weight_dtype "default" when its weights in 16 bits
    # would not fit the device (or the device has fp8 matmuls); else it upcasts, exactly.
    monkeypatch.setattr(_network, "weights_room", lambda device: 0)
    kept = _manager(root).load_diffusion_model(FILES["fp8"])
    assert {m.weight.dtype for m in kept.unet.modules() if isinstance(m, torch.nn.Linear)} == {FP8}
    monkeypatch.setattr(_network, "weights_room", lambda device: 1 << 50)
    upcast = _manager(root).load_diffusion_model(FILES["fp8"])
    assert {p.dtype for p in upcast.unet.parameters()} == {torch.float32}
    # Linears computed from fp8 weights either way; the kept model's norm scales are diffusers'
    # kept layers, rounded through fp8 as ComfyUI rounds them.
    torch.testing.assert_close(_run(kept), _run(upcast), rtol=0, atol=1e-5)


def test_the_storage_rule() -> None:
    cpu = torch.device("cpu")
    assert _network.resolve_storage("fp8_e5m2", torch.bfloat16, 10, cpu) == torch.float8_e5m2
    assert _network.resolve_storage("default", torch.bfloat16, 1 << 45, cpu) is None
    assert _network.resolve_storage("default", FP8, 1 << 45, cpu) == FP8  # 64 TB of weights do not fit
    assert _network.resolve_storage("default", FP8, 10, cpu) is None
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        _network.resolve_storage("fp4", FP8, 10, cpu)


def test_fp8_dtypes_are_read_from_the_header(root: Path) -> None:
    with TensorFile(root / "diffusion_models" / FILES["fp8"]) as tf:
        key = next(k for k in tf.keys() if k.endswith("qkv.weight"))
        assert tf.dtype(key) == FP8 and tf.get(key).dtype == FP8


def test_a_scaled_fp8_diffusion_model_is_refused_clearly(root: Path, tmp_path: Path) -> None:
    tensors = load_file(str(root / "diffusion_models" / FILES["fp8"]))
    tensors["scaled_fp8"] = torch.empty(0, dtype=FP8)
    (tmp_path / "diffusion_models").mkdir()
    save_file(tensors, str(tmp_path / "diffusion_models" / "flux-scaled.safetensors"))
    with pytest.raises(UnknownCheckpointLayout, match="scaled fp8"):
        _manager(tmp_path).load_diffusion_model("flux-scaled.safetensors")


def test_an_all_in_one_checkpoint_with_an_fp8_transformer_keeps_it_fp8(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ComfyUI's flux1-dev-fp8 checkpoint: the transformer in fp8 beside its encoders and VAE.
    _flux_tiny.write_tiny_flux(tmp_path)
    path = tmp_path / _flux_tiny.NAMES["checkpoint"]
    prefix = _flux_tiny.CHECKPOINT_PREFIXES["dev"]
    tensors = load_file(str(path))
    save_file({k: v.to(FP8) if k.startswith(prefix) else v for k, v in tensors.items()}, str(path))
    monkeypatch.setattr(_network, "weights_room", lambda device: 0)  # 16-bit weights would not fit
    model, clip, _ = _manager(tmp_path).load_checkpoint(path.name)
    assert {m.weight.dtype for m in model.unet.modules() if isinstance(m, torch.nn.Linear)} == {FP8}
    assert all(p.dtype == torch.float32 for enc in clip.text_encoders.values() for p in enc.parameters())


@pytest.mark.parametrize("family", ["hidream", "lumina2"])
def test_hidream_and_lumina2_load_through_the_shared_fp8_path(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both compute in their own dtype (never fp16), but their weights still go from the file
    # straight to fp8, as every family's do.
    from comfyd.models.families import _hidream_tiny, _lumina2_tiny

    tiny = {"hidream": _hidream_tiny, "lumina2": _lumina2_tiny}[family]
    (tiny.write_tiny_hidream if family == "hidream" else tiny.write_tiny_lumina2)(tmp_path)
    conversions: list[torch.dtype] = []
    convert = loader.convert_tensor

    def recording(
        tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, rounding: Any = None
    ) -> torch.Tensor:
        conversions.append(dtype)
        return convert(tensor, device, dtype, rounding)

    monkeypatch.setattr(loader, "convert_tensor", recording)
    handle = _manager(tmp_path).load_diffusion_model(Path(tiny.NAMES["transformer"]).name, "fp8_e4m3fn")
    linears = [m for m in handle.unet.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and any(m.weight.dtype == FP8 for m in linears)
    # Each fp8 weight was read into fp8 (a fused tensor once per split part), not widened first.
    assert conversions.count(FP8) >= sum(m.weight.dtype == FP8 for m in linears)
