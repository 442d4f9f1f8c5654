"""Write ComfyUI's flow-matching sigma facts (tests/sampling/flow_sigmas_reference.json).

For each flow model sampling comfyd implements (Flux dev's exponential shift at two shifts, the
discrete flow table of Flux schnell, SD3 and AuraFlow), ComfyUI's own objects give: the table's
ends, percent_to_sigma, the network timestep of a few sigmas, and every scheduler's 4-step sigmas.

    python bench/comfyui_flow_sigmas.py --comfyui /path/to/ComfyUI --out tests/sampling/flow_sigmas_reference.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfyui_render import load_comfyui  # noqa: E402

STEPS = 4
# name -> (ComfyUI model-sampling class, set_parameters arguments)
CASES: dict[str, tuple[str, dict[str, float]]] = {
    "flux_dev_shift_1.15": ("ModelSamplingFlux", {"shift": 1.15}),
    "flux_shift_0.4898": ("ModelSamplingFlux", {"shift": 0.4898}),
    "schnell_discrete_flow": ("ModelSamplingDiscreteFlow", {"shift": 1.0, "multiplier": 1.0}),
    "sd3_shift_3": ("ModelSamplingDiscreteFlow", {"shift": 3.0, "multiplier": 1000.0}),
    "auraflow_shift_1.73": ("ModelSamplingDiscreteFlow", {"shift": 1.73, "multiplier": 1.0}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        comfy = load_comfyui(args.comfyui.resolve(), Path(tmp), None, Path(tmp))
    import torch

    ms = importlib.import_module("comfy.model_sampling")
    samplers = importlib.import_module("comfy.samplers")
    out: dict[str, Any] = {"comfyui_version": comfy["version"], "steps": STEPS, "cases": {}}
    for name, (base_name, params) in CASES.items():
        model = type("Sampling", (getattr(ms, base_name), ms.CONST), {})()
        model.set_parameters(**params)
        out["cases"][name] = {
            "kind": base_name,
            "params": params,
            "sigma_min": float(model.sigma_min),
            "sigma_max": float(model.sigma_max),
            "percent_to_sigma": {str(p): float(model.percent_to_sigma(p)) for p in (0.0, 0.25, 0.5, 0.9, 1.0)},
            "timestep": {str(s): float(model.timestep(torch.tensor(s))) for s in (1.0, 0.5, 0.123)},
            "schedulers": {
                s: [float(x) for x in samplers.calculate_sigmas(model, s, STEPS)] for s in samplers.SCHEDULER_NAMES
            },
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"RESULT flow_cases={len(out['cases'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
