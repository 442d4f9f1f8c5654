"""LoRA: kohya and peft formats patch the right weights, strength 0 is a no-op, restore is exact."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models.handles import ModelHandle
from comfyd.models.lora import LoraFormatError
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import (
    LORA_TEXT_TARGETS,
    LORA_UNET_TARGETS,
    lora_layers,
    make_tiny_checkpoint,
    make_tiny_lora,
)
from comfyd.nodes.loaders.checkpoints import LoraLoader, LoraLoaderModelOnly

from .conftest import make_settings, node_context


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora-models")
    sd1 = make_tiny_checkpoint(root / "checkpoints", "sd1", "single")
    sdxl = make_tiny_checkpoint(root / "checkpoints", "sdxl", "single")
    loras = root / "loras"
    make_tiny_lora(loras, sd1, "kohya", seed=1, name="kohya.safetensors")
    make_tiny_lora(loras, sd1, "kohya", seed=1, unet_names="original", name="kohya-original.safetensors")
    make_tiny_lora(loras, sd1, "peft", seed=2, name="peft.safetensors")
    make_tiny_lora(loras, sdxl, "kohya", seed=3, name="xl.safetensors")
    save_file({"something.weight": torch.zeros(2)}, str(loras / "not-a-lora.safetensors"))
    return root


@pytest.fixture()
def mm(lora_root: Path) -> ModelManager:
    return ModelManager(make_settings(lora_root, device="cpu"))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module: torch.nn.Module, base: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, base[k])}


def _expected_targets(module: torch.nn.Module, targets: tuple[str, ...]) -> set[str]:
    return {f"{name}.weight" for name, _ in lora_layers(module, targets)}


def _patched_state(handle: ModelHandle) -> dict[str, torch.Tensor]:
    with handle.patched() as unet:
        return _snapshot(unet)


def test_kohya_and_peft_formats_change_exactly_the_targeted_weights(mm: ModelManager) -> None:
    model, clip, _ = mm.load_checkpoint("comfyd-tiny-sd1.safetensors")
    base_unet, base_text = _snapshot(model.unet), _snapshot(clip.text_encoders["l"])
    unet_targets = _expected_targets(model.unet, LORA_UNET_TARGETS)
    text_targets = _expected_targets(clip.text_encoders["l"], LORA_TEXT_TARGETS)
    results = {}
    for lora in ("kohya.safetensors", "kohya-original.safetensors", "peft.safetensors"):
        patched_model = model.with_loras(mm.lora_patch(lora, 1.0))
        patched_clip = clip.with_loras(mm.lora_patch(lora, 1.0))
        with patched_model.patched() as unet:
            assert _changed(unet, base_unet) == unet_targets, lora
            results[lora] = _snapshot(unet)
        with patched_clip.patched() as encoders:
            assert _changed(encoders["l"], base_text) == text_targets, lora
        assert (
            _changed(model.unet, base_unet) == set() and _changed(clip.text_encoders["l"], base_text) == set()
        )
    # Original-style kohya names (input_blocks_1_1_...) hit the same layers as diffusers-style ones.
    for key, value in results["kohya.safetensors"].items():
        assert torch.equal(value, results["kohya-original.safetensors"][key]), key


def test_patch_arithmetic_is_strength_times_alpha_over_rank_times_up_down(
    mm: ModelManager, lora_root: Path
) -> None:
    model, _, _ = mm.load_checkpoint("comfyd-tiny-sd1.safetensors")
    raw = load_file(lora_root / "loras" / "kohya.safetensors")
    base = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    down, up, alpha = (raw[f"{base}.{p}"].float() for p in ("lora_down.weight", "lora_up.weight", "alpha"))
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    weight = model.unet.state_dict()[name].clone()
    patched = _patched_state(model.with_loras(mm.lora_patch("kohya.safetensors", -0.7)))[name]
    expected = weight + (-0.7) * (alpha / down.shape[0]) * (up @ down)
    torch.testing.assert_close(patched, expected, rtol=0, atol=1e-6)


def test_strength_zero_equals_no_lora(mm: ModelManager) -> None:
    model, clip, _ = mm.load_checkpoint("comfyd-tiny-sd1.safetensors")
    ctx = node_context(mm, "LoraLoader")
    same_model, same_clip = LoraLoader().run(ctx, model, clip, "kohya.safetensors", 0.0, 0.0)
    assert same_model is model and same_clip is clip
    (only,) = LoraLoaderModelOnly().run(ctx, model, "kohya.safetensors", 0.0)
    assert only is model
    base = _snapshot(model.unet)
    zero = model.with_loras(mm.lora_patch("kohya.safetensors", 0.0))
    assert _changed_state(_patched_state(zero), base) == set()
    # Model strength only: the CLIP handle comes back unchanged.
    patched_model, untouched_clip = LoraLoader().run(ctx, model, clip, "kohya.safetensors", 1.0, 0.0)
    assert untouched_clip is clip and len(patched_model.loras) == 1


def _changed_state(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in state.items() if not torch.equal(v, base[k])}


def test_stacked_loras_add_up_and_restore_bit_for_bit(mm: ModelManager) -> None:
    model, clip, _ = mm.load_checkpoint("comfyd-tiny-sd1.safetensors")
    ctx = node_context(mm, "LoraLoader")
    base_unet, base_text = _snapshot(model.unet), _snapshot(clip.text_encoders["l"])
    once_model, once_clip = LoraLoader().run(ctx, model, clip, "kohya.safetensors", 0.8, 0.5)
    twice_model, twice_clip = LoraLoader().run(ctx, once_model, once_clip, "peft.safetensors", -1.3, 2.0)
    assert [p.strength for p in twice_model.loras] == [0.8, -1.3]
    single = _patched_state(once_model)
    stacked = _patched_state(twice_model)
    assert _changed_state(stacked, single)  # the second LoRA changed more
    with twice_clip.patched() as encoders:
        assert _changed(encoders["l"], base_text)
    # Everything is back, bit for bit, after the patched blocks.
    assert _changed(model.unet, base_unet) == set()
    assert _changed(clip.text_encoders["l"], base_text) == set()


def test_sdxl_kohya_te1_te2_patch_their_own_encoders(mm: ModelManager) -> None:
    model, clip, _ = mm.load_checkpoint("comfyd-tiny-sdxl.safetensors")
    bases = {name: _snapshot(encoder) for name, encoder in clip.text_encoders.items()}
    patched = clip.with_loras(mm.lora_patch("xl.safetensors", 1.0))
    with patched.patched() as encoders:
        for name, encoder in encoders.items():
            assert _changed(encoder, bases[name]) == _expected_targets(encoder, LORA_TEXT_TARGETS), name
    base_unet = _snapshot(model.unet)
    changed = _changed_state(
        _patched_state(model.with_loras(mm.lora_patch("xl.safetensors", 1.0))), base_unet
    )
    assert changed == _expected_targets(model.unet, LORA_UNET_TARGETS)


def test_a_base_user_waits_while_another_job_has_the_unet_patched(mm: ModelManager) -> None:
    model, _, _ = mm.load_checkpoint("comfyd-tiny-sd1.safetensors")
    base = _snapshot(model.unet)
    lora_model = model.with_loras(mm.lora_patch("kohya.safetensors", 1.0))
    inside, release = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def lora_job() -> None:
        with lora_model.patched():
            inside.set()
            release.wait(10)

    def base_job() -> None:
        with model.patched() as unet:
            seen["entered_at"] = time.monotonic()
            seen["changed"] = _changed(unet, base)

    first = threading.Thread(target=lora_job)
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=base_job)
    second.start()
    time.sleep(0.2)
    assert "entered_at" not in seen  # blocked while the LoRA is applied
    released_at = time.monotonic()
    release.set()
    first.join(10)
    second.join(10)
    assert seen["entered_at"] >= released_at and seen["changed"] == set()


def test_lora_files_are_parsed_once_and_bad_files_rejected(mm: ModelManager) -> None:
    mm.lora_patch("kohya.safetensors", 1.0)
    mm.lora_patch("kohya.safetensors", 0.5)
    assert sum(1 for e in mm.stats()["loaded"] if e["kind"] == "lora") == 1
    with pytest.raises(LoraFormatError, match="not-a-lora.safetensors"):
        mm.lora_patch("not-a-lora.safetensors", 1.0)
