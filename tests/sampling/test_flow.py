"""Flow-matching model sampling against ComfyUI's own numbers (flow_sigmas_reference.json, written by
bench/comfyui_flow_sigmas.py from ComfyUI 0.3.64's ModelSamplingFlux / ModelSamplingDiscreteFlow),
and the CONST parameterisation's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling, TimeShiftSchedule, flux_shift
from comfyd.sampling.sigmas import SCHEDULER_NAMES, calculate_sigmas

REFERENCE = json.loads((Path(__file__).parent / "flow_sigmas_reference.json").read_text())


def schedule_of(case: dict) -> ExpTimeShiftSchedule | TimeShiftSchedule:
    params = case["params"]
    if case["kind"] == "ModelSamplingFlux":
        return ExpTimeShiftSchedule(shift=params["shift"])
    return TimeShiftSchedule(shift=params["shift"], multiplier=params["multiplier"])


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_tables_timesteps_and_percentages_match_comfyui(name: str) -> None:
    case = REFERENCE["cases"][name]
    schedule = schedule_of(case)
    assert schedule.sigma_min == case["sigma_min"] and schedule.sigma_max == case["sigma_max"]
    for percent, sigma in case["percent_to_sigma"].items():
        assert schedule.percent_to_sigma(float(percent)) == pytest.approx(sigma, rel=1e-6, abs=1e-9)
    for sigma, timestep in case["timestep"].items():
        assert schedule.timestep(torch.tensor(float(sigma))) == pytest.approx(timestep, rel=1e-6)


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_every_scheduler_matches_comfyui_on_flow_tables(name: str) -> None:
    case = REFERENCE["cases"][name]
    schedule = schedule_of(case)
    assert sorted(case["schedulers"]) == sorted(SCHEDULER_NAMES)
    for scheduler, expected in case["schedulers"].items():
        ours = calculate_sigmas(schedule, scheduler, REFERENCE["steps"]).tolist()
        assert ours == pytest.approx(expected, rel=2e-6, abs=1e-7), scheduler


def test_flux_shift_is_linear_in_the_patch_count() -> None:
    # ModelSamplingFlux: base_shift at 256 patches (256x256 pixels), max_shift at 4096 (1024x1024).
    assert flux_shift(1.15, 0.5, 1024, 1024) == pytest.approx(1.15)
    assert flux_shift(1.15, 0.5, 256, 256) == pytest.approx(0.5)
    assert flux_shift(1.15, 0.5, 64, 64) == pytest.approx(0.5 - 240 * 0.65 / 3840)


def test_const_prediction_noise_scaling_and_inverse() -> None:
    sampling = FlowModelSampling(ExpTimeShiftSchedule())
    noise, latent = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    start = sampling.noise_scaling(0.75, noise, latent, max_denoise=True)
    assert torch.allclose(start, 0.75 * noise + 0.25 * latent)
    assert torch.equal(sampling.inverse_noise_scaling(0.0, start), start)
    assert torch.allclose(sampling.inverse_noise_scaling(0.5, start), start / 0.5)

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def network(x, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        seen.append((x, t))
        return (torch.full_like(x, 2.0),)

    denoiser = UNetDenoiser(network, sampling.schedule, "const", torch.float32, "cpu")
    x = torch.randn(1, 16, 4, 4)
    out = denoiser(x, 0.6, torch.zeros(1, 3, 8), None)
    # The network sees x unscaled at timestep = sigma (Flux); denoised = x - v * sigma.
    assert torch.equal(seen[0][0], x) and seen[0][1].tolist() == [pytest.approx(0.6)]
    assert torch.allclose(out, x - 2.0 * 0.6)
    sd3 = UNetDenoiser(network, TimeShiftSchedule(shift=3.0, multiplier=1000.0), "const", torch.float32, "cpu")
    sd3(x, 0.5, torch.zeros(1, 3, 8), None)
    assert seen[1][1].tolist() == [pytest.approx(500.0)]


# ComfyUI 0.3.64's sample_euler_ancestral (its RF branch, taken for a CONST model) and sample_lcm on
# a ModelSamplingFlux model, run on this fake denoiser, sigmas and start: (sum, sum of |x|, first
# four values) of what they returned. comfyd's flow branches returned the same tensors bit for bit.
COMFYUI_FLOW_SAMPLERS = {
    ("euler_ancestral", 1.0): (9.338727249880321, 108.68788318231236, [0.586189, 0.159508, -0.765153, -0.587369]),
    ("euler_ancestral", 0.5): (11.220462896162644, 120.26111100590788, [0.360384, 0.074153, -0.886262, -0.845648]),
    ("lcm", None): (5.382724066381343, 84.24486475565936, [0.586322, 0.132867, -0.457468, -0.085354]),
}


@pytest.mark.parametrize("name,eta", sorted(COMFYUI_FLOW_SAMPLERS, key=str))
def test_flow_forms_of_ancestral_samplers_match_comfyui(name: str, eta: float | None) -> None:
    from comfyd.sampling.samplers import get_sampler
    from comfyd.sampling.samplers.base import SamplerRun

    sigmas = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.0])
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def fake(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return x * 0.8 + 0.1 * torch.sin(3 * x) * sigma

    options = {} if eta is None else {"eta": eta}
    out = get_sampler(name)(fake, start.clone(), sigmas, SamplerRun(seed=5, flow=True), **options).double()
    total, magnitude, first = COMFYUI_FLOW_SAMPLERS[(name, eta)]
    assert out.sum().item() == pytest.approx(total, rel=1e-6)
    assert out.abs().sum().item() == pytest.approx(magnitude, rel=1e-6)
    assert out.flatten()[:4].tolist() == pytest.approx(first, abs=2e-6)
    discrete = get_sampler(name)(fake, start.clone(), sigmas, SamplerRun(seed=5), **options)
    assert not torch.allclose(discrete.double(), out)  # the flow branch is not the discrete one
