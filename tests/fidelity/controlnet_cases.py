"""Fidelity cases for ControlNet: ControlNetLoader, DiffControlNetLoader, ControlNetApply (old),
ControlNetApplyAdvanced (strength, start/end percent, the optional VAE), two chained
ControlNets and a union ControlNet under SetUnionControlNetType (a type, and "auto"), on the
parity checkpoint at 64x64 and 3 steps.

The control models are random-weight ControlNets cut like the parity UNet (two levels, 320 and
640 channels, one block per level), which ComfyUI detects as SD1.5 ControlNets unaided: one in
the original layout under `control_model.`, one with the same keys bare, and a diff ControlNet (its UNet half stored as a difference to the parity UNet, with the
`difference` marker) that DiffControlNetLoader completes with the model's weights. No
diffusers-layout case: ComfyUI reads a diffusers ControlNet only when its config is one of the
full-size ones it knows, so a cut-down one cannot be rendered (tests/controlnet covers that
layout against the original one).

Union ControlNets are the exception: ComfyUI reads their union parts only in the diffusers
layout, so the parity union ControlNet is a diffusers-layout file cut like the parity UNet, and
its references come from bench/comfyui_union_render.py: ComfyUI's own loader and union model,
with its table of full-size diffusers ControlNet configs extended by the one entry ComfyUI's
own detector infers from the parity checkpoint's UNet (the shape this ControlNet is cut to).
Everything after that lookup (key conversion, union parts, the forward pass, sampling) is
ComfyUI's unchanged code. The hint is
the 70x66 input picture, so it is centre-cropped and resized to 64x64. make_cases.py adds these.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

INPUT_IMAGE = "parity-input.png"
CONTROLNET = "comfyd-parity-controlnet.safetensors"
CONTROLNET_BARE = "comfyd-parity-controlnet-bare.safetensors"
CONTROLNET_DIFF = "comfyd-parity-controlnet-diff.safetensors"
CONTROLNET_UNION = "comfyd-parity-controlnet-union.safetensors"
STEPS = 3


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _small(base: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    w = base()
    w["3"]["inputs"]["steps"] = STEPS
    w["1"] = node("LoadImage", image=INPUT_IMAGE)
    return w


def _advanced(w: dict[str, Any], node_id: str, control: list[Any], positive: list[Any], negative: list[Any],
              **inputs: Any) -> None:
    w[node_id] = node("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=control,
                      image=["1", 0], **inputs)


def _sample_with(w: dict[str, Any], node_id: str) -> None:
    w["3"]["inputs"]["positive"] = [node_id, 0]
    w["3"]["inputs"]["negative"] = [node_id, 1]


def cases(base: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    # Active for the first two of three steps (end at 50%), at strength 0.8, with the VAE input.
    w = _small(base)
    w["40"] = node("ControlNetLoader", control_net_name=CONTROLNET)
    _advanced(w, "41", ["40", 0], ["6", 0], ["7", 0], strength=0.8, start_percent=0.0, end_percent=0.5,
              vae=["4", 2])
    _sample_with(w, "41")
    out["controlnet_advanced_end_percent"] = w
    # Two ControlNets chained (the second with bare keys, no `control_model.`), the second one
    # starting late (20%, so the first step runs with the first ControlNet only) and ending early.
    w = _small(base)
    w["40"] = node("ControlNetLoader", control_net_name=CONTROLNET)
    w["42"] = node("ControlNetLoader", control_net_name=CONTROLNET_BARE)
    _advanced(w, "41", ["40", 0], ["6", 0], ["7", 0], strength=0.7, start_percent=0.0, end_percent=1.0)
    _advanced(w, "43", ["42", 0], ["41", 0], ["41", 1], strength=0.5, start_percent=0.2, end_percent=0.8)
    _sample_with(w, "43")
    out["controlnet_chain_two"] = w
    # The old node: positive only; ComfyUI lends the control to the negative prompt as well.
    w = _small(base)
    w["40"] = node("ControlNetLoader", control_net_name=CONTROLNET)
    w["41"] = node("ControlNetApply", conditioning=["6", 0], control_net=["40", 0], image=["1", 0], strength=0.9)
    w["3"]["inputs"]["positive"] = ["41", 0]
    out["controlnet_apply_old"] = w
    # A diff ControlNet, completed with the model's UNet weights.
    w = _small(base)
    w["40"] = node("DiffControlNetLoader", model=["4", 0], control_net_name=CONTROLNET_DIFF)
    _advanced(w, "41", ["40", 0], ["6", 0], ["7", 0], strength=1.0, start_percent=0.0, end_percent=1.0)
    _sample_with(w, "41")
    out["controlnet_diff_loader"] = w
    # A union ControlNet (diffusers layout, 8 control types), with its type set and on "auto".
    # ComfyUI reads it only through bench/comfyui_union_render.py (see the module docstring).
    for case, union_type in (("controlnet_union_type", "canny/lineart/anime_lineart/mlsd"),
                             ("controlnet_union_auto", "auto")):
        w = _small(base)
        w["40"] = node("ControlNetLoader", control_net_name=CONTROLNET_UNION)
        w["44"] = node("SetUnionControlNetType", control_net=["40", 0], type=union_type)
        _advanced(w, "41", ["44", 0], ["6", 0], ["7", 0], strength=0.9, start_percent=0.0, end_percent=1.0)
        _sample_with(w, "41")
        out[case] = w
    return out


def write_models(models: Path, checkpoint: Path) -> None:
    """The four parity ControlNets (the union one in the diffusers layout), next to the parity checkpoint they are cut like."""
    from comfyd.models.keymap import apply_op, unet_translator
    from comfyd.models.tensorfile import TensorFile
    from comfyd.models.tiny import parity_configs
    from comfyd.models.tiny_control import controlnet_parameter_names, write_tiny_controlnet

    unet = parity_configs("sd1").unet
    folder = models / "controlnet"
    write_tiny_controlnet(folder / CONTROLNET, unet, "sd1", seed=5, layout="original", prefix="control_model.")
    write_tiny_controlnet(folder / CONTROLNET_BARE, unet, "sd1", seed=6, layout="original", prefix="")
    # The parity UNet's weights under the ControlNet's names, read straight from the checkpoint.
    translator = unet_translator(unet)
    with TensorFile(checkpoint) as tf:
        base = {}
        for name in controlnet_parameter_names(unet):
            source = translator.source(name)
            if source is not None and source.key in tf:
                base[name] = apply_op(tf.get(source.key), source).clone()
    write_tiny_controlnet(folder / CONTROLNET_DIFF, unet, "sd1", seed=7, layout="original",
                          prefix="control_model.", difference_from=base)
    write_tiny_controlnet(folder / CONTROLNET_UNION, unet, "sd1", seed=8, layout="diffusers", union_types=8)
