"""PSNR of comfyd's Flux.2 template graph against diffusers' Flux2Pipeline on tiny files.

    PYTHONPATH=. python bench/flux2_diffusers_parity.py [--models DIR] [--variant dev|klein|both] [--steps N]

Writes the tiny Flux.2 files (`comfyd models make-tiny --family flux2`) into DIR when they are not
there, runs the template graph (UNETLoader, CLIPLoader, CLIPTextEncode, FluxGuidance, BasicGuider,
RandomNoise, KSamplerSelect euler, Flux2Scheduler, EmptyFlux2LatentImage, SamplerCustomAdvanced,
VAEDecode, SaveImage) at 64x64 through `comfyd run`, renders the same conditioning, sigmas and
initial noise with Flux2Pipeline (tests/families/flux2_reference.py, which says why the reference
is not ComfyUI and what stands in for the text encoder) and prints
`RESULT psnr_flux2_<variant>_vs_diffusers_db` and the largest difference in 8-bit levels.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyd.cli import main as comfyd_main  # noqa: E402
from comfyd.models.families import _flux2_tiny  # noqa: E402
from comfyd.models.tiny import make_tiny  # noqa: E402
from tests.families.flux2_reference import psnr, reference, tiny_workflow  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a temporary one)")
    parser.add_argument("--variant", choices=("dev", "klein", "both"), default="both")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    variants = ("dev", "klein") if args.variant == "both" else (args.variant,)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp) / "models"
        if not all((root / name).is_file() for name in _flux2_tiny.NAMES.values()):
            make_tiny(root, family="flux2")
        for variant in variants:
            graph = tiny_workflow(variant, **{"9": {"steps": args.steps}})
            workflow = Path(tmp) / f"flux2_{variant}.json"
            workflow.write_text(json.dumps(graph))
            out = Path(tmp) / f"out_{variant}"
            code = comfyd_main(["run", str(workflow), "--models-dir", str(root), "--output-dir", str(out), "-q"])
            if code != 0:
                return code
            with Image.open(next(out.glob("*.png"))) as png:
                ours = np.asarray(png.convert("RGB"))
            theirs = reference(root, variant, steps=args.steps)
            print(f"RESULT psnr_flux2_{variant}_vs_diffusers_db={psnr(ours, theirs):.2f}")
            print(f"RESULT max_diff_flux2_{variant}={int(np.abs(ours.astype(int) - theirs.astype(int)).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
