"""Every KSampler sampler on flow-matching models, held to ComfyUI 0.3.64's own outputs
(flow_samplers_reference.json, written by bench/comfyui_flow_samplers.py): the same fake model
(guided prediction plus its negative-prompt prediction for the CFG++ samplers), start latent, seed
and sigmas, on ComfyUI's Flux and SD3 flow model samplings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyd.sampling.flow import ExpTimeShiftSchedule, TimeShiftSchedule
from comfyd.sampling.samplers import SAMPLER_NAMES, get_sampler
from comfyd.sampling.samplers.base import SamplerRun

REFERENCE = json.loads((Path(__file__).parent / "flow_samplers_reference.json").read_text())
CASES = sorted((model, key) for model, entry in REFERENCE["models"].items() for key in entry["outputs"])
# Measured: 150 of the 156 outputs equal ComfyUI's bit for bit, the rest (deis, lms: their
# coefficients are integrated in float64 by other code) within 3.6e-7.
TOLERANCE = 1e-6


def schedule_of(entry: dict) -> ExpTimeShiftSchedule | TimeShiftSchedule:
    params = entry["params"]
    if entry["kind"] == "ModelSamplingFlux":
        return ExpTimeShiftSchedule(shift=params["shift"])
    return TimeShiftSchedule(shift=params["shift"], multiplier=params["multiplier"])


class FakeModel:
    """bench/comfyui_flow_samplers.py's fake model, as comfyd's samplers call a denoiser."""

    def __init__(self) -> None:
        self.last_uncond: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        cond = x * 0.8 + 0.1 * torch.sin(3 * x) * sigma
        uncond = x * 0.7 - 0.05 * torch.cos(2 * x) * sigma
        self.last_uncond = uncond
        return uncond + (cond - uncond) * REFERENCE["cfg"]


def run_comfyd(model_name: str, key: str, flow: bool = True) -> torch.Tensor:
    entry = REFERENCE["models"][model_name]
    sampler_name, schedule_name = key.split("|")
    model = FakeModel()
    run = SamplerRun(seed=REFERENCE["seed"], last_uncond=lambda: model.last_uncond,
                     schedule=schedule_of(entry), flow=flow)
    start = torch.randn(REFERENCE["shape"], generator=torch.Generator().manual_seed(1))
    sigmas = torch.tensor(entry["sigmas"][schedule_name], dtype=torch.float32)
    return get_sampler(sampler_name)(model, start, sigmas, run)


def test_the_reference_covers_every_k_diffusion_sampler() -> None:
    covered = {key.split("|")[0] for _, key in CASES}
    # ddim is euler in ComfyUI, uni_pc(_bh2) go through its UniPC module, not k-diffusion's list.
    assert covered == set(SAMPLER_NAMES) - {"ddim", "uni_pc", "uni_pc_bh2"}


@pytest.mark.filterwarnings("ignore:Should have tb<=t1")  # torchsde, on ComfyUI's side too
@pytest.mark.parametrize("model_name,key", CASES)
def test_sampler_on_flow_model_matches_comfyui(model_name: str, key: str) -> None:
    expected = torch.tensor(REFERENCE["models"][model_name]["outputs"][key]).reshape(REFERENCE["shape"])
    ours = run_comfyd(model_name, key)
    assert torch.isfinite(ours).all()
    assert (ours - expected).abs().max().item() <= TOLERANCE * max(1.0, expected.abs().max().item()), key


@pytest.mark.parametrize("name", ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde", "er_sde", "seeds_2",
                                  "sa_solver", "dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_flow_forms_differ_from_the_discrete_ones(name: str) -> None:
    """The flow branch is taken: the same inputs under EPS/V formulas give another result."""
    key = f"{name}|simple_4"
    flow = run_comfyd("sd3_shift_3", key)
    discrete = run_comfyd("sd3_shift_3", key, flow=False)
    assert not torch.allclose(flow, discrete, atol=1e-3)
