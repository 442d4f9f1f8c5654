"""The sampling side of the model patches: zero-terminal-SNR and LCM-distilled schedules, the
prediction types, and the guidance combination (RescaleCFG, post-CFG order)."""

from __future__ import annotations

import math

import pytest
import torch

from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.guidance import BoundGuidance, CfgArgs, Guidance, GuidanceEnv, RescaleCfg
from comfyd.sampling.model_sampling import DiscreteModelSampling
from comfyd.sampling.sigmas import discrete_schedule, distilled_schedule


def test_zero_terminal_snr_keeps_the_first_sigma_and_ends_at_comfyuis_floor() -> None:
    plain, zsnr = discrete_schedule(), discrete_schedule(zsnr=True)
    assert zsnr.sigma_min == pytest.approx(plain.sigma_min, rel=1e-6)
    last_alpha_bar = 4.8973451890853435e-08
    assert zsnr.sigma_max == pytest.approx(math.sqrt((1 - last_alpha_bar) / last_alpha_bar), rel=1e-6)
    assert bool((zsnr.sigmas[1:] > zsnr.sigmas[:-1]).all())


def test_the_lcm_table_is_every_twentieth_sigma_and_maps_to_full_timesteps() -> None:
    full = discrete_schedule()
    lcm = DiscreteModelSampling("lcm").schedule
    assert torch.equal(lcm.sigmas, distilled_schedule(full).sigmas)
    assert lcm.num_timesteps == 50 and lcm.skip_steps == 20
    assert torch.equal(lcm.sigmas, full.sigmas[19::20])
    assert lcm.timesteps(lcm.sigmas).tolist() == list(range(19, 1000, 20))
    assert lcm.timestep(lcm.sigmas[-1]) == 999
    assert float(lcm.sigma(999)) == pytest.approx(lcm.sigma_max, rel=1e-6)
    assert float(lcm.sigma(19)) == pytest.approx(lcm.sigma_min, rel=1e-6)


class _Net:
    """A stand-in network that returns a fixed output whatever it is given."""

    def __init__(self, output: torch.Tensor) -> None:
        self.output = output
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x, timestep, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        self.inputs.append(x)
        return (self.output,)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0", "img_to_img", "lcm"])
def test_each_prediction_type_turns_the_output_into_a_denoised_latent(prediction: str) -> None:
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    out = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    net = _Net(out)
    schedule = DiscreteModelSampling(prediction).schedule
    sigma = float(schedule.sigmas[30 if prediction == "lcm" else 600])
    denoised = UNetDenoiser(net, schedule, prediction, torch.float32, "cpu")(x, sigma, torch.zeros(1, 1, 1), None)
    scaled_input = x / math.sqrt(sigma**2 + 1)
    if prediction == "img_to_img":
        assert torch.equal(net.inputs[0], x)
    else:
        assert torch.allclose(net.inputs[0], scaled_input)
    if prediction in ("x0", "img_to_img"):
        assert torch.equal(denoised, out)
    elif prediction == "eps":
        assert torch.allclose(denoised, x - out * sigma)
    elif prediction == "v":
        assert torch.allclose(denoised, x / (sigma**2 + 1) - out * sigma / math.sqrt(sigma**2 + 1))
    else:  # lcm: boundary conditions at timestep 30 * 20 + 19
        t = (30 * 20 + 19) * 10.0
        c_skip, c_out = 0.25 / (t**2 + 0.25), t / math.sqrt(t**2 + 0.25)
        assert torch.allclose(denoised, c_out * (x - out * sigma) + c_skip * x, atol=1e-6)


def _args(scale: float) -> CfgArgs:
    g = torch.Generator().manual_seed(3)
    x, cond, uncond = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    return CfgArgs(x, torch.tensor(2.5), cond, uncond, scale)


def test_rescale_cfg_at_multiplier_zero_is_plain_cfg() -> None:
    args = _args(7.0)
    combined = RescaleCfg(0.0).bind(None)(args)  # type: ignore[arg-type]
    plain = args.uncond_denoised + (args.cond_denoised - args.uncond_denoised) * 7.0
    assert torch.allclose(combined, plain, atol=1e-4)
    # At 1 the result's v-space std equals the positive prediction's.
    assert not torch.allclose(RescaleCfg(1.0).bind(None)(args), plain, atol=1e-2)  # type: ignore[arg-type]


def test_post_cfg_functions_run_in_order_after_the_cfg_function() -> None:
    calls: list[str] = []

    class Post:
        def __init__(self, name: str, add: float) -> None:
            self.name, self.add = name, add

        def bind(self, env: GuidanceEnv):
            def post(denoised: torch.Tensor, args: CfgArgs) -> torch.Tensor:
                calls.append(self.name)
                return denoised * 2 + self.add

            return post

    guidance = Guidance().with_post_cfg(Post("a", 1.0)).with_post_cfg(Post("b", 0.0), disable_cfg1_optimization=True)
    assert guidance.disable_cfg1_optimization and guidance.active
    bound = guidance.bind(None)  # type: ignore[arg-type]
    x = torch.zeros(1, 1, 1, 1)
    result = bound.combine(x, 1.0, torch.ones_like(x), torch.zeros_like(x), 3.0)
    assert calls == ["a", "b"] and float(result) == (3.0 * 2 + 1.0) * 2
    # The negative prompt not run (cfg 1 optimisation) predicts zeros, as ComfyUI's.
    assert float(BoundGuidance().combine(x, 1.0, torch.ones_like(x), None, 1.0)) == 1.0
