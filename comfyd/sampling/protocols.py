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


class ControlStep(Protocol):
    """One sampling run's view of a control model (ControlNet, T2I-Adapter) and its chain.

    Called once per batched UNet evaluation with the UNet's own input (`x_in` already divided by
    sqrt(sigma^2 + 1), `timestep` the table index), the batch's text context and vector
    conditioning, and how many prompts the batch holds; answers the residuals to add inside the
    UNet, or None while no control of the chain is active at `sigma`.
    """

    def __call__(
        self,
        x_in: Tensor,
        timestep: Tensor,
        sigma: float,
        context: Tensor,
        added: dict[str, Tensor] | None,
        batched_number: int,
    ) -> Any: ...


@runtime_checkable
class ControlSignal(Protocol):
    """What a conditioning entry's "control" value is: it starts a `ControlStep` for one run,
    turning its start/end percents into sigmas with the model's `percent_to_sigma`."""

    def for_run(self, percent_to_sigma: Callable[[float], float]) -> ControlStep: ...
