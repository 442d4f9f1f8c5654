"""The UNet-shaped call a transformer family hands the sampler.

The sampler calls its network like a diffusers UNet (`net(x, timestep, encoder_hidden_states,
added_cond_kwargs=..., return_dict=False)`) and reads its `config`. A transformer family wraps
its diffusers transformer in a subclass whose `forward` packs, positions and unpacks the latent
for that transformer.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class TransformerNetwork(nn.Module):
    """Holds a diffusers transformer and shows its config; subclasses define `forward`."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    @property
    def config(self) -> Any:
        return self.transformer.config
