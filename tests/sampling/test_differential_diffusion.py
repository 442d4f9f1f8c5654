"""DifferentialDiffusion against ComfyUI's own masks (data/differential_mask_reference.json,
written by bench/comfyui_differential_mask.py from ComfyUI 0.3.64), and its place in the
inpainting denoiser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.differential_diffusion import DifferentialDiffusion
from comfyd.sampling.differential_diffusion import DifferentialMask
from comfyd.sampling.flow import ExpTimeShiftSchedule
from comfyd.sampling.ksampler import InpaintDenoiser, mask_function_of
from comfyd.sampling.model_sampling import DiscreteModelSampling

REFERENCE = json.loads((Path(__file__).parent / "data" / "differential_mask_reference.json").read_text())
SCHEDULES = {
    "sd1": lambda: DiscreteModelSampling("eps", 0.00085, 0.012, 1000, False).schedule,
    "flux_dev": lambda: ExpTimeShiftSchedule(shift=1.15),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_step_masks_match_comfyui(name: str) -> None:
    schedule = SCHEDULES[name]()
    case = REFERENCE[name]
    sigmas = torch.tensor(case["sigmas"], dtype=torch.float32)
    mask = torch.tensor(REFERENCE["mask"], dtype=torch.float32)
    for step in case["steps"]:
        ours = DifferentialMask(step["strength"]).bind(schedule, sigmas)(step["sigma"], mask)
        assert torch.allclose(ours, torch.tensor(step["mask"]), atol=1e-6), (step["sigma"], step["strength"])


def test_inpaint_denoiser_uses_the_step_mask() -> None:
    latent = torch.full((1, 1, 1, 2), 5.0)
    soft = torch.tensor([[[[0.2, 0.9]]]])
    seen: list[torch.Tensor] = []

    def inner(x: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(x.clone())
        return torch.zeros_like(x)

    schedule = ExpTimeShiftSchedule(shift=1.15)
    sigmas = torch.tensor([1.0, 0.5, 0.0])
    step = DifferentialMask().bind(schedule, sigmas)
    denoiser = InpaintDenoiser(inner, soft, latent, torch.zeros_like(latent), None, mask_function=step)
    out = denoiser(torch.ones_like(latent), 1.0)  # threshold 1: nothing sampled yet
    assert torch.equal(out, latent) and torch.equal(seen[-1], latent)
    out = denoiser(torch.ones_like(latent), 0.5)  # threshold ~0.5: the 0.9 cell is sampled
    assert torch.equal(out, torch.tensor([[[[5.0, 0.0]]]]))
    assert torch.equal(seen[-1], torch.tensor([[[[5.0, 1.0]]]]))


def test_node_sets_the_models_mask_function() -> None:
    handle = ModelHandle(key="k", family="sd1", prediction="eps", unet=None, latent_scale=1.0, device="cpu",
                         dtype=torch.float32)  # fmt: skip
    (patched,) = DifferentialDiffusion().run(None, handle, 0.25)  # type: ignore[arg-type]
    assert patched.denoise_mask_function == DifferentialMask(0.25) and handle.denoise_mask_function is None
    assert mask_function_of(handle, None, torch.tensor([1.0])) is None
    with pytest.raises(ValueError, match="DifferentialDiffusion"):
        DifferentialDiffusion().run(None, object())  # type: ignore[arg-type]
