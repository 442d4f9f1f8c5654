"""Fidelity cases for the LoRA formats beyond plain LoRA: LoCon with `lora_mid`, LoHa (CP form on
3x3 convs), LoKr (both factorings), DoRA (`dora_scale` on both axes), full differences (`diff`,
`diff_b`, norms included) and `set_weight`, each on the UNet and the text encoder, and three of
them stacked; and a HypernetworkLoader after a LoRA. The files are comfyd.models.tiny_lycoris's
and tiny_hypernetwork's random ones, small (rank 4).

LoKr's file leaves out `lokr_t2`: ComfyUI 0.3.64 on torch 2.13 fails on that form (torch.kron of
a strided tensor) and leaves the layer unpatched; comfyd applies it (tests/models).
make_cases.py adds these to its cases and writes the files with its models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

# (format, model strength, clip strength): strengths other than 1 take DoRA's other branch.
FORMATS = {
    "locon": (0.8, 0.7),
    "loha": (1.0, 1.2),
    "lokr": (0.9, 1.1),
    "dora": (0.7, 1.0),
    "diff": (1.0, 0.8),
    "set": (1.0, 1.0),
}
STEPS = 4
HYPERNETWORK = "comfyd-parity-hypernetwork.pt"


def lora_file(fmt: str) -> str:
    return f"comfyd-parity-lycoris-{fmt}.safetensors"


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _with_loras(base: Callable[[], dict[str, Any]], chain: list[tuple[str, float, float]]) -> dict[str, Any]:
    w = base()
    w["3"]["inputs"]["steps"] = STEPS
    model, clip = ["4", 0], ["4", 1]
    for index, (fmt, strength_model, strength_clip) in enumerate(chain):
        node_id = str(60 + index)
        w[node_id] = node("LoraLoader", model=model, clip=clip, lora_name=lora_file(fmt),
                          strength_model=strength_model, strength_clip=strength_clip)
        model, clip = [node_id, 0], [node_id, 1]
    w["3"]["inputs"]["model"] = model
    w["6"]["inputs"]["clip"] = clip
    w["7"]["inputs"]["clip"] = clip
    return w


def cases(base: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {f"lora_{fmt}": _with_loras(base, [(fmt, *strengths)]) for fmt, strengths in FORMATS.items()}
    # Patches stack in order on the same weights: DoRA's norm sees the LoCon change before it.
    out["lora_stack_locon_dora_diff"] = _with_loras(
        base, [("locon", 0.6, 0.5), ("dora", 0.8, 0.9), ("diff", -0.5, 0.4)]
    )
    # HypernetworkLoader after a LoRA: self-attention widths 320/640 and the 768-wide context.
    w = _with_loras(base, [("loha", 0.7, 0.0)])
    w["70"] = node("HypernetworkLoader", model=w["3"]["inputs"]["model"], hypernetwork_name=HYPERNETWORK, strength=0.8)
    w["3"]["inputs"]["model"] = ["70", 0]
    out["hypernetwork_after_lora"] = w
    return out


def write_models(models: Path, checkpoint: Path) -> None:
    from comfyd.models.tiny_hypernetwork import make_tiny_hypernetwork
    from comfyd.models.tiny_lycoris import make_tiny_lycoris

    make_tiny_hypernetwork(models / "hypernetworks" / HYPERNETWORK, (320, 640, 768), seed=21)
    for seed, fmt in enumerate(FORMATS, start=11):
        make_tiny_lycoris(models / "loras", checkpoint, fmt, seed=seed, name=lora_file(fmt), cp=fmt != "lokr")
