"""Full-size fidelity: ComfyUI and comfyd on full-size random SD1.5, SD2 (v) and SDXL checkpoints.

    PYTHONPATH=<ComfyUI's requirements> python bench/fidelity_full.py --comfyui PATH
        [--families sd1,sd2,sdxl] [--size 64] [--steps 8] [--sampler dpmpp_2m] [--scheduler karras]

tests/fidelity compares 65 small cases on a checkpoint whose UNet is cut to two levels. This script
covers what that leaves out: the real depth of each architecture (four levels, two or three blocks
each, SD2's linear projections and v-prediction, SDXL's two text encoders, pooled and size
conditioning). Each family's full-size random checkpoint is written once into the cache folder
(2-7 GB each); ComfyUI renders ComfyUI's default graph with it (bench/comfyui_render.py, in a child
process) and comfyd runs the same graph (bench/parity.py, in another). Ends with one line per
family:

    RESULT psnr_<family>_db=<value>
    RESULT max_diff_<family>=<value>
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = Path.home() / ".cache" / "comfyd-bench" / "parity-full"
# ComfyUI's SD2 check for v-prediction reads this one bias, which only the full depth has.
FAMILIES = {
    "sd1": {"family": "sd1", "prediction": None},
    "sd2": {"family": "sd2", "prediction": "v"},
    "sdxl": {"family": "sdxl", "prediction": None},
}


def checkpoint(cache: Path, name: str) -> Path:
    spec = FAMILIES[name]
    path = cache / "checkpoints" / f"comfyd-full-{name}.safetensors"
    if not path.exists():
        from comfyd.models.tiny import write_random_checkpoint

        print(f"writing {path} (once) ...", flush=True)
        partial = path.with_suffix(".partial")
        write_random_checkpoint(partial, spec["family"], "single", seed=0, size="full",
                                prediction=spec["prediction"])
        partial.rename(path)
    return path


def workflow(ckpt_name: str, size: int, steps: int, sampler: str, scheduler: str) -> dict:
    graph = json.loads((REPO / "tests" / "fidelity" / "workflows" / "sampler_euler.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = ckpt_name
    graph["5"]["inputs"].update(width=size, height=size)
    graph["3"]["inputs"].update(steps=steps, sampler_name=sampler, scheduler=scheduler)
    return graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--families", default="sd1,sd2,sdxl")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--scheduler", default="karras")
    args = parser.parse_args(argv)

    results: dict[str, tuple[float, int]] = {}
    for name in args.families.split(","):
        if name not in FAMILIES:
            parser.error(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}")
        ckpt = checkpoint(args.cache_dir, name)
        work = args.cache_dir / "runs" / name
        work.mkdir(parents=True, exist_ok=True)
        wf = work / f"full_{name}.json"
        wf.write_text(json.dumps(workflow(ckpt.name, args.size, args.steps, args.sampler, args.scheduler)))
        models = args.cache_dir
        subprocess.run(
            [sys.executable, str(HERE / "comfyui_render.py"), "--comfyui", str(args.comfyui),
             "--models-dir", str(models), "--out", str(work), "--no-model-digests", str(wf)],
            check=True, env=os.environ.copy(),
        )
        # comfyd in its own process (and without ComfyUI's requirements on the path).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(
            [sys.executable, str(HERE / "parity.py"), str(wf), str(work / f"full_{name}.png"),
             "--models-dir", str(models), "--save-to", str(work / f"comfyd_{name}.png"), "--min-psnr", "0"],
            capture_output=True, text=True, env=env,
        )
        print(done.stdout, done.stderr[-2000:] if done.returncode else "", flush=True)
        psnr = re.search(r"RESULT psnr_db=(\S+)", done.stdout)
        max_diff = re.search(r"max abs diff:\s+(\d+)", done.stdout)
        if done.returncode != 0 or not psnr or not max_diff:
            print(f"{name}: comfyd did not produce a comparable image", file=sys.stderr)
            return 1
        results[name] = (float(psnr.group(1)), int(max_diff.group(1)))
    for name, (psnr_db, max_diff) in results.items():
        print(f"RESULT psnr_{name}_db={psnr_db}")
        print(f"RESULT max_diff_{name}={max_diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
