"""Per-frame PSNR of comfyd's Wan 2.1 text-to-video against diffusers' WanPipeline on tiny files.

    PYTHONPATH=. python bench/wan_diffusers_parity.py [--models DIR] [--steps 2] [--cfg 6] [--i2v | --clip]

Writes the tiny Wan files (`comfyd models make-tiny --family wan`) into DIR when they are not
there, runs the canonical workflow (comfyd/workflows/wan_t2v_api.json at 9 frames of 64x64; with
`--i2v` wan_i2v_api.json from a gradient start image, against WanImageToVideoPipeline) through
`comfyd run`, renders the same prompts, noise and sigmas with WanPipeline
(tests/families/wan_reference.py) and prints one JSON line: PSNR per frame, the minimum, and the
largest difference in 8-bit levels. `--clip`: Wan 2.1 I2V with CLIP vision
(comfyd/workflows/wan21_i2v_clip_api.json on the img_emb I2V file and the tiny tower) against
WanImageToVideoPipeline with diffusers' own transformer, given the CLIP features comfyd's tower
computed (tests/families/wan_clip_reference.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyd.cli import main as comfyd_main  # noqa: E402
from comfyd.models.families import _wan_tiny, _wan_tiny_clip  # noqa: E402
from comfyd.models.tiny import make_tiny  # noqa: E402
from tests.families.wan_clip_reference import reference_clip_i2v, tiny_clip_workflow  # noqa: E402
from tests.families.wan_reference import (  # noqa: E402,E501
    SIZE,
    psnr,
    reference,
    reference_i2v,
    tiny_i2v_workflow,
    tiny_workflow,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="models folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cfg", type=float, default=6.0)
    parser.add_argument("--i2v", action="store_true", help="image-to-video (WanImageToVideo) instead")
    parser.add_argument("--clip", action="store_true", help="Wan 2.1 image-to-video with CLIP vision instead")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.models or Path(tmp) / "models"
        if not all((root / name).is_file() for name in [*_wan_tiny.NAMES.values(), *_wan_tiny_clip.NAMES.values()]):
            make_tiny(root, family="wan")
        inputs = Path(tmp) / "input"
        inputs.mkdir()
        y, x = np.mgrid[0:SIZE, 0:SIZE]
        start = Image.fromarray(np.stack([x * 4, y * 4, 255 - x * 2], -1).clip(0, 255).astype(np.uint8))
        start.save(inputs / "start.png")
        if args.clip:
            graph = tiny_clip_workflow("start.png", steps=args.steps, cfg=args.cfg)
        elif args.i2v:
            graph = tiny_i2v_workflow("start.png", steps=args.steps, cfg=args.cfg)
        else:
            graph = tiny_workflow(steps=args.steps, cfg=args.cfg)
        workflow = Path(tmp) / "wan.json"
        workflow.write_text(json.dumps(graph))
        out = Path(tmp) / "out"
        argv = ["run", str(workflow), "--models-dir", str(root), "--input-dir", str(inputs), "--output-dir", str(out)]
        code = comfyd_main([*argv, "-q"])
        if code != 0:
            return code
        with Image.open(next(out.glob("*.webp"))) as webp:
            ours = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(webp)])
        if args.clip:
            theirs = reference_clip_i2v(root, graph, start)
        else:
            theirs = reference_i2v(root, graph, start) if args.i2v else reference(root, graph)
    values = [psnr(a, b) for a, b in zip(ours, theirs, strict=True)]
    finite = [v for v in values if np.isfinite(v)]
    print(json.dumps({
        "frames": len(values),
        "psnr_db": [round(v, 2) if np.isfinite(v) else "inf" for v in values],
        "min_psnr_db": round(min(finite), 2) if finite else "inf",
        "max_diff": int(np.abs(ours.astype(int) - theirs.astype(int)).max()),
    }))  # fmt: skip
    mode = "clip_i2v" if args.clip else "i2v" if args.i2v else "t2v"
    print(f"RESULT wan_{mode}_min_psnr_db={min(finite) if finite else float('inf'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
