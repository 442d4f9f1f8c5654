"""Guidance and conditioning composition, observed through a recording fake UNet."""

from __future__ import annotations

import math

import pytest
import torch

from comfyd.sampling.cfg import CFGGuider, prepare_conds
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.sigmas import discrete_schedule

SCHEDULE = discrete_schedule()
SHAPE = (2, 4, 16, 16)
SIGMA = float(SCHEDULE.sigmas[600])


@pytest.fixture
def guider(make_fake_unet):
    def build(positive, negative, cfg=7.5, prediction="eps", sdxl=False, shape=SHAPE):
        unet = make_fake_unet()
        entries = prepare_conds(positive, negative, shape, SCHEDULE, "cpu", torch.float32, sdxl=sdxl)
        return CFGGuider(UNetDenoiser(unet, SCHEDULE, prediction, torch.float32, "cpu"), entries, cfg), unet

    return build


def latent(shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def eps_of(call_sample, context_value, timestep):
    return 0.1 * call_sample + context_value + 0.001 * timestep


def test_uncond_and_cond_run_as_one_batch_uncond_first(guider, cond):
    g, unet = guider(cond(1.0), cond(-1.0), cfg=7.5)
    x = latent()
    out = g(x, SIGMA)
    assert len(unet.calls) == 1
    call = unet.calls[0]
    assert call.sample.shape[0] == 4
    assert call.context[:2].eq(-1.0).all() and call.context[2:].eq(1.0).all()  # [uncond, cond]
    # Model input: x / sqrt(sigma^2 + 1) for both halves; timestep: the nearest table index.
    c_in = math.sqrt(SIGMA**2 + 1)
    torch.testing.assert_close(call.sample[:2], x / c_in)
    torch.testing.assert_close(call.sample[2:], x / c_in)
    assert call.timestep.tolist() == [600.0] * 4
    # denoised = x - eps * sigma per prompt, then uncond + (cond - uncond) * cfg.
    cond_d = x - eps_of(x / c_in, 1.0, 600) * SIGMA
    uncond_d = x - eps_of(x / c_in, -1.0, 600) * SIGMA
    torch.testing.assert_close(out, uncond_d + (cond_d - uncond_d) * 7.5, rtol=1e-5, atol=1e-4)


def test_cfg_one_skips_the_negative_prompt(guider, cond):
    g, unet = guider(cond(1.0), cond(-1.0), cfg=1.0)
    x = latent()
    out = g(x, SIGMA)
    assert len(unet.calls) == 1
    assert unet.calls[0].sample.shape[0] == 2 and unet.calls[0].context.eq(1.0).all()
    c_in = math.sqrt(SIGMA**2 + 1)
    torch.testing.assert_close(out, x - eps_of(x / c_in, 1.0, 600) * SIGMA, rtol=1e-5, atol=1e-4)


def test_v_prediction_turns_v_into_denoised(guider, cond):
    g, unet = guider(cond(1.0), cond(-1.0), cfg=1.0, prediction="v")
    x = latent()
    out = g(x, SIGMA)
    c_in = math.sqrt(SIGMA**2 + 1)
    v = eps_of(x / c_in, 1.0, 600)
    torch.testing.assert_close(out, x / (SIGMA**2 + 1) - v * SIGMA / c_in, rtol=1e-5, atol=1e-5)


def test_contexts_of_different_lengths_are_repeated_to_their_lcm(guider, cond):
    positive = [[torch.arange(154 * 8, dtype=torch.float32).reshape(1, 154, 8), {}]]
    g, unet = guider(positive, cond(-1.0, tokens=77))
    g(latent(), SIGMA)
    assert len(unet.calls) == 1
    context = unet.calls[0].context
    assert context.shape == (4, 154, 8)
    assert torch.equal(context[0, :77], context[0, 77:])  # uncond repeated twice
    assert torch.equal(context[2], positive[0][0][0])


def test_contexts_too_different_in_length_run_separately(guider, cond):
    g, unet = guider(cond(1.0, tokens=462), cond(-1.0, tokens=77))  # lcm / min = 6 > 4
    g(latent(), SIGMA)
    assert [c.context.shape[1] for c in unet.calls] == [462, 77]


def test_conditioning_batch_is_repeated_to_the_latent_batch(guider, cond):
    g, unet = guider(cond(1.0, batch=1), cond(-1.0, batch=3))
    g(latent(), SIGMA)
    assert unet.calls[0].context.shape[0] == 4  # each prompt cut or tiled to the 2 latents


def test_two_full_conds_of_one_prompt_are_averaged(guider, cond):
    positive = cond(1.0) + cond(3.0)
    g, unet = guider(positive, cond(-1.0), cfg=1.0)
    x = latent()
    out = g(x, SIGMA)
    assert len(unet.calls) == 1
    # ComfyUI's batch order is the reverse of the list order.
    assert unet.calls[0].context[:2].eq(3.0).all() and unet.calls[0].context[2:].eq(1.0).all()
    c_in = math.sqrt(SIGMA**2 + 1)
    d1 = x - eps_of(x / c_in, 1.0, 600) * SIGMA
    d3 = x - eps_of(x / c_in, 3.0, 600) * SIGMA
    torch.testing.assert_close(out, (d1 + d3) / 2, rtol=1e-5, atol=1e-4)


def test_timestep_range_switches_a_cond_on_and_off(guider, cond):
    # Active for the second half of sampling only (ConditioningSetTimestepRange 0.5 .. 1.0).
    late = cond(5.0, start_percent=0.5, end_percent=1.0)
    g, unet = guider(cond(1.0) + late, cond(-1.0), cfg=1.0)
    boundary = SCHEDULE.percent_to_sigma(0.5)
    g(latent(), boundary * 1.5)
    g(latent(), boundary * 0.5)
    assert unet.calls[0].context.eq(1.0).all()
    assert unet.calls[1].context.shape[0] == 4 and unet.calls[1].context[:2].eq(5.0).all()


def test_a_prompt_with_no_active_cond_predicts_zero(guider, cond):
    g, unet = guider(cond(1.0, start_percent=0.9), cond(-1.0), cfg=1.0)
    out = g(latent(), float(SCHEDULE.sigmas[-1]))
    assert len(unet.calls) == 0
    assert torch.equal(out, torch.zeros(SHAPE))


def test_area_cond_weights_feather_inner_edges(cond):
    shape = (1, 4, 16, 16)
    area = cond(2.0, area=(8, 8, 0, 0), strength=1.0, set_area_to_bounds=False)
    entries = prepare_conds(area, cond(-1.0), shape, SCHEDULE, "cpu", torch.float32)
    entry = entries[0]
    assert entry.area == (8, 8, 0, 0)
    # 8x8 area at the top-left: rr = min(8, 8 // 4) = 2 cells fade at the right and bottom edges.
    expected = torch.ones(8, 8)
    expected[7, :] *= 0.5
    expected[:, 7] *= 0.5
    torch.testing.assert_close(entry.mult[0, 0], expected)
    assert entry.mult.shape == (1, 4, 8, 8)


def test_area_conds_are_mirrored_into_the_other_prompt_and_composed(guider, cond):
    shape = (1, 4, 16, 16)
    positive = cond(1.0) + cond(2.0, area=(8, 16, 8, 0), strength=2.0)  # bottom half, strength 2
    g, unet = guider(positive, cond(-1.0), cfg=3.0, shape=shape)
    negative_entries = [e for e in g.entries if e.kind == 1]
    # The negative prompt gets the same area, with its own context.
    assert [e.area for e in negative_entries] == [None, (8, 16, 8, 0)]
    assert negative_entries[1].context.eq(-1.0).all()
    x = latent(shape)
    out = g(x, SIGMA)
    # Full-latent entries batch together; the two area entries batch together.
    assert [c.sample.shape for c in unet.calls] == [(2, 4, 16, 16), (2, 4, 8, 16)]
    c_in = math.sqrt(SIGMA**2 + 1)

    def d(value, inputs):
        return inputs - eps_of(inputs / c_in, value, 600) * SIGMA

    mult = torch.ones(1, 4, 8, 16) * 2.0
    mult[:, :, :2] *= torch.tensor([0.5, 1.0])[:, None]  # rr = 2 fade at the area's top edge
    predictions = {}
    for name, full, area_value in (("cond", 1.0, 2.0), ("uncond", -1.0, -1.0)):
        total = d(full, x).clone()
        counts = torch.ones_like(x)
        total[:, :, 8:] += d(area_value, x[:, :, 8:]) * mult
        counts[:, :, 8:] += mult
        predictions[name] = total / counts
    expected = predictions["uncond"] + (predictions["cond"] - predictions["uncond"]) * 3.0
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_percentage_area_and_mask_conds(cond):
    shape = (1, 4, 16, 16)
    percent = cond(1.0, area=("percentage", 0.5, 0.25, 0.5, 0.0), strength=1.0)
    mask = torch.zeros(64, 64)
    mask[:32] = 1.0
    masked = cond(2.0, mask=mask, mask_strength=0.5, strength=2.0, set_area_to_bounds=False)
    entries = prepare_conds(percent + masked, cond(-1.0), shape, SCHEDULE, "cpu", torch.float32)
    assert entries[0].area == (8, 4, 8, 0)
    # Mask resized to the latent, times mask_strength, times strength; no feathering.
    assert entries[1].area is None
    assert entries[1].mult[0, 0, :8].eq(1.0).all() and entries[1].mult[0, 0, 8:].eq(0.0).all()
    bounded = cond(2.0, mask=mask, set_area_to_bounds=True)
    entries = prepare_conds(bounded, cond(-1.0), shape, SCHEDULE, "cpu", torch.float32)
    assert entries[0].area == (8, 16, 0, 0)  # the box around the mask's nonzero cells (min 8)


def test_sdxl_added_conditioning_defaults_to_the_latent_size(guider):
    pooled = torch.randn(1, 1280)
    positive = [[torch.full((1, 77, 8), 1.0), {"pooled_output": pooled}]]
    negative = [[torch.full((1, 77, 8), -1.0), {"pooled_output": pooled * 0, "width": 1024, "height": 768,
                                               "crop_w": 16, "crop_h": 32, "target_width": 512}]]  # fmt: skip
    g, unet = guider(positive, negative, sdxl=True, shape=(2, 4, 12, 10))
    g(latent((2, 4, 12, 10)), SIGMA)
    added = unet.calls[0].added
    assert added["text_embeds"].shape == (4, 1280)
    torch.testing.assert_close(added["text_embeds"][2:], pooled.repeat(2, 1))
    assert added["time_ids"][:2].tolist() == [[768, 1024, 32, 16, 768, 512]] * 2  # uncond first
    assert added["time_ids"][2:].tolist() == [[96, 80, 0, 0, 96, 80]] * 2  # height, width = latent * 8


def test_sdxl_without_pooled_output_is_a_clear_error(cond):
    with pytest.raises(ValueError, match="pooled_output"):
        prepare_conds(cond(1.0), cond(-1.0), SHAPE, SCHEDULE, "cpu", torch.float32, sdxl=True)


def test_bad_conditioning_is_a_clear_error(cond):
    with pytest.raises(ValueError, match="positive conditioning entry 0"):
        prepare_conds([[torch.zeros(77, 8), {}]], cond(-1.0), SHAPE, SCHEDULE, "cpu", torch.float32)
    with pytest.raises(ValueError, match="negative conditioning must be a list"):
        prepare_conds(cond(1.0), "text", SHAPE, SCHEDULE, "cpu", torch.float32)
    with pytest.raises(ValueError, match="outside"):
        prepare_conds(cond(1.0, area=(4, 4, 40, 0)), cond(-1.0), SHAPE, SCHEDULE, "cpu", torch.float32)


def test_batch_plans_are_cached_between_steps(guider, cond):
    g, unet = guider(cond(1.0), cond(-1.0))
    g(latent(), SIGMA)
    g(latent(), SIGMA * 0.5)
    assert len(g._plans) == 1
    assert unet.calls[0].context.data_ptr() == unet.calls[1].context.data_ptr() or torch.equal(
        unet.calls[0].context, unet.calls[1].context
    )
