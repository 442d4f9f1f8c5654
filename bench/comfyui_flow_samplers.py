"""Write ComfyUI's sampler outputs on flow-matching models (tests/sampling/flow_samplers_reference.json).

Every sampler of ComfyUI's KSampler list runs, as ComfyUI's KSAMPLER calls it, on a small
deterministic fake model whose model sampling is one of ComfyUI's own CONST (flow) objects, from a
fixed start latent, with a fixed seed, over two schedules: the model's "simple" 4-step sigmas
(starting at sigma 1, where the log-SNR samplers move the first sigma) and a partial one. The fake
model returns a guided prediction and hands its negative-prompt prediction to the post-CFG
functions, as ComfyUI's CFG does, so the CFG++ samplers run too. The outputs are stored whole
(float32, 9 significant digits); tests/sampling/test_flow_samplers.py holds comfyd's samplers to them.

    python bench/comfyui_flow_samplers.py --comfyui /path/to/ComfyUI \
        --out tests/sampling/flow_samplers_reference.json

(run by ComfyUI's own Python, e.g. /work/cvenv/bin/python) prints RESULT flow_sampler_cases=N.
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

SEED = 5
SHAPE = (1, 4, 4, 4)
CFG = 2.5
PARTIAL_SIGMAS = [0.8, 0.55, 0.3, 0.0]
# name -> (ComfyUI model-sampling class, set_parameters arguments)
MODELS: dict[str, tuple[str, dict[str, float]]] = {
    "flux_dev_shift_1.15": ("ModelSamplingFlux", {"shift": 1.15}),
    "sd3_shift_3": ("ModelSamplingDiscreteFlow", {"shift": 3.0, "multiplier": 1000.0}),
}


def start_latent() -> Any:
    import torch

    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def predictions(x: Any, sigma: float) -> tuple[Any, Any]:
    """(cond, uncond) of the fake model: smooth, nonlinear, sigma-dependent, float32 throughout."""
    import torch

    cond = x * 0.8 + 0.1 * torch.sin(3 * x) * sigma
    uncond = x * 0.7 - 0.05 * torch.cos(2 * x) * sigma
    return cond, uncond


def guided(cond: Any, uncond: Any) -> Any:
    return uncond + (cond - uncond) * CFG


class _FakeModel:
    """What ComfyUI's k-diffusion samplers call: model(x, sigma * s_in, **extra_args), plus the two
    attribute paths they read the model sampling from."""

    def __init__(self, model_sampling: Any) -> None:
        from types import SimpleNamespace

        self.inner_model = SimpleNamespace(
            inner_model=SimpleNamespace(model_sampling=model_sampling),
            model_patcher=SimpleNamespace(get_model_object=lambda name: model_sampling),
        )

    def __call__(self, x: Any, sigma: Any, **extra: Any) -> Any:
        value = float(sigma.flatten()[0])
        cond, uncond = predictions(x, value)
        denoised = guided(cond, uncond)
        for fn in extra.get("model_options", {}).get("sampler_post_cfg_function", []):
            denoised = fn({"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond,
                           "model": None, "uncond": None, "cond": None, "sigma": sigma, "input": x,
                           "model_options": extra.get("model_options", {})})
        return denoised


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
    out: dict[str, Any] = {"comfyui_version": comfy["version"], "seed": SEED, "shape": list(SHAPE), "cfg": CFG,
                           "models": {}}
    failed: list[str] = []
    for model_name, (base_name, params) in MODELS.items():
        model_sampling = type("Sampling", (getattr(ms, base_name), ms.CONST), {})()
        model_sampling.set_parameters(**params)
        schedules = {
            "simple_4": [float(s) for s in samplers.calculate_sigmas(model_sampling, "simple", 4)],
            "partial": PARTIAL_SIGMAS,
        }
        entry: dict[str, Any] = {"kind": base_name, "params": params, "sigmas": schedules, "outputs": {}}
        for sampler_name in samplers.KSAMPLER_NAMES:
            k = samplers.ksampler(sampler_name)
            for schedule_name, sigmas in schedules.items():
                model = _FakeModel(model_sampling)
                extra_args: dict[str, Any] = {"seed": SEED, "model_options": {}}
                try:
                    x = k.sampler_function(model, start_latent(), torch.tensor(sigmas, dtype=torch.float32),
                                           extra_args=extra_args, callback=None, disable=True, **k.extra_options)
                except Exception as exc:  # reported, not stored
                    failed.append(f"{model_name}/{sampler_name}/{schedule_name}: {type(exc).__name__}: {exc}")
                    continue
                entry["outputs"][f"{sampler_name}|{schedule_name}"] = [
                    float(f"{v:.9g}") for v in x.flatten().tolist()
                ]
        out["models"][model_name] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    for line in failed:
        print("not stored:", line)
    print(f"RESULT flow_sampler_cases={sum(len(m['outputs']) for m in out['models'].values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
