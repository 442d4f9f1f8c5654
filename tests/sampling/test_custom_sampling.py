"""Custom sampling on a fake UNet: SamplerCustom's path against KSampler's, the guiders' blends,
the noise sources, and the sigma tools. (ComfyUI's own renders of these nodes: tests/fidelity.)"""

from __future__ import annotations

import pytest
import torch

from comfyd.sampling.custom import sample_custom
from comfyd.sampling.custom_sigmas import (
    AYS_NOISE_LEVELS,
    align_your_steps_sigmas,
    basic_scheduler_sigmas,
    flip_sigmas,
    polyexponential_sigmas,
    sd_turbo_sigmas,
    split_sigmas,
    split_sigmas_denoise,
)
from comfyd.sampling.guiders import Guider, NoiseSource, SamplerChoice
from comfyd.sampling.ksampler import common_ksampler
from comfyd.sampling.sigmas import discrete_schedule, exponential_sigmas, ksampler_sigmas

SCHEDULE = discrete_schedule()


def latent(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral", "dpmpp_2m_sde", "euler_cfg_pp"])
def test_sampler_custom_equals_ksampler_with_the_same_sigmas(fake_model, cond, sampler):
    model = fake_model()
    reference = common_ksampler(model, 5, 6, 4.0, sampler, "karras", cond(1.0), cond(-1.0), latent())
    sigmas = ksampler_sigmas(SCHEDULE, "karras", sampler, 6)
    guider = Guider(model, "cfg", (cond(1.0), cond(-1.0)), cfg=4.0)
    out, denoised = sample_custom(guider, SamplerChoice(sampler), sigmas, NoiseSource(5), latent())
    assert torch.equal(out["samples"], reference["samples"])
    # denoised_output: the last step's estimate (into sigma 0 that is where the output lands).
    torch.testing.assert_close(denoised["samples"], out["samples"], rtol=1e-4, atol=1e-3)
    high, _ = sample_custom(guider, SamplerChoice(sampler), sigmas[:4], NoiseSource(5), latent())
    assert not torch.allclose(high["samples"], out["samples"])


def test_basic_guider_runs_only_the_positive_prompt(fake_model, cond):
    model = fake_model()
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "euler", 4)
    basic, _ = sample_custom(Guider(model, "basic", (cond(1.0),)), SamplerChoice("euler"), sigmas, NoiseSource(3), latent())
    calls = model.unet.calls
    assert len(calls) == 4 and all(c.sample.shape[0] == 1 for c in calls)
    cfg_1 = common_ksampler(fake_model(), 3, 4, 1.0, "euler", "normal", cond(1.0), cond(-1.0), latent())
    assert torch.equal(basic["samples"], cfg_1["samples"])


def test_cfg_pp_samplers_run_the_negative_prompt_even_at_cfg_1(fake_model, cond):
    model = fake_model()
    common_ksampler(model, 3, 3, 1.0, "euler_cfg_pp", "normal", cond(1.0), cond(-1.0), latent())
    assert [c.sample.shape[0] for c in model.unet.calls] == [2, 2, 2]


@pytest.mark.parametrize("style", ["regular", "nested"])
def test_dual_cfg_blends_three_predictions(fake_model, cond, style):
    """With the fake UNet eps is affine in the prompt's context value, so the blend shows in it."""
    model = fake_model()
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "euler", 1)
    mode = f"dual_{style}"
    out, _ = sample_custom(
        Guider(model, mode, (cond(3.0), cond(2.0), cond(0.5)), cfg=5.0, cfg2=2.0),
        SamplerChoice("euler"), sigmas, NoiseSource(3), latent(),
    )  # fmt: skip
    # One UNet batch, as ComfyUI stacks it: cond1, cond2, negative (it evaluates the prompts as
    # negative, cond2, cond1 and batches the ones that fit in reverse).
    assert [float(c) for c in model.unet.calls[0].context.mean(dim=(1, 2))] == [3.0, 2.0, 0.5]
    # The equivalent single prompt: regular blends 0.5 + (2 - 0.5) * 2 + (3 - 2) * 5 = 8.5,
    # nested 0.5 + 2 * ((2 + (3 - 2) * 5) - 0.5) = 13.5.
    single, _ = sample_custom(
        Guider(fake_model(), "basic", (cond(8.5 if style == "regular" else 13.5),)),
        SamplerChoice("euler"), sigmas, NoiseSource(3), latent(),
    )  # fmt: skip
    torch.testing.assert_close(out["samples"], single["samples"], rtol=1e-5, atol=1e-5)


def test_dual_cfg_at_scale_1_skips_the_negative_and_middle_prompts(fake_model, cond):
    model = fake_model()
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "euler", 2)
    guider = Guider(model, "dual_regular", (cond(3.0), cond(2.0), cond(0.5)), cfg=1.0, cfg2=1.0)
    sample_custom(guider, SamplerChoice("euler"), sigmas, NoiseSource(3), latent())
    assert [c.sample.shape[0] for c in model.unet.calls] == [1, 1]


def test_disable_noise_is_zeros_with_seed_0(fake_model, cond):
    noise = NoiseSource(0, enabled=False)
    assert torch.count_nonzero(noise.generate(latent())) == 0
    model = fake_model()
    img = {"samples": torch.full((1, 4, 8, 8), 0.3)}
    sigmas = basic_scheduler_sigmas(SCHEDULE, "normal", 4, 0.5)
    out, _ = sample_custom(Guider(model, "cfg", (cond(1.0), cond(-1.0)), cfg=3.0), SamplerChoice("euler_ancestral"),
                           sigmas, noise, img)
    reference = common_ksampler(fake_model(), 0, 4, 3.0, "euler_ancestral", "normal", cond(1.0), cond(-1.0), img,
                                denoise=0.5, disable_noise=True)
    assert torch.equal(out["samples"], reference["samples"])


def test_empty_sigmas_return_the_latent_untouched(fake_model, cond):
    model = fake_model()
    img = {"samples": torch.full((1, 4, 8, 8), 0.3), "batch_index": [0]}
    out, denoised = sample_custom(Guider(model, "cfg", (cond(1.0), cond(-1.0)), cfg=3.0), SamplerChoice("euler"),
                                  torch.zeros(0), NoiseSource(1), img)
    assert out["samples"] is img["samples"] and denoised is out and not model.unet.calls


def test_bad_values_are_clear_errors(fake_model, cond):
    model = fake_model()
    guider = Guider(model, "cfg", (cond(1.0), cond(-1.0)), cfg=3.0)
    with pytest.raises(ValueError, match="SIGMAS"):
        sample_custom(guider, SamplerChoice("euler"), [1.0, 0.0], NoiseSource(1), latent())
    with pytest.raises(ValueError, match="finite"):
        sample_custom(guider, SamplerChoice("euler"), torch.tensor([float("nan"), 0.0]), NoiseSource(1), latent())
    with pytest.raises(ValueError, match="GUIDER"):
        sample_custom("cfg", SamplerChoice("euler"), torch.tensor([1.0, 0.0]), NoiseSource(1), latent())
    with pytest.raises(ValueError, match="unknown sampler"):
        sample_custom(guider, SamplerChoice("nope"), torch.tensor([1.0, 0.0]), NoiseSource(1), latent())
    with pytest.raises(ValueError, match="guider mode"):
        Guider(model, "triple", ())


def test_sampler_options_reach_the_sampler(fake_model, cond):
    sigmas = ksampler_sigmas(SCHEDULE, "karras", "euler_ancestral", 4)
    results = []
    for options in ({}, {"eta": 1.0, "s_noise": 1.0}, {"eta": 0.0}):
        guider = Guider(fake_model(), "cfg", (cond(1.0), cond(-1.0)), cfg=3.0)
        out, _ = sample_custom(guider, SamplerChoice("euler_ancestral", options), sigmas, NoiseSource(2), latent())
        results.append(out["samples"])
    assert torch.equal(results[0], results[1])  # the defaults are ComfyUI's KSampler defaults
    euler, _ = sample_custom(Guider(fake_model(), "cfg", (cond(1.0), cond(-1.0)), cfg=3.0), SamplerChoice("euler"),
                             sigmas, NoiseSource(2), latent())
    assert torch.equal(results[2], euler["samples"])  # eta 0: no ancestral noise at all


# --- sigma tools ---------------------------------------------------------------------------------


def test_split_and_flip():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    high, low = split_sigmas(sigmas, 2)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = split_sigmas_denoise(sigmas, 0.5)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    assert flip_sigmas(sigmas).tolist() == pytest.approx([0.0001, 1.0, 2.0, 5.0, 10.0])
    assert flip_sigmas(torch.zeros(0)).numel() == 0


def test_schedules():
    assert align_your_steps_sigmas("SD1", 10, 1.0).tolist() == pytest.approx(AYS_NOISE_LEVELS["SD1"][:-1] + [0.0])
    seven = align_your_steps_sigmas("SDXL", 7, 1.0)
    assert len(seven) == 8 and float(seven[0]) == pytest.approx(14.6146412293) and float(seven[-1]) == 0
    assert len(align_your_steps_sigmas("SD1", 10, 0.5)) == 6
    torch.testing.assert_close(polyexponential_sigmas(6, 0.03, 14.6, rho=1.0), exponential_sigmas(6, 0.03, 14.6))
    turbo = sd_turbo_sigmas(SCHEDULE, 2, 1.0)
    assert turbo.tolist() == pytest.approx([float(SCHEDULE.sigmas[999]), float(SCHEDULE.sigmas[899]), 0.0])
    assert basic_scheduler_sigmas(SCHEDULE, "normal", 4, 0.0).numel() == 0
