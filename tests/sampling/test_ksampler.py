"""common_ksampler: noise, scaling, step windows, masks, progress and interrupts (fake UNet)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import pytest
import torch

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.models.handles import LoraPatch
from comfyd.sampling.ksampler import common_ksampler, prepare_denoise_mask
from comfyd.sampling.noise import initial_noise
from comfyd.sampling.sigmas import discrete_schedule, ksampler_sigmas

pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

SCHEDULE = discrete_schedule()
SHAPE = (2, 4, 8, 8)
SEED = 77


def c_in(sigma: float) -> float:
    return math.sqrt(float(sigma) ** 2 + 1)


def run(fake_model, cond, latent, **kwargs):
    model = fake_model()
    args = {"seed": SEED, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"} | kwargs
    out = common_ksampler(model, positive=cond(1.0), negative=cond(-1.0), latent=latent, **args)
    return out, model.unet


def test_txt2img_starts_from_noise_scaled_to_the_full_variance(fake_model, cond):
    latent = {"samples": torch.zeros(SHAPE)}
    out, unet = run(fake_model, cond, latent)
    noise = initial_noise(latent["samples"], SEED)
    # x = noise * sqrt(1 + sigma_max^2), so the first UNet input x / sqrt(1 + sigma^2) is the noise.
    first = unet.calls[0].sample
    torch.testing.assert_close(first[2:], noise, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(first[:2], noise, rtol=1e-6, atol=1e-6)
    assert [int(c.timestep[0]) for c in unet.calls] == [999, 666, 333, 0]
    assert out["samples"].shape == SHAPE and out["samples"].dtype == torch.float32
    assert not out["samples"].is_inference()  # usable by any downstream node
    assert out is not latent and "samples" in latent and latent["samples"].eq(0).all()


def test_img2img_scales_the_latent_in_and_out(fake_model, cond):
    source = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    latent = {"samples": source}
    out, unet = run(fake_model, cond, latent, denoise=0.5)
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "euler", 4, denoise=0.5)
    assert len(unet.calls) == 4
    noise = initial_noise(source, SEED)
    start = source * 0.18215 + noise * float(sigmas[0])  # not max denoise: noise * sigma0
    torch.testing.assert_close(unet.calls[0].sample[2:], start / c_in(sigmas[0]), rtol=1e-5, atol=1e-6)
    assert [int(c.timestep[0]) for c in unet.calls] == SCHEDULE.timesteps(sigmas[:-1]).tolist()


def test_output_is_divided_by_the_latent_scale(fake_model, cond):
    # One euler step to sigma 0 returns the denoised estimate, in VAE scale.
    model = fake_model()
    latent = {"samples": torch.zeros(SHAPE)}
    out = common_ksampler(model, SEED, 1, 1.0, "euler", "normal", cond(1.0), cond(-1.0), latent)
    call = model.unet.calls[0]
    sigma = float(SCHEDULE.sigmas[-1])
    x = call.sample * c_in(sigma)
    eps = 0.1 * call.sample + 1.0 + 0.001 * 999
    torch.testing.assert_close(out["samples"], (x - eps * sigma) / 0.18215, rtol=1e-5, atol=1e-4)


def test_batch_index_selects_each_samples_noise(fake_model, cond):
    latent = {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [2]}
    out, unet = run(fake_model, cond, latent)
    full = initial_noise(torch.zeros(3, 4, 8, 8), SEED)
    torch.testing.assert_close(unet.calls[0].sample[1:], full[2:3], rtol=1e-6, atol=1e-6)
    assert out["batch_index"] == [2]


def test_disable_noise_starts_from_the_latent(fake_model, cond):
    source = torch.randn(SHAPE)
    out, unet = run(fake_model, cond, {"samples": source}, disable_noise=True, start_step=2, last_step=4)
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "euler", 4)
    torch.testing.assert_close(
        unet.calls[0].sample[2:], source * 0.18215 / c_in(sigmas[2]), rtol=1e-5, atol=1e-6
    )
    assert len(unet.calls) == 2


@pytest.mark.parametrize(
    "start,last,full,expected_sigma_indices,ends_at_zero",
    [
        (0, 10000, True, [0, 1, 2, 3], True),
        (1, 3, True, [1, 2], True),  # last sigma forced to 0
        (1, 3, False, [1, 2], False),  # leftover noise kept
        (0, 2, False, [0, 1], False),
    ],
)
def test_advanced_step_window(fake_model, cond, start, last, full, expected_sigma_indices, ends_at_zero):
    seen = []
    out, unet = run(
        fake_model, cond, {"samples": torch.zeros(SHAPE)}, start_step=start, last_step=last,
        force_full_denoise=full, callback=lambda i, total, x0: seen.append((i, total)),
    )  # fmt: skip
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "euler", 4)
    expected = SCHEDULE.timesteps(sigmas[expected_sigma_indices]).tolist()
    assert [int(c.timestep[0]) for c in unet.calls] == expected
    assert seen == [(i, len(expected)) for i in range(len(expected))]


def test_window_past_the_end_returns_the_input(fake_model, cond):
    source = torch.randn(SHAPE)
    latent = {"samples": source, "batch_index": [0, 1]}
    out, unet = run(fake_model, cond, latent, start_step=4, last_step=10000)
    assert unet.calls == [] and out["samples"] is source and out["batch_index"] == [0, 1]
    out, unet = run(fake_model, cond, latent, denoise=0.0)
    assert unet.calls == [] and out["samples"] is source


def test_noise_mask_keeps_the_unmasked_region(fake_model, cond):
    source = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 32:, :] = 1.0  # repaint the bottom half only
    out, unet = run(
        fake_model, cond, {"samples": source, "noise_mask": mask}, denoise=0.6, sampler_name="dpmpp_2m"
    )
    samples = out["samples"]
    torch.testing.assert_close(samples[..., :4, :], source[..., :4, :], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(samples[..., 4:, :], source[..., 4:, :])
    # Before every call the kept region is the original re-noised to the current sigma.
    sigmas = ksampler_sigmas(SCHEDULE, "normal", "dpmpp_2m", 4, denoise=0.6)
    noise = initial_noise(source, SEED)
    for call, sigma in zip(unet.calls, sigmas, strict=False):
        kept = (noise * float(sigma) + source * 0.18215) / c_in(sigma)
        torch.testing.assert_close(call.sample[2:, :, :4], kept[:, :, :4], rtol=1e-5, atol=1e-5)


def test_ddim_renoises_the_kept_region_with_the_next_seed(fake_model, cond):
    source = torch.randn(SHAPE)
    mask = torch.ones(1, 64, 64)
    mask[:, :32] = 0.0
    out, unet = run(
        fake_model, cond, {"samples": source, "noise_mask": mask}, denoise=0.5, sampler_name="ddim"
    )
    sigma = float(ksampler_sigmas(SCHEDULE, "normal", "ddim", 4, denoise=0.5)[0])
    other = torch.randn(SHAPE, generator=torch.Generator().manual_seed(SEED + 1))
    kept = (other * sigma + source * 0.18215) / c_in(sigma)
    torch.testing.assert_close(unet.calls[0].sample[2:, :, :4], kept[:, :, :4], rtol=1e-5, atol=1e-5)


def test_denoise_mask_is_resized_and_broadcast():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1.0
    resized = prepare_denoise_mask(mask, (3, 4, 4, 4))
    assert resized.shape == (3, 4, 4, 4)
    assert resized[..., :2].eq(0).all() and resized[..., 2:].eq(1).all()
    assert prepare_denoise_mask(torch.ones(8, 8), (1, 4, 2, 2)).shape == (1, 4, 2, 2)


@pytest.mark.parametrize("sampler", ["euler", "heun", "uni_pc", "dpmpp_2m_sde", "lcm", "dpm_2_ancestral"])
def test_progress_callback_per_step(fake_model, cond, sampler):
    seen = []
    out, _ = run(fake_model, cond, {"samples": torch.zeros(SHAPE)}, sampler_name=sampler, steps=5,
                 callback=lambda i, total, x0: seen.append((i, total, tuple(x0.shape))))  # fmt: skip
    assert seen == [(i, 5, SHAPE) for i in range(5)]
    assert torch.isfinite(out["samples"]).all()


def test_interrupt_stops_between_steps(fake_model, cond):
    interrupt = threading.Event()

    def callback(i, total, x0):
        if i == 1:
            interrupt.set()

    model = fake_model()
    with pytest.raises(ExecutionInterrupted):
        common_ksampler(model, SEED, 10, 5.0, "euler", "normal", cond(1.0), cond(-1.0),
                        {"samples": torch.zeros(SHAPE)}, callback=callback, interrupt=interrupt)  # fmt: skip
    assert len(model.unet.calls) == 2
    interrupt.set()
    with pytest.raises(ExecutionInterrupted):
        common_ksampler(model, SEED, 10, 5.0, "euler", "normal", cond(1.0), cond(-1.0),
                        {"samples": torch.zeros(SHAPE)}, interrupt=interrupt)  # fmt: skip
    assert len(model.unet.calls) == 2


def test_bad_arguments_are_clear_errors(fake_model, cond):
    latent = {"samples": torch.zeros(SHAPE)}
    with pytest.raises(ValueError, match="unknown sampler 'euler_turbo'"):
        run(fake_model, cond, latent, sampler_name="euler_turbo")
    with pytest.raises(ValueError, match="unknown scheduler 'fast'"):
        run(fake_model, cond, latent, scheduler="fast")
    with pytest.raises(ValueError, match="LATENT"):
        run(fake_model, cond, {"latent": 1})
    with pytest.raises(ValueError, match="batch_index has 1 entries for a batch of 2"):
        run(fake_model, cond, {"samples": torch.zeros(SHAPE), "batch_index": [0]})
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        run(fake_model, cond, {"samples": torch.zeros(4, 8, 8)})


def test_same_seed_same_result(fake_model, cond):
    a, _ = run(fake_model, cond, {"samples": torch.zeros(SHAPE)}, sampler_name="euler_ancestral")
    b, _ = run(fake_model, cond, {"samples": torch.zeros(SHAPE)}, sampler_name="euler_ancestral")
    c, _ = run(
        fake_model, cond, {"samples": torch.zeros(SHAPE)}, sampler_name="euler_ancestral", seed=SEED + 1
    )
    assert torch.equal(a["samples"], b["samples"])
    assert not torch.allclose(a["samples"], c["samples"])


class _RecordingPatcher:
    def __init__(self) -> None:
        self.applied = False
        self.events: list[str] = []

    def apply(self, module, patches) -> None:
        self.applied = True
        self.events.append("apply")

    def restore(self, module) -> None:
        self.applied = False
        self.events.append("restore")


def test_lora_patches_are_applied_once_around_the_whole_run(fake_model, cond, make_fake_unet):
    patcher = _RecordingPatcher()
    seen_applied = []

    class PatchAwareUNet(make_fake_unet):
        def __call__(self, *args, **kwargs):
            seen_applied.append(patcher.applied)
            return super().__call__(*args, **kwargs)

    model = fake_model(PatchAwareUNet())
    model = replace(model, patcher=patcher).with_loras(LoraPatch("lora.safetensors", 0.8))
    common_ksampler(
        model, SEED, 3, 5.0, "heun", "normal", cond(1.0), cond(-1.0), {"samples": torch.zeros(SHAPE)}
    )
    assert seen_applied == [True] * 5  # heun: 2 calls per step, 1 on the last
    assert patcher.events == ["apply", "restore"]
