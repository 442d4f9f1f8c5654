"""Write ComfyUI's DifferentialDiffusion masks (tests/sampling/data/differential_mask_reference.json).

For SD1's discrete EPS schedule and Flux dev's flow table (shift 1.15), ComfyUI's own
DifferentialDiffusion.forward turns the mask levels 0, 0.1, ..., 1 into the mask of each step of
a 4-step `normal` KSampler schedule, at strength 1 and 0.4.

    python bench/comfyui_differential_mask.py --comfyui /path/to/ComfyUI --out tests/sampling/data/differential_mask_reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfyui_render import load_comfyui  # noqa: E402

STEPS = 4
STRENGTHS = (1.0, 0.4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        load_comfyui(args.comfyui.resolve(), Path(tmp), None, Path(tmp) / "out")
    import comfy.model_sampling as ms
    import comfy.samplers
    import torch
    from comfy_extras.nodes_differential_diffusion import DifferentialDiffusion

    class Config:
        sampling_settings: dict[str, float] = {}

    class Discrete(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    class Flux(ms.ModelSamplingFlux, ms.CONST):
        pass

    mask = torch.linspace(0, 1, 11)
    out: dict[str, object] = {"mask": [float(v) for v in mask]}
    for name, sampling in (("sd1", Discrete(Config())), ("flux_dev", Flux(Config()))):
        sigmas = comfy.samplers.calculate_sigmas(sampling, "normal", STEPS)
        model = types.SimpleNamespace(inner_model=types.SimpleNamespace(model_sampling=sampling))
        rows = []
        for sigma in sigmas[:-1]:
            for strength in STRENGTHS:
                step = DifferentialDiffusion.forward(sigma.reshape(1), mask, {"model": model, "sigmas": sigmas}, strength)
                rows.append({"sigma": float(sigma), "strength": strength, "mask": [float(v) for v in step]})
        out[name] = {"sigmas": [float(v) for v in sigmas], "steps": rows}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
