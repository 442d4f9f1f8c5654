"""What the sampler needs from a model, as protocols: sampling never imports `comfyd.models`.

A MODEL link value (the models package's `ModelHandle`) satisfies `SamplingModel`: it lends the
network (a callable `net(x, timestep, encoder_hidden_states=..., added_cond_kwargs=...,
return_dict=False)`, as a diffusers UNet is) for the duration of a `patched()` block, and says
how to drive it: its model sampling (schedule + prediction type), its latent scaling and the
vector conditioning its network takes.

Optionally (cross-request batching, `step_batcher.lend_network`): a `batcher` (the process's
StepBatcher), a `batch_key` (equal only for the same weights with the same patches), a
`device_turn()` context (the device gate alone) and `patched(gate=False)`. A model without them
samples with `patched()` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from comfyd.sampling.sigmas import DiscreteSchedule

# (conditioning entry as a dict, latent (height, width)) -> the network's `added_cond_kwargs`.
VectorConditioning = Callable[[dict[str, Any], tuple[int, int]], dict[str, Tensor]]


@runtime_checkable
class ModelSampling(Protocol):
    """The noise parameterisation of a model (see `model_sampling.DiscreteModelSampling`)."""

    @property
    def prediction(self) -> str: ...

    @property
    def schedule(self) -> DiscreteSchedule: ...


@runtime_checkable
class SamplingModel(Protocol):
    """A denoising network and its model-sampling object: what `common_ksampler` samples with."""

    @property
    def device(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...

    @property
    def latent_scale(self) -> float: ...

    @property
    def latent_shift(self) -> float: ...

    @property
    def model_sampling(self) -> ModelSampling: ...

    @property
    def vector_conditioning(self) -> VectorConditioning | None: ...

    def patched(self) -> AbstractContextManager[Any]: ...
