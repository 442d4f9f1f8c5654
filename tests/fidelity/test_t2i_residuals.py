"""A T2I-Adapter's residuals against ComfyUI's, in the default suite (fast: a 32-wide adapter).

`t2i/residuals.safetensors` is what ComfyUI 0.3.64's own loader and T2IAdapter.get_control
answered for a small full adapter (ComfyUI detects it unaided), a 70x66 hint at strength 0.7
and a batch of two 8x8 latents (bench/comfyui_t2i_residuals.py). comfyd's ControlRun must put the
same residuals at the same positions of the input-block list. The whole picture through a
UNet is held to ComfyUI by the opt-in test_t2i_parity.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "bench"))

from comfyui_t2i_residuals import BATCH, LATENT, STRENGTH  # noqa: E402

REFERENCE = HERE / "t2i" / "residuals.safetensors"


def _reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(REFERENCE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def test_adapter_residuals_match_comfyui(tmp_path: Path) -> None:
    from comfyd.models.control_link import ControlLink
    from comfyd.models.control_model import load_control_model
    from comfyd.models.devices import compute_plan
    from comfyd.models.tiny_control import write_tiny_t2i_adapter

    tensors, metadata = _reference()
    path = write_tiny_t2i_adapter(tmp_path / "t2i.safetensors", seed=11, channels=32, layout="original")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == metadata["adapter_sha256"], (
        "the adapter file is not the one the reference was made from: rerun bench/comfyui_t2i_residuals.py"
    )
    assert float(metadata["strength"]) == STRENGTH and json.loads(metadata["middle"]) == []
    handle = load_control_model(path, "k", path.name, compute_plan("cpu", "auto"))
    link = ControlLink(handle).with_hint(tensors["hint"].movedim(1, -1), STRENGTH, (0.0, 1.0), None)
    run = link.for_run(lambda p: 1e9 if p == 0 else 0.0)
    with torch.no_grad():
        ours = run(torch.zeros(BATCH, *LATENT), torch.ones(BATCH), 1.0, torch.zeros(BATCH, 1, 8), None, BATCH)
    assert ours is not None and len(ours.input) == int(metadata["input_length"])
    assert not ours.middle and not ours.output
    for i, value in enumerate(ours.input):
        expected = tensors.get(f"input.{i}")
        assert (value is None) == (expected is None), f"position {i}"
        if expected is not None:
            assert value is not None and value.shape == expected.shape
            error = (value.float() - expected).pow(2).mean()
            snr_db = 10 * torch.log10(expected.pow(2).mean() / error.clamp_min(1e-30))
            print(f"RESULT t2i_residual_{i}_snr_db={snr_db:.2f}")
            assert snr_db >= 60, f"position {i}: {snr_db:.1f} dB"
