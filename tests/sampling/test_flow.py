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
