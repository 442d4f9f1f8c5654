"""An interrupt takes effect inside a VAE decode (between decoder blocks); without one the
decode is unchanged (hostile-input issue, item 7)."""

from __future__ import annotations

import pytest
import torch

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.models.interrupts import interruptible
from comfyd.models.vae_codec import vae_decode

from .conftest import single_name


def test_vae_decode_stops_between_blocks(manager) -> None:
    _model, _clip, vae = manager.load_checkpoint(single_name("sd1"))
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = vae_decode(vae, latent)
    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 5:
            raise ExecutionInterrupted("interrupted")

    with pytest.raises(ExecutionInterrupted), interruptible(check):
        vae_decode(vae, latent)
    assert len(calls) == 5
    with interruptible(lambda: None):
        again = vae_decode(vae, latent)
    assert torch.equal(plain, again)
