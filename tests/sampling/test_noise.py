"""Initial, ancestral and Brownian noise as ComfyUI draws them."""

from __future__ import annotations

import pytest
import torch

from comfyd.sampling.noise import AncestralNoise, BrownianNoise, initial_noise

# torchsde warns when a query touches the tree's (rounded) end; comfyd filters it at import, but
# pytest resets warning filters per test.
pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

SHAPE = (3, 4, 8, 8)


def test_initial_noise_is_one_cpu_draw_from_the_seed():
    latent = torch.zeros(SHAPE)
    torch.manual_seed(12345)
    expected = torch.randn(SHAPE)
    noise = initial_noise(latent, 12345)
    assert torch.equal(noise, expected)
    assert noise.device.type == "cpu" and noise.dtype == torch.float32


def test_initial_noise_leaves_the_global_generator_alone():
    torch.manual_seed(7)
    before = torch.randn(4)
    torch.manual_seed(7)
    initial_noise(torch.zeros(SHAPE), 999)
    assert torch.equal(torch.randn(4), before)


def test_full_range_seed_is_accepted():
    noise = initial_noise(torch.zeros(1, 4, 2, 2), 0xFFFFFFFFFFFFFFFF)
    assert torch.isfinite(noise).all()


def test_batch_index_picks_the_draw_each_sample_had_in_its_batch():
    latent = torch.zeros(1, 4, 8, 8)
    full_batch = initial_noise(torch.zeros(5, 4, 8, 8), 42)
    # Sample 3 alone (LatentFromBatch batch_index=3) gets the noise it had as the 4th of 5.
    assert torch.equal(initial_noise(latent, 42, [3]), full_batch[3:4])
    # Order and repeats follow batch_index (RepeatLatentBatch of a cut sample).
    picked = initial_noise(torch.zeros(3, 4, 8, 8), 42, [4, 1, 4])
    assert torch.equal(picked, torch.cat([full_batch[4:5], full_batch[1:2], full_batch[4:5]]))


def test_batch_index_errors_are_clear():
    with pytest.raises(ValueError, match="empty"):
        initial_noise(torch.zeros(1, 4, 2, 2), 1, [])
    with pytest.raises(ValueError, match="negative"):
        initial_noise(torch.zeros(1, 4, 2, 2), 1, [-1])


def test_first_ancestral_draw_equals_the_initial_noise():
    x = torch.zeros(SHAPE)
    sampler = AncestralNoise(x, 2024)
    first = sampler(1.0, 0.5)
    assert torch.equal(first, initial_noise(x, 2024))
    second = sampler(0.5, 0.1)
    assert not torch.equal(first, second)
    torch.manual_seed(2024)
    torch.randn(SHAPE)
    assert torch.equal(second, torch.randn(SHAPE))


def _sigmas(*values: float) -> list[torch.Tensor]:
    return [torch.tensor(v, dtype=torch.float32) for v in values]


def test_brownian_noise_is_reproducible_for_a_seed():
    x = torch.zeros(SHAPE)
    lo, hi, mid = _sigmas(0.03, 14.6, 2.0)
    a = BrownianNoise(x, lo, hi, seed=5)(hi, mid)
    b = BrownianNoise(x, lo, hi, seed=5)(hi, mid)
    c = BrownianNoise(x, lo, hi, seed=6)(hi, mid)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.shape == SHAPE and a.dtype == torch.float32


def test_brownian_increments_are_unit_variance_and_additive():
    x = torch.zeros(64, 4, 16, 16)
    lo, hi, s1, s2 = _sigmas(0.03, 14.6, 3.0, 0.5)
    noise = BrownianNoise(x, lo, hi, seed=11)
    whole = noise(s1, s2)
    assert whole.std().item() == pytest.approx(1.0, abs=0.02)
    assert whole.mean().item() == pytest.approx(0.0, abs=0.02)
    # W is one path: the increment over [s2, s1] is the sum of its two halves.
    mid = torch.tensor(1.25)
    first, second = noise(s1, mid), noise(mid, s2)
    rebuilt = first * float((s1 - mid).sqrt()) + second * float((mid - s2).sqrt())
    torch.testing.assert_close(rebuilt, whole * float((s1 - s2).sqrt()), rtol=1e-4, atol=1e-4)


def test_brownian_query_order_does_not_change_the_path():
    x = torch.zeros(SHAPE)
    lo, hi, a, b = _sigmas(0.03, 14.6, 5.0, 1.0)
    forward = BrownianNoise(x, lo, hi, seed=3)
    backward = BrownianNoise(x, lo, hi, seed=3)
    f1, f2 = forward(hi, a), forward(a, b)
    b2, b1 = backward(a, b), backward(hi, a)
    assert torch.equal(f1, b1) and torch.equal(f2, b2)
