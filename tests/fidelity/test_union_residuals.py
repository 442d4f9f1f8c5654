"""An SDXL-style union ControlNet's residuals against ComfyUI's, in the default suite.

`references/union_sdxl_residuals.safetensors` is what ComfyUI 0.3.64's ControlNet loader and
cldm.ControlNet computed (bench/comfyui_union_residuals.py) for the file `write_files` writes:
a union ControlNet with a vector input (SDXL's text_time conditioning), two levels of 320
channels (ComfyUI builds the union transformer 320 wide), 8 control types, for no type ("auto")
and for type 3.
The SD1.5 union ControlNet is held to ComfyUI's renders in the parity cases.

To remake the reference:
    python tests/fidelity/test_union_residuals.py /tmp/union-sdxl
    python bench/comfyui_union_residuals.py --comfyui /path/to/ComfyUI \\
        --controlnet /tmp/union-sdxl/union.safetensors --twin /tmp/union-sdxl/twin.safetensors \\
        --out tests/fidelity/references/union_sdxl_residuals.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow  # a 25 M-parameter ControlNet written and run twice: a few seconds

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "references" / "union_sdxl_residuals.safetensors"
SEED = 12


def unet_config() -> dict[str, Any]:
    from comfyd.models.tiny import tiny_configs

    pooled = 32
    return dict(tiny_configs("sdxl").unet, block_out_channels=[320, 320], attention_head_dim=[5, 5],
                transformer_layers_per_block=[1, 1], addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=pooled + 6 * 256)


def write_files(folder: Path) -> tuple[Path, Path]:
    """The union file (diffusers layout) and its twin (the same weights, original layout)."""
    from comfyd.models.tiny_control import write_tiny_controlnet

    union = write_tiny_controlnet(folder / "union.safetensors", unet_config(), "sdxl", seed=SEED,
                                  layout="diffusers", union_types=8)
    twin = write_tiny_controlnet(folder / "twin.safetensors", unet_config(), "sdxl", seed=SEED,
                                 layout="original", prefix="")
    return union, twin


@pytest.fixture(scope="module")
def union_handle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from comfyd.models.control_model import load_control_model
    from comfyd.models.devices import compute_plan
    from comfyd.models.tiny_control import write_tiny_controlnet

    path = write_tiny_controlnet(tmp_path_factory.mktemp("union") / "union.safetensors", unet_config(), "sdxl",
                                 seed=SEED, layout="diffusers", union_types=8)
    return load_control_model(path, "k", path.name, compute_plan("cpu", "auto"))


@pytest.mark.parametrize("case", ["auto", "type3"])
def test_union_residuals_match_comfyui(union_handle: Any, case: str) -> None:
    from comfyd.models.control_union import union_controlnet_forward

    with safe_open(str(REFERENCE), "pt") as f:
        ref = {k: f.get_tensor(k) for k in f.keys()}
    handle = union_handle
    added = {"text_embeds": ref["pooled"], "time_ids": ref["time_ids"]}
    with torch.no_grad():
        down, mid = union_controlnet_forward(handle.module, ref["x"], ref["timesteps"], ref["context"], ref["hint"],
                                             {"auto": [], "type3": [3]}[case], added)
    expected = [ref[f"{case}.output.{i}"] for i in range(len(down))] + [ref[f"{case}.middle"]]
    assert f"{case}.output.{len(down)}" not in ref
    for i, (ours, theirs) in enumerate(zip([*down, mid], expected, strict=True)):
        snr_db = 10 * torch.log10(theirs.pow(2).mean() / (ours - theirs).pow(2).mean().clamp_min(1e-30))
        print(f"RESULT union_sdxl_{case}_{i}_snr_db={snr_db:.2f}")
        assert snr_db >= 60, f"{case} residual {i}: {snr_db:.1f} dB"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    print(*write_files(target))
