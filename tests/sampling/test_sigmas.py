"""Sigma table, timestep mapping and schedulers against ComfyUI's recorded values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyd.sampling.samplers import SAMPLER_NAMES
from comfyd.sampling.sigmas import (
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS,
    SCHEDULER_NAMES,
    calculate_sigmas,
    discrete_schedule,
    ksampler_sigmas,
)

REFERENCE = json.loads((Path(__file__).parent / "data" / "sigmas_reference.json").read_text())
SCHEDULE = discrete_schedule()
# ComfyUI's float32 exp differs by an ulp between CPUs; anything beyond that is a real difference.
RTOL = 3e-7


def _reference_cases() -> list[str]:
    return [k for k, v in REFERENCE.items() if isinstance(v, dict)]


def _sigmas_for(case: str) -> torch.Tensor:
    if case == "normal_4_denoise0.6":
        return ksampler_sigmas(SCHEDULE, "normal", "euler", 4, denoise=0.6)
    if case == "normal_4_uni_pc(discard_penultimate)":
        return ksampler_sigmas(SCHEDULE, "normal", "uni_pc", 4)
    scheduler, steps = case.rsplit("_", 1)
    return calculate_sigmas(SCHEDULE, scheduler, int(steps))


def test_table_ends_match_comfyui():
    assert float(SCHEDULE.sigmas[0]) == pytest.approx(REFERENCE["sigma_min"], rel=1e-7)
    assert float(SCHEDULE.sigmas[-1]) == pytest.approx(REFERENCE["sigma_max"], rel=1e-7)
    assert SCHEDULE.sigmas.dtype == torch.float32 and SCHEDULE.sigmas.shape == (1000,)
    assert bool((SCHEDULE.sigmas[1:] > SCHEDULE.sigmas[:-1]).all())


@pytest.mark.parametrize("case", _reference_cases())
def test_reference_sigmas(case):
    expected = torch.tensor(REFERENCE[case]["sigmas"], dtype=torch.float32)
    sigmas = _sigmas_for(case)
    assert sigmas.dtype == torch.float32
    assert sigmas.shape == expected.shape
    torch.testing.assert_close(sigmas, expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize("case", [c for c in _reference_cases() if "unet_timesteps" in REFERENCE[c]])
def test_reference_unet_timesteps(case):
    sigmas = _sigmas_for(case)
    positive = sigmas[sigmas > 0]
    assert SCHEDULE.timesteps(positive).tolist() == REFERENCE[case]["unet_timesteps"]
    assert [SCHEDULE.timestep(float(s)) for s in positive] == REFERENCE[case]["unet_timesteps"]


def test_timestep_is_nearest_index_not_interpolated():
    # Halfway (in log space) between table entries 500 and 501, nudged either side.
    log_mid = (SCHEDULE.log_sigmas[500] + SCHEDULE.log_sigmas[501]) / 2
    assert SCHEDULE.timestep(float((log_mid - 1e-4).exp())) == 500
    assert SCHEDULE.timestep(float((log_mid + 1e-4).exp())) == 501
    assert SCHEDULE.timestep(1000.0) == 999
    assert SCHEDULE.timestep(1e-4) == 0


def test_sigma_interpolates_log_sigma():
    assert float(SCHEDULE.sigma(250.0)) == pytest.approx(float(SCHEDULE.sigmas[250]), rel=3e-7)
    expected = ((SCHEDULE.log_sigmas[250] + SCHEDULE.log_sigmas[251]) / 2).exp()
    torch.testing.assert_close(SCHEDULE.sigma(250.5), expected, rtol=1e-6, atol=0)
    assert float(SCHEDULE.sigma(-5.0)) == pytest.approx(float(SCHEDULE.sigmas[0]), rel=3e-7)  # clamped


def test_percent_to_sigma():
    assert SCHEDULE.percent_to_sigma(0.0) == 999999999.9
    assert SCHEDULE.percent_to_sigma(1.0) == 0.0
    assert SCHEDULE.percent_to_sigma(0.5) == pytest.approx(float(SCHEDULE.sigma(499.5)), rel=1e-7)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
@pytest.mark.parametrize("steps", [1, 2, 7, 25])
def test_every_scheduler_is_decreasing_and_ends_at_zero(scheduler, steps):
    sigmas = calculate_sigmas(SCHEDULE, scheduler, steps)
    assert sigmas.dtype == torch.float32
    assert float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas
    # beta may merge duplicate timesteps and ddim_uniform may overshoot; the rest are exact.
    if scheduler not in ("beta", "ddim_uniform"):
        assert len(sigmas) == steps + 1


def test_denoise_keeps_the_tail_of_a_longer_schedule():
    full = calculate_sigmas(SCHEDULE, "karras", int(10 / 0.35))
    trimmed = ksampler_sigmas(SCHEDULE, "karras", "euler", 10, denoise=0.35)
    assert len(trimmed) == 11
    assert torch.equal(trimmed, full[-11:])
    assert torch.equal(
        ksampler_sigmas(SCHEDULE, "karras", "euler", 10, denoise=1.0),
        calculate_sigmas(SCHEDULE, "karras", 10),
    )
    assert len(ksampler_sigmas(SCHEDULE, "karras", "euler", 10, denoise=0.0)) == 0


@pytest.mark.parametrize("sampler", sorted(DISCARD_PENULTIMATE_SIGMA_SAMPLERS))
def test_penultimate_sigma_drop(sampler):
    longer = calculate_sigmas(SCHEDULE, "normal", 9)
    sigmas = ksampler_sigmas(SCHEDULE, "normal", sampler, 8)
    assert len(sigmas) == 9
    assert torch.equal(sigmas, torch.cat([longer[:-2], longer[-1:]]))
    # denoise < 1 drops from the longer schedule before trimming, like ComfyUI.
    longer = calculate_sigmas(SCHEDULE, "normal", 17)
    assert torch.equal(
        ksampler_sigmas(SCHEDULE, "normal", sampler, 8, denoise=0.5),
        torch.cat([longer[:-2], longer[-1:]])[-9:],
    )


def test_other_samplers_keep_their_schedule():
    for sampler in SAMPLER_NAMES:
        if sampler not in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
            assert torch.equal(
                ksampler_sigmas(SCHEDULE, "simple", sampler, 5), calculate_sigmas(SCHEDULE, "simple", 5)
            )


def test_names_follow_comfyui_order():
    assert SCHEDULER_NAMES == [
        "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic", "kl_optimal",
    ]  # fmt: skip
    assert SAMPLER_NAMES[:4] == ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp"]
    assert len(SAMPLER_NAMES) == 42  # KSAMPLER_NAMES (39) + ddim, uni_pc, uni_pc_bh2
    assert SAMPLER_NAMES[-3:] == ["ddim", "uni_pc", "uni_pc_bh2"]


def test_bad_scheduler_and_steps_are_clear_errors():
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        calculate_sigmas(SCHEDULE, "nope", 4)
    with pytest.raises(ValueError, match="steps must be at least 1"):
        calculate_sigmas(SCHEDULE, "normal", 0)
