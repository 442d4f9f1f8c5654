"""Noise exactly as ComfyUI draws it.

- Initial noise: one CPU generator seeded with the KSampler seed, one draw for the whole batch,
  or one draw per batch index (0..max) when the latent carries `batch_index`.
- Ancestral / LCM noise: a fresh generator on the latent's device, seeded with the same seed,
  one full-size draw per step (so on CPU its first draw equals the initial noise).
- SDE noise: a Brownian tree (torchsde) over [sigma_min, sigma_max] with the seed as entropy,
  normalised to unit variance per interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchsde
from torch import Tensor

_SEED_MODULUS = 2**64  # torch generators take seeds in [0, 2**64)

# torchsde rounds the tree's ends to its tolerance, so a query at exactly sigma_max "exceeds" the
# end by rounding and is clamped with a warning on every SDE run (in ComfyUI too). Harmless.
warnings.filterwarnings("ignore", message=r"Should have (ta|tb)", category=UserWarning, module=r"torchsde\.")


def initial_noise(latent: Tensor, seed: int, batch_index: Sequence[int] | None = None) -> Tensor:
    """Gaussian noise shaped like `latent`, drawn on the CPU (ComfyUI's `prepare_noise`).

    With `batch_index` (from LatentFromBatch / RepeatLatentBatch) the noise of sample i is the
    i-th single-sample draw of the sequence, so a sample cut from a batch gets the noise it had
    in the batch. Indices may repeat.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if batch_index is None:
        return torch.randn(
            latent.shape, dtype=latent.dtype, layout=latent.layout, generator=generator, device="cpu"
        )
    indices = [int(i) for i in batch_index]
    if not indices:
        raise ValueError("latent batch_index is empty")
    if min(indices) < 0:
        raise ValueError(f"latent batch_index has a negative entry: {indices}")
    wanted = set(indices)
    sample_shape = [1, *latent.shape[1:]]
    draws: dict[int, Tensor] = {}
    for i in range(max(indices) + 1):
        noise = torch.randn(
            sample_shape, dtype=latent.dtype, layout=latent.layout, generator=generator, device="cpu"
        )
        if i in wanted:
            draws[i] = noise
    return torch.cat([draws[i] for i in indices], dim=0)


class AncestralNoise:
    """Per-step noise of the ancestral samplers and LCM (ComfyUI's `default_noise_sampler`)."""

    def __init__(self, like: Tensor, seed: int) -> None:
        self._shape = like.shape
        self._dtype = like.dtype
        self._device = like.device
        self._generator = torch.Generator(device=like.device).manual_seed(seed % _SEED_MODULUS)

    def __call__(self, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
        return torch.randn(self._shape, dtype=self._dtype, device=self._device, generator=self._generator)


class BrownianNoise:
    """Unit-variance Brownian increments W(sigma_next) - W(sigma) / sqrt(|sigma_next - sigma|).

    `on_cpu=True` (the plain SDE samplers) builds the tree on the CPU whatever the latent's
    device; the `_gpu` samplers build it on the latent's device (different numbers on a GPU).
    Sigmas are float32 tensors, as ComfyUI passes them: the tree's answers depend on the exact
    query points.
    """

    def __init__(
        self, like: Tensor, sigma_min: Tensor, sigma_max: Tensor, seed: int, on_cpu: bool = True
    ) -> None:
        self._device = like.device
        self._dtype = like.dtype
        t0, t1, self._sign = _ordered(sigma_min, sigma_max)
        w0 = torch.zeros(like.shape, dtype=like.dtype, device="cpu" if on_cpu else like.device)
        self._tree = torchsde.BrownianTree(t0.float(), w0, t1.float(), entropy=seed)

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        t0, t1, sign = _ordered(sigma, sigma_next)
        increment = self._tree(t0.float(), t1.float()) * (self._sign * sign)
        increment = increment.to(device=self._device, dtype=self._dtype)
        return increment / float((sigma_next - sigma).abs().sqrt())


def _ordered(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int]:
    return (a, b, 1) if a < b else (b, a, -1)
