"""PSNR of comfyd's Z-Image Turbo workflow against diffusers' ZImagePipeline on tiny files.

    PYTHONPATH=. python bench/z_image_diffusers_parity.py [--models DIR]

Writes the tiny Z-Image files (`comfyd models make-tiny --family z-image`) into DIR when they are
not there, runs the canonical Turbo workflow through `comfyd run` in three cases, renders the same
prompt, sigmas and initial noise with ZImagePipeline (tests/families/z_image_reference.py, which
says why the reference is not ComfyUI) and prints `RESULT psnr_z_image_<case>_vs_diffusers_db` and
the largest difference in 8-bit levels. Cases: `turbo` (as shipped: res_multistep, 2 steps, 64x64;
two res_multistep steps are Euler's), `euler4` (4 Euler steps), `cfg2_5` (4 Euler steps at cfg 2.5
against ConditioningZeroOut's negative) and `euler4_80x48` (a non-square size, 5x3 patches).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyd.cli import main as comfyd_main  # noqa: E402
from comfyd.models.families import _z_image_tiny  # noqa: E402
from comfyd.models.tiny import make_tiny  # noqa: E402
from comfyd.sampling.noise import initial_noise  # noqa: E402
from tests.families.z_image_reference import psnr, render, tiny_workflow  # noqa: E402

CASES = {
    "turbo": {},
    "euler4": {"KSampler": {"sampler_name": "euler", "steps": 4}},
    "cfg2_5": {"KSampler": {"sampler_name": "euler", "steps": 4, "cfg": 2.5}},
    "euler4_80x48": {
        "KSampler": {"sampler_name": "euler", "steps": 4},
        "EmptySD3LatentImage": {"width": 80, "height": 48},
    },
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a temporary one)")
    parser.add_argument("--case", choices=(*CASES, "all"), default="all")
    args = parser.parse_args(argv)
    cases = list(CASES) if args.case == "all" else [args.case]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp) / "models"
        if not all((root / name).is_file() for name in _z_image_tiny.NAMES.values()):
            make_tiny(root, family="z-image")
        for case in cases:
            graph = tiny_workflow(**CASES[case])
            workflow = Path(tmp) / f"z_image_{case}.json"
            workflow.write_text(json.dumps(graph))
            out = Path(tmp) / f"out_{case}"
            code = comfyd_main(
                ["run", str(workflow), "--models-dir", str(root), "--output-dir", str(out), "-q"]
            )
            if code != 0:
                return code
            with Image.open(next(out.glob("*.png"))) as png:
                ours = np.asarray(png.convert("RGB"))
            sampler, latent = graph["3"]["inputs"], graph["13"]["inputs"]
            noise = initial_noise(
                torch.zeros(1, 16, latent["height"] // 8, latent["width"] // 8), int(sampler["seed"])
            )
            theirs = render(
                root, graph["6"]["inputs"]["text"], noise, int(sampler["steps"]), float(sampler["cfg"])
            )
            print(f"RESULT psnr_z_image_{case}_vs_diffusers_db={psnr(ours, theirs):.2f}")
            print(
                f"RESULT max_diff_z_image_{case}={int(np.abs(ours.astype(int) - theirs.astype(int)).max())}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
