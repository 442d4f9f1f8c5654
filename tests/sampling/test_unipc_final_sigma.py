"""ComfyUI's UniPC replaces a final sigma of 0 by 0.001 in the sigmas tensor KSampler then uses
for its inverse noise scaling, so a flow model's UniPC result is divided by 1 - 0.001 (found by
bench/wan22_comfyui_parity.py: without it uni_pc latents were 6e-3 of their spread off ComfyUI's,
2e-5 with it)."""

from __future__ import annotations

import torch

from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule
from comfyd.sampling.model_sampling import DiscreteModelSampling
from comfyd.sampling.samplers import final_sigma


def test_unipc_leaves_its_final_sigma_for_the_inverse_noise_scaling() -> None:
    ending = torch.tensor([1.0, 0.5, 0.0])
    for name in ("uni_pc", "uni_pc_bh2"):
        last = final_sigma(name, ending)
        assert last.dtype == torch.float32 and float(last) == float(torch.tensor(0.001))
    assert float(final_sigma("euler", ending)) == 0.0
    leftover = torch.tensor([1.0, 0.5, 0.25])
    assert float(final_sigma("uni_pc", leftover)) == 0.25  # only a final 0 is replaced

    x = torch.ones(1, 4, 2, 2)
    flow = FlowModelSampling(TimeShiftSchedule(shift=8.0, multiplier=1000.0))
    expected = x / (1.0 - torch.tensor(0.001))
    assert torch.equal(flow.inverse_noise_scaling(final_sigma("uni_pc", ending), x), expected)
    assert torch.equal(flow.inverse_noise_scaling(final_sigma("euler", ending), x), x)
    assert torch.equal(DiscreteModelSampling("eps").inverse_noise_scaling(final_sigma("uni_pc", ending), x), x)
