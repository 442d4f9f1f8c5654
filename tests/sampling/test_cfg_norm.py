"""CFGNorm's post-CFG function: the guided prediction held, per latent cell, to the norm of the
positive prompt's prediction (ComfyUI's comfy_extras/nodes_cfg.py; bench/qwen_image_comfyui_parity.py
holds a whole Qwen-Image run with it to ComfyUI's)."""

from __future__ import annotations

import torch

from comfyd.sampling.cfg_norm import CfgNorm
from comfyd.sampling.guidance import BoundGuidance, CfgArgs


def test_cfg_norm_scales_down_to_the_positive_norm_and_never_up() -> None:
    cond = torch.zeros(1, 2, 1, 1, 2)
    cond[0, :, 0, 0, 0] = torch.tensor([3.0, 4.0])  # norm 5 over the channels
    cond[0, :, 0, 0, 1] = torch.tensor([30.0, 40.0])  # norm 50
    guided = torch.zeros_like(cond)
    guided[0, :, 0, 0, :] = torch.tensor([[6.0, 6.0], [8.0, 8.0]])  # norm 10 in both cells
    args = CfgArgs(guided, torch.tensor(0.5), cond, torch.zeros_like(cond), 2.5)
    out = CfgNorm(0.8).bind(None)(guided, args)  # type: ignore[arg-type]
    assert torch.allclose(out[0, :, 0, 0, 0], torch.tensor([6.0, 8.0]) * (5 / (10 + 1e-8)) * 0.8)
    assert torch.allclose(out[0, :, 0, 0, 1], torch.tensor([6.0, 8.0]) * 0.8)  # clamped at 1


def test_cfg_norm_runs_after_the_cfg_combination() -> None:
    x = torch.zeros(1, 4, 2, 2)
    cond, uncond = torch.full_like(x, 1.0), torch.full_like(x, -1.0)
    bound = BoundGuidance(None, (CfgNorm(1.0).bind(None),))  # type: ignore[arg-type]
    out = bound.combine(x, 0.5, cond, uncond, 3.0)  # uncond + 3 * (cond - uncond) = 5, norm 10 -> 2
    assert torch.allclose(out, torch.full_like(x, 1.0))
