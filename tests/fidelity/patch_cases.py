"""Fidelity cases for the model patches: ModelSamplingDiscrete, RescaleCFG, FreeU, FreeU_V2,
PerpNeg, SelfAttentionGuidance, the model merges and CLIPMergeSimple.

Each case is the base graph (64x64) cut to 2 steps with patches between the checkpoint loader
and the sampler (or the text encoders), several stacked per case. The merges take a second checkpoint, SECOND_CHECKPOINT:
the parity checkpoint with its UNet and text-encoder tensors rearranged (`write_second_checkpoint`),
so that every merged weight differs while the file stays a plain SD1 checkpoint ComfyUI detects
unaided. make_cases.py adds these to its cases and writes that file beside the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

SECOND_CHECKPOINT = "comfyd-parity-sd1-rearranged.safetensors"
STEPS = 2


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _patched(base: Callable[[], dict[str, Any]], patches: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The base graph at STEPS steps, its model passed through `patches` in order (ids 20, 21, ...)."""
    w = base()
    w["3"]["inputs"]["steps"] = STEPS
    source: list[Any] = ["4", 0]
    for index, (class_type, inputs) in enumerate(patches):
        node_id = str(20 + index)
        w[node_id] = node(class_type, model=source, **inputs)
        source = [node_id, 0]
    w["3"]["inputs"]["model"] = source
    return w


def cases(base: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Six cases, each patch at least once, several stacked per case to keep the suite short."""
    out: dict[str, dict[str, Any]] = {}
    # v-prediction with zero terminal SNR, rescaled CFG and FreeU_V2, over a LoRA.
    w = _patched(base, [
        ("ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": True}),
        ("RescaleCFG", {"multiplier": 0.5}),
        ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
    ])
    w["10"] = node("LoraLoaderModelOnly", model=["4", 0], lora_name="comfyd-parity-lora-kohya.safetensors",
                   strength_model=0.8)
    w["20"]["inputs"]["model"] = ["10", 0]
    out["patch_stack_lora_vzsnr_rescale_freeu"] = w
    # LCM model sampling, FreeU (version 1) and PerpNeg, whose empty prompt runs every step.
    w = _patched(base, [
        ("ModelSamplingDiscrete", {"sampling": "lcm", "zsnr": False}),
        ("FreeU", {"b1": 1.1, "b2": 1.2, "s1": 0.9, "s2": 0.2}),
        ("PerpNeg", {"empty_conditioning": ["30", 0], "neg_scale": 1.0}),
    ])
    w["30"] = node("CLIPTextEncode", text="", clip=["4", 1])
    out["patch_lcm_freeu_perp_neg"] = w
    out["patch_self_attention_guidance"] = _patched(
        base, [("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0})]
    )

    def merged(class_type: str, **inputs: Any) -> dict[str, Any]:
        w = base()
        w["3"]["inputs"]["steps"] = STEPS
        w["40"] = node("CheckpointLoaderSimple", ckpt_name=SECOND_CHECKPOINT)
        w["41"] = node(class_type, model1=["4", 0], model2=["40", 0], **inputs)
        w["3"]["inputs"]["model"] = ["41", 0]
        return w

    # ModelMergeSimple, and CLIPMergeSimple encoding the positive prompt.
    w = merged("ModelMergeSimple", ratio=0.35)
    w["43"] = node("CLIPMergeSimple", clip1=["4", 1], clip2=["40", 1], ratio=0.4)
    w["6"]["inputs"]["clip"] = ["43", 0]
    out["merge_simple_and_clip"] = w
    # ModelMergeBlocks, sampled as an x0-prediction model.
    w = merged("ModelMergeBlocks", input=0.2, middle=0.7, out=0.45)
    w["44"] = node("ModelSamplingDiscrete", model=["41", 0], sampling="x0", zsnr=False)
    w["3"]["inputs"]["model"] = ["44", 0]
    out["merge_blocks_x0"] = w
    # A difference model added back: model1 + 0.4 * (second - model1), a patch over a patched model.
    w = merged("ModelMergeSubtract", multiplier=0.4)
    w["41"]["inputs"].update(model1=["40", 0], model2=["4", 0])
    w["42"] = node("ModelMergeAdd", model1=["4", 0], model2=["41", 0])
    w["3"]["inputs"]["model"] = ["42", 0]
    out["merge_add_subtract"] = w
    return out


def write_second_checkpoint(checkpoint: Path, target: Path) -> None:
    """The parity checkpoint with every floating-point UNet and text-encoder tensor rolled by one
    along its first axis.

    A cheap, deterministic second model: same layout, same value statistics, different
    function. The VAE is copied unchanged.
    """
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(("model.", "cond_stage_model.")) and tensor.is_floating_point() and tensor.ndim >= 1:
            tensor = torch.roll(tensor, shifts=1, dims=0)
        out[key] = tensor.contiguous()
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(target), metadata={"comfyd.random_weights": "sd1 parity rearranged"})
