"""Loading checkpoints: both formats give the same weights, pickle is refused, nothing goes online."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models import loader
from comfyd.models.devices import compute_plan
from comfyd.models.keymap import to_original, vae_translator
from comfyd.models.manager import ModelManager
from comfyd.models.tensorfile import ModelFileError, PickleRefused
from comfyd.models.tiny import make_tiny_checkpoint

from .conftest import FAMILIES, diffusers_name, make_settings, single_name

CPU = compute_plan("cpu", "auto")


def _modules(loaded: loader.LoadedCheckpoint) -> dict[str, torch.nn.Module]:
    return {
        "unet": loaded.unet,
        "vae": loaded.vae,
        **{f"text_{k}": v for k, v in loaded.text_encoders.items()},
    }


def _assert_identical(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys(), what
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, (what, key)
        assert torch.equal(state_a[key], state_b[key]), (what, key)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_and_diffusers_folder_hold_identical_weights(models_root: Path, family: str) -> None:
    folder = models_root / "checkpoints"
    single = loader.load_single_file(folder / single_name(family), CPU)
    diffusers = loader.load_diffusers_folder(folder / diffusers_name(family), CPU)
    assert (single.family, single.prediction, single.latent_scale) == (
        diffusers.family,
        diffusers.prediction,
        diffusers.latent_scale,
    )
    modules_a, modules_b = _modules(single), _modules(diffusers)
    assert modules_a.keys() == modules_b.keys()
    for name in modules_a:
        _assert_identical(modules_a[name], modules_b[name], f"{family} {name}")
    # CPU plan: everything computes in fp32.
    assert {p.dtype for m in modules_a.values() for p in m.parameters()} == {torch.float32}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a", "sd1", "single", seed=7)
    b = make_tiny_checkpoint(tmp_path / "b", "sd1", "single", seed=7)
    c = make_tiny_checkpoint(tmp_path / "c", "sd1", "single", seed=8)
    assert a.read_bytes() == b.read_bytes()
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert not torch.equal(load_file(a)[key], load_file(c)[key])


def test_pickle_checkpoint_is_refused_with_the_reason(models_root: Path, tmp_path: Path) -> None:
    state = load_file(models_root / "checkpoints" / single_name("sd1"))
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "global_step": 10}, ckpt)
    with pytest.raises(PickleRefused) as info:
        loader.load_single_file(ckpt, CPU)
    message = str(info.value)
    assert "old.ckpt" in message and "arbitrary code" in message and "allow_pickle" in message
    # Allowed by the operator: read with weights_only and identical to the safetensors file.
    allowed = loader.load_single_file(ckpt, CPU, allow_pickle=True)
    reference = loader.load_single_file(models_root / "checkpoints" / single_name("sd1"), CPU)
    _assert_identical(allowed.unet, reference.unet, "unet")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run a callable on load
        return (Path.touch, (self.marker,))


def test_allowed_pickle_still_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        pickle.dump({"state_dict": {"w": _Payload(marker)}}, handle, protocol=2)
    with pytest.raises(ModelFileError, match="weights_only"):
        loader.load_single_file(path, CPU, allow_pickle=True)
    assert not marker.exists()


def test_no_network_is_touched_while_loading(models_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    manager = ModelManager(make_settings(models_root, device="cpu"))
    for family in ("sd1", "sdxl"):
        manager.load_checkpoint(single_name(family))
        manager.load_checkpoint(diffusers_name(family))
    assert manager.stats()["loads"] == 4


def test_cpu_text_encoder_weights_are_rounded_through_fp16_like_comfyui(
    models_root: Path, tmp_path: Path
) -> None:
    state = load_file(models_root / "checkpoints" / single_name("sd1"))
    key = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
    fp32 = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    fp32[key] = fp32[key] + 1e-6  # not representable in fp16 around 1.0
    path = tmp_path / "fp32.safetensors"
    save_file(fp32, str(path))
    auto = loader.load_single_file(path, CPU).text_encoders["l"]
    exact = loader.load_single_file(path, compute_plan("cpu", "fp32")).text_encoders["l"]
    weight_auto = dict(auto.named_parameters())[_param_name(auto, "final_layer_norm.weight")]
    weight_exact = dict(exact.named_parameters())[_param_name(exact, "final_layer_norm.weight")]
    assert weight_auto.dtype == torch.float32
    assert torch.equal(weight_auto, fp32[key].half().float())
    assert torch.equal(weight_exact, fp32[key])


def _param_name(module: torch.nn.Module, suffix: str) -> str:
    return next(n for n, _ in module.named_parameters() if n.endswith(suffix))


def test_standalone_vae_files_in_both_layouts(models_root: Path, tmp_path: Path) -> None:
    reference = loader.load_single_file(models_root / "checkpoints" / single_name("sd1"), CPU).vae
    weights = {k: v.half() for k, v in reference.state_dict().items()}
    original = to_original(weights, vae_translator(dict(reference.config), key_prefix=""))
    save_file(original, str(tmp_path / "vae-ft.safetensors"))
    save_file(weights, str(tmp_path / "vae-diffusers.safetensors"))
    for name in ("vae-ft.safetensors", "vae-diffusers.safetensors"):
        _assert_identical(loader.load_vae_file(tmp_path / name, CPU), reference, name)
    save_file({"nothing.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="not a VAE"):
        loader.load_vae_file(tmp_path / "bad.safetensors", CPU)


def test_corrupt_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ModelFileError, match="broken.safetensors"):
        loader.load_single_file(path, CPU)


def test_loaded_weights_never_alias_the_file(models_root: Path, tmp_path: Path) -> None:
    """An fp32 file on CPU needs no conversion; the weights are still copies, not file views."""
    state = load_file(models_root / "checkpoints" / single_name("sd1"))
    path = tmp_path / "fp32.safetensors"
    save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, str(path))
    loaded = loader.load_single_file(path, compute_plan("cpu", "fp32"))
    first = dict(loaded.unet.named_parameters())["conv_in.weight"].detach().clone()
    path.write_bytes(b"\0" * path.stat().st_size)  # overwritten in place while loaded
    assert torch.equal(dict(loaded.unet.named_parameters())["conv_in.weight"], first)
