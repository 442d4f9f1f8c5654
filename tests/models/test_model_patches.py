"""Model patches: merges, UNet hooks and guidance patches stack, compute ComfyUI's arithmetic on
the weights, and leave the shared modules exactly as they were."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from comfyd.models.attention_capture import middle_self_attention
from comfyd.models.handles import MergePatch, ModelHandle
from comfyd.models.lora import LoraPatcher
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny_checkpoint, make_tiny_lora
from comfyd.models.unet_hooks import output_block_resnets
from comfyd.nodes.advanced.guidance import PerpNeg, SelfAttentionGuidance
from comfyd.nodes.advanced.model_merging import (
    CLIPMergeSimple,
    ModelMergeAdd,
    ModelMergeBlocks,
    ModelMergeSimple,
    ModelMergeSubtract,
)
from comfyd.nodes.advanced.model_patches import FreeU, FreeU_V2, ModelSamplingDiscrete, RescaleCFG
from comfyd.nodes.conditioning.clip_text import CLIPTextEncode
from comfyd.sampling.ksampler import common_ksampler

from .conftest import make_settings, node_context

FIRST = "comfyd-tiny-sd1.safetensors"
SECOND = "comfyd-tiny-sd1-seed1.safetensors"


@pytest.fixture(scope="module")
def mm(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelManager:
    root = tmp_path_factory.mktemp("patch-models")
    # The session's seed-0 checkpoint (tests/models/conftest.py), and a second seed beside it.
    first = root / "checkpoints" / FIRST
    first.parent.mkdir(parents=True)
    os.link(models_root / "checkpoints" / FIRST, first)  # a hard link: symlinks out are refused
    make_tiny_checkpoint(root / "checkpoints", "sd1", "single", seed=1)
    make_tiny_lora(root / "loras", first, "kohya", seed=1, name="kohya.safetensors")
    return ModelManager(make_settings(root, device="cpu"))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _patched(handle: ModelHandle) -> dict[str, torch.Tensor]:
    with handle.patched() as unet:
        return _state(unet)


def _sample(mm: ModelManager, model: ModelHandle, clip, steps: int = 2) -> torch.Tensor:
    ctx = node_context(mm, "CLIPTextEncode")
    (positive,) = CLIPTextEncode().run(ctx, "a red fox", clip)
    (negative,) = CLIPTextEncode().run(ctx, "blurry", clip)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return common_ksampler(model, 7, steps, 6.0, "euler", "normal", positive, negative, latent)["samples"]


def test_merges_compute_comfyuis_weights_and_restore_bit_for_bit(mm: ModelManager) -> None:
    first, _, _ = mm.load_checkpoint(FIRST)
    second, _, _ = mm.load_checkpoint(SECOND)
    ctx = node_context(mm, "ModelMergeSimple")
    base1, base2 = _state(first.unet), _state(second.unet)

    (simple,) = ModelMergeSimple().run(ctx, first, second, 0.3)
    merged = _patched(simple)
    for name, weight in base1.items():
        assert torch.equal(merged[name], weight * 0.3 + 0.7 * base2[name]), name

    (difference,) = ModelMergeSubtract().run(ctx, second, first, 0.5)
    (added,) = ModelMergeAdd().run(ctx, first, difference)
    merged = _patched(added)
    for name, weight in base1.items():
        # The source is itself patched: its weights as its own patches make them.
        source = base2[name] * 0.5 + -0.5 * weight
        assert torch.equal(merged[name], weight + 1.0 * source), name

    assert _equal(_state(first.unet), base1) and _equal(_state(second.unet), base2)


def test_merge_blocks_ratio_follows_the_original_key_prefix(mm: ModelManager) -> None:
    first, _, _ = mm.load_checkpoint(FIRST)
    second, _, _ = mm.load_checkpoint(SECOND)
    base1, base2 = _state(first.unet), _state(second.unet)
    (merged_handle,) = ModelMergeBlocks().run(node_context(mm), first, second, 0.1, 0.5, 0.9)
    merged = _patched(merged_handle)

    def ratio_of(name: str) -> float:
        diff = (merged[name] - base2[name]).flatten()
        span = (base1[name] - base2[name]).flatten()
        k = int(span.abs().argmax())
        return float(diff[k] / span[k])

    # input_blocks (conv_in, down blocks), middle_block, out / output_blocks; time_embed takes
    # the first block's ratio.
    assert ratio_of("conv_in.weight") == pytest.approx(0.1, abs=1e-4)
    assert ratio_of("down_blocks.0.resnets.0.conv1.weight") == pytest.approx(0.1, abs=1e-4)
    assert ratio_of("mid_block.resnets.0.conv1.weight") == pytest.approx(0.5, abs=1e-4)
    assert ratio_of("up_blocks.0.resnets.0.conv1.weight") == pytest.approx(0.9, abs=1e-4)
    assert ratio_of("conv_out.weight") == pytest.approx(0.9, abs=1e-4)
    assert ratio_of("time_embedding.linear_1.weight") == pytest.approx(0.1, abs=1e-4)


def test_merging_a_model_with_its_own_lora_copy_reads_the_base_weights(mm: ModelManager) -> None:
    model, _, _ = mm.load_checkpoint(FIRST)
    base = _state(model.unet)
    with_lora = model.with_loras(mm.lora_patch("kohya.safetensors", 1.0))
    lora_state = _patched(with_lora)
    (merged_handle,) = ModelMergeSimple().run(node_context(mm), model, with_lora, 0.25)
    merged = _patched(merged_handle)
    for name, weight in base.items():
        expected = weight * 0.25 + 0.75 * lora_state[name]
        assert torch.allclose(merged[name], expected, atol=1e-6), name
    assert _equal(_state(model.unet), base)


def test_clip_merge_patches_every_encoder_weight_and_restores(mm: ModelManager) -> None:
    _, clip1, _ = mm.load_checkpoint(FIRST)
    _, clip2, _ = mm.load_checkpoint(SECOND)
    base1, base2 = _state(clip1.text_encoders["l"]), _state(clip2.text_encoders["l"])
    (merged,) = CLIPMergeSimple().run(node_context(mm), clip1, clip2, 0.6)
    with merged.patched() as encoders:
        state = _state(encoders["l"])
    params = {name for name, _ in clip1.text_encoders["l"].named_parameters()}
    for name in params:
        assert torch.equal(state[name], base1[name] * 0.6 + 0.4 * base2[name]), name
    assert _equal(_state(clip1.text_encoders["l"]), base1)


def test_stacked_patches_change_the_output_and_an_unpatched_run_after_is_identical(mm: ModelManager) -> None:
    model, clip, _ = mm.load_checkpoint(FIRST)
    second, _, _ = mm.load_checkpoint(SECOND)
    ctx = node_context(mm)
    base_state = _state(model.unet)
    original = _sample(mm, model, clip)

    (empty,) = CLIPTextEncode().run(node_context(mm, "CLIPTextEncode"), "", clip)
    patched = model.with_loras(mm.lora_patch("kohya.safetensors", 0.8))
    (patched,) = ModelMergeSimple().run(ctx, patched, second, 0.6)
    (patched,) = ModelSamplingDiscrete().run(ctx, patched, "v_prediction", True)
    (patched,) = FreeU().run(ctx, patched, 1.1, 1.2, 0.9, 0.2)
    (patched,) = FreeU_V2().run(ctx, patched, 1.3, 1.4, 0.9, 0.2)
    (patched,) = RescaleCFG().run(ctx, patched, 0.7)
    (patched,) = PerpNeg().run(ctx, patched, empty, 1.0)
    (patched,) = SelfAttentionGuidance().run(ctx, patched, 0.5, 2.0)
    attention = middle_self_attention(model.unet)
    processor = attention.processor
    different = _sample(mm, patched, clip)
    assert not torch.equal(different, original)
    assert torch.isfinite(different).all()
    assert attention.processor is processor  # SAG's capture removed

    again = _sample(mm, model, clip)
    assert torch.equal(again, original)
    assert _equal(_state(model.unet), base_state)
    assert all(not resnet._forward_pre_hooks for resnet, _ in output_block_resnets(model.unet))


def test_each_patch_is_part_of_the_handles_identity(mm: ModelManager) -> None:
    model, _, _ = mm.load_checkpoint(FIRST)
    ctx = node_context(mm)
    variants = [
        model,
        ModelSamplingDiscrete().run(ctx, model, "lcm", False)[0],
        ModelSamplingDiscrete().run(ctx, model, "lcm", True)[0],
        FreeU().run(ctx, model, 1.1, 1.2, 0.9, 0.2)[0],
        FreeU().run(ctx, model, 1.1, 1.3, 0.9, 0.2)[0],
        RescaleCFG().run(ctx, model, 0.7)[0],
        ModelMergeSimple().run(ctx, model, model, 0.5)[0],
    ]
    for i, a in enumerate(variants):
        for b in variants[i + 1 :]:
            assert a != b and (a.patches, a.prediction, a.zsnr, a.guidance) != (
                b.patches, b.prediction, b.zsnr, b.guidance,
            )  # fmt: skip
    # The same patch twice is the same model (the patcher keeps it applied for both jobs).
    assert FreeU().run(ctx, model, 1.1, 1.2, 0.9, 0.2)[0].patches == variants[3].patches


def test_output_block_widths_split_each_resnet_input(mm: ModelManager) -> None:
    model, _, _ = mm.load_checkpoint(FIRST)
    pairs = list(output_block_resnets(model.unet))
    assert len(pairs) == sum(len(block.resnets) for block in model.unet.up_blocks)
    for resnet, width in pairs:
        assert 0 < width < resnet.conv1.in_channels


def test_patch_nodes_refuse_what_is_not_a_model(mm: ModelManager) -> None:
    model, clip, _ = mm.load_checkpoint(FIRST)
    with pytest.raises(ValueError, match="ModelMergeSimple patches a diffusion model"):
        ModelMergeSimple().run(node_context(mm), model, "nope", 0.5)
    with pytest.raises(ValueError, match="CLIPMergeSimple merges two CLIP"):
        CLIPMergeSimple().run(node_context(mm), clip, model, 0.5)
    with pytest.raises(ValueError, match="sampling must be one of"):
        ModelSamplingDiscrete().run(node_context(mm), model, "flow", False)
    with pytest.raises(ValueError, match="empty_conditioning"):
        PerpNeg().run(node_context(mm), model, [], 1.0)


def test_a_merge_weight_of_another_shape_is_only_scaled_as_comfyui_does() -> None:
    first, second = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    second.bias = torch.nn.Parameter(torch.ones(5))
    weight, bias = first.weight.detach().clone(), first.bias.detach().clone()
    patcher = LoraPatcher("sd1", {"unet": first}, lambda key: pytest.fail("no LoRA here"))
    patch = MergePatch("second", (), 0.6, 0.4, source_modules={"unet": second})
    patcher.apply(first, (patch,))
    try:
        assert torch.equal(first.weight.detach(), weight * 0.4 + 0.6 * second.weight.detach())
        assert torch.equal(first.bias.detach(), bias * 0.4)
    finally:
        patcher.restore(first)
    assert torch.equal(first.weight.detach(), weight) and torch.equal(first.bias.detach(), bias)
