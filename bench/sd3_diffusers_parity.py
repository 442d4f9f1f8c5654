"""PSNR of comfyd's SD3.5 workflow against diffusers' StableDiffusion3Pipeline on tiny files.

    PYTHONPATH=. python bench/sd3_diffusers_parity.py [--models DIR]

Writes the tiny SD3.5 files (`comfyd models make-tiny --family sd3`) into DIR when they are not
there, runs the canonical workflow (comfyd/workflows/sd3.5_api.json) at 64x64 through `comfyd run`
on the all-in-one checkpoint and on the split files (UNETLoader, TripleCLIPLoader, VAELoader),
renders the same prompt, sigmas and initial noise with StableDiffusion3Pipeline
(tests/families/sd3_reference.py, which says why the reference is not ComfyUI) and prints
`RESULT psnr_sd3_<variant>_vs_diffusers_db` and the largest difference in 8-bit levels.
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
from comfyd.models.families import _sd3_tiny  # noqa: E402
from comfyd.models.tiny import make_tiny  # noqa: E402
from tests.families.sd3_reference import psnr, reference, tiny_workflow  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp) / "models"
        if not all((root / name).is_file() for name in _sd3_tiny.NAMES.values()):
            make_tiny(root, family="sd3")
        theirs = reference(root, tiny_workflow())
        for variant, split in (("checkpoint", False), ("split", True)):
            workflow = Path(tmp) / f"sd3_{variant}.json"
            workflow.write_text(json.dumps(tiny_workflow(split=split)))
            out = Path(tmp) / f"out_{variant}"
            code = comfyd_main(["run", str(workflow), "--models-dir", str(root), "--output-dir", str(out), "-q"])
            if code != 0:
                return code
            with Image.open(next(out.glob("*.png"))) as png:
                ours = np.asarray(png.convert("RGB"))
            print(f"RESULT psnr_sd3_{variant}_vs_diffusers_db={psnr(ours, theirs):.2f}")
            print(f"RESULT max_diff_sd3_{variant}={int(np.abs(ours.astype(int) - theirs.astype(int)).max())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
