"""The whole GPU check in one run, for a short window on a lent, air-gapped GPU host.

    bash bench/gpu_check.sh                # on the GPU host (installs .whl/ first, see that script)
    bash bench/gpu_check.sh --cpu-dry-run  # the same steps on CPU with tiny models (in the tests)

Steps, each timed and recorded even when one fails (the run goes on to the next):

1. `imports`: comfyd and what it needs beyond the host's image import; versions are recorded.
2. `checkpoints`: full-size random SD1.5 and SDXL checkpoints written on this machine (nothing
   large travels); tiny ones in the dry run.
3. `cuda_tests`: the tests marked `cuda` (they skip on a machine without CUDA).
4. `throughput_*`: bench/gpu_throughput.py, comfyd vs the diffusers pipeline on the same weights:
   SD1.5 512² and SDXL 1024², 20 steps, batch 1 and 4, torch.compile off and on for SD1.5.
5. `fp16_vs_fp32`: comfyd's fp16 GPU picture against its fp32 CPU picture of the same job (PSNR),
   to catch dtype bugs; also the peak VRAM of the GPU run.
6. `cold_start`: a fresh `python -m comfyd run` process, start to first PNG, on the device.
6b. `flux_fp8_24gb`: bench/flux_fp8_memory.py on the GPU capped at 24 GB: a full-size random
   Flux.1-dev written in fp8, loaded through UNETLoader's path, full-size random CLIP-L + T5-XXL
   encoding a prompt (the T5 offloaded to host memory after it), a 1024x1024 20-step denoise;
   RESULT gpu_peak_allocated_gb. Alone: `bash bench/gpu_check.sh --only imports,flux_fp8_24gb`.
7. With `--comfyui DIR` (gpu_check.sh passes the tree it unpacked from a carried
   .comfyui/comfyui-src.tar.gz, see scripts/comfyui_tarball.sh): `comfyui_*`, ComfyUI renders
   the workflow of the first throughput step on the same weights (bench/comfyui_its.py), and
   `gpu_its_ratio` = comfyd's sampler it/s there / ComfyUI's. ComfyUI needs a checkpoint it
   recognises, so the dry run writes the SD1 "parity" checkpoint for both sides (64x64, 3 steps).

A step is skipped (and says so) once the time budget (`--budget-s`, 8 minutes by default) would
be overrun. Everything goes to `$OUT`: `gpu_check.json` (every step's status, seconds, figures
and output tail) and `RESULT name=value` lines on stdout. Exit status 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_LINE = re.compile(r"^RESULT (\w+)=(\S+)$", re.MULTILINE)


@dataclass
class Step:
    name: str
    status: str = "skipped"  # ok | failed | skipped
    seconds: float = 0.0
    results: dict[str, float | str] = field(default_factory=dict)
    detail: str = ""


@dataclass
class Plan:
    """What the run does: full size on the GPU, tiny on the CPU."""

    device: str
    tiny: bool
    budget_s: float
    cache_dir: Path
    throughput: list[tuple[str, list[str]]]  # (step name, gpu_throughput.py arguments)
    # ComfyUI beside comfyd: (comfyd step, ComfyUI step, shared job arguments), or None.
    comfyui: tuple[str, str, list[str]] | None = None
    only: frozenset[str] = frozenset()  # run just these steps (tests); empty: all


PARITY_CHECKPOINT = "sd1-parity.safetensors"


def make_plan(dry_run: bool, budget_s: float, cache_dir: Path, comfyui: bool = False) -> Plan:
    if dry_run:
        runs = [
            ("throughput_sd1_b1", ["--tiny", "--family", "sd1", "--repeats", "1"]),
            ("throughput_sdxl_b2", ["--tiny", "--family", "sdxl", "--repeats", "1", "--batch", "2"]),
        ]
        pair = None
        if comfyui:
            job = ["--size", "64", "--steps", "3", "--repeats", "1"]
            parity = str(cache_dir / "parity" / "checkpoints" / PARITY_CHECKPOINT)
            runs.append(("throughput_sd1_parity", ["--tiny", "--checkpoint", parity, *job]))
            pair = ("throughput_sd1_parity", "comfyui_sd1_parity", ["--checkpoint", parity, "--device", "cpu", *job])
        return Plan("cpu", True, budget_s, cache_dir, runs, pair)
    full = ["--cache-dir", str(cache_dir), "--steps", "20", "--repeats", "3"]
    runs = [
        ("throughput_sd1_512_b1", ["--family", "sd1", "--size", "512", *full]),
        ("throughput_sd1_512_b4", ["--family", "sd1", "--size", "512", "--batch", "4", *full]),
        ("throughput_sdxl_1024_b1", ["--family", "sdxl", "--size", "1024", *full]),
        ("throughput_sdxl_1024_b4", ["--family", "sdxl", "--size", "1024", "--batch", "4", *full]),
        ("throughput_sd1_512_b1_compile", ["--family", "sd1", "--size", "512", "--compile", *full]),
    ]
    sd1 = str(cache_dir / "full" / "checkpoints" / "sd15-random-fp16.safetensors")
    pair = ("throughput_sd1_512_b1", "comfyui_sd1_512_b1",
            ["--checkpoint", sd1, "--device", "cuda", "--size", "512", "--steps", "20", "--repeats", "3"])
    return Plan("cuda", False, budget_s, cache_dir, runs, pair if comfyui else None)


class Runner:
    """Runs steps under one time budget and keeps what each produced."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan, self.out = plan, out
        self.started = time.monotonic()
        self.steps: list[Step] = []

    def left_s(self) -> float:
        return self.plan.budget_s - (time.monotonic() - self.started)

    def command(self, name: str, argv: list[str], *, need_s: float, timeout_s: float) -> Step:
        """Run a subprocess step; parse its RESULT lines."""
        step = Step(name)
        self.steps.append(step)
        if self.plan.only and name not in self.plan.only:
            step.detail = "skipped: not asked for (--only)"
            return step
        if self.left_s() < need_s:
            step.detail = f"skipped: {self.left_s():.0f} s left of the budget, the step needs ~{need_s:.0f} s"
            print(f"[gpu_check] {name}: {step.detail}", flush=True)
            return step
        print(f"[gpu_check] {name}: {' '.join(argv)}", flush=True)
        began = time.monotonic()
        try:
            proc = subprocess.run(
                argv, cwd=REPO, capture_output=True, text=True, timeout=min(timeout_s, max(self.left_s(), 1.0))
            )
            output = proc.stdout + proc.stderr
            step.status = "ok" if proc.returncode == 0 else "failed"
            if proc.returncode != 0:
                step.detail = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            step.status, step.detail = "failed", f"timed out after {exc.timeout:.0f} s"
        step.seconds = round(time.monotonic() - began, 2)
        step.results = {k: _number(v) for k, v in RESULT_LINE.findall(output)}
        (self.out / f"{name}.log").write_text(output)
        print(f"[gpu_check] {name}: {step.status} in {step.seconds:.1f} s {step.detail}", flush=True)
        return step

    def python(self, name: str, code: str, *, need_s: float, timeout_s: float) -> Step:
        return self.command(name, [sys.executable, "-c", code], need_s=need_s, timeout_s=timeout_s)

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.plan.device,
            "dry_run": self.plan.tiny,
            "seconds": round(time.monotonic() - self.started, 1),
            "steps": [asdict(s) for s in self.steps],
        }


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


IMPORTS = """
import importlib, json, torch
names = ["diffusers", "transformers", "accelerate", "safetensors", "pydantic", "pydantic_settings",
         "fastapi", "uvicorn", "torchsde", "PIL", "numpy"]
versions = {n: getattr(importlib.import_module(n), "__version__", "?") for n in names}
import comfyd.nodes, comfyd.server  # noqa: F401  (the whole package imports)
versions["torch"] = torch.__version__
print(json.dumps(versions))
print("RESULT cuda_available=" + str(int(torch.cuda.is_available())))
if torch.cuda.is_available():
    print("RESULT gpu_name=" + torch.cuda.get_device_name(0).replace(" ", "_"))
"""

CHECKPOINTS = """
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from gpu_throughput import full_checkpoint
for family in ("sd1", "sdxl"):
    path = full_checkpoint(family, Path(sys.argv[1]))
    print(f"RESULT ckpt_{family}_gb={path.stat().st_size / 1e9:.2f}")
"""

# The dry run's checkpoint for ComfyUI: comfyd's tiny models are too small for its detection.
PARITY = f"""
import sys
from pathlib import Path
from comfyd.models.tiny import write_random_checkpoint
path = Path(sys.argv[1]) / "parity" / "checkpoints" / {PARITY_CHECKPOINT!r}
if not path.is_file():
    path.parent.mkdir(parents=True, exist_ok=True)
    write_random_checkpoint(path.with_suffix(".partial"), "sd1", "single", seed=0, size="parity")
    path.with_suffix(".partial").replace(path)
print(f"RESULT ckpt_parity_gb={{path.stat().st_size / 1e9:.2f}}")
"""


def fidelity_code(tiny: bool, cache_dir: Path) -> str:
    """fp16 on the device against fp32 on the CPU, same workflow and seed; and peak VRAM."""
    return f"""
import sys, tempfile, torch, numpy as np
from pathlib import Path
from PIL import Image
sys.path.insert(0, "bench")
from gpu_throughput import comfyd_workflow, full_checkpoint
from comfyd.runner import LocalRunner
from comfyd.settings import Settings
tiny = {tiny!r}
work = Path(tempfile.mkdtemp(prefix="comfyd-gpu-fidelity-"))
if tiny:
    from comfyd.models.tiny import make_tiny_checkpoint
    ckpt = make_tiny_checkpoint(work / "models" / "checkpoints", family="sd1", seed=0)
    size, steps, device, dtype = 64, 4, "cpu", "fp32"
else:
    ckpt = full_checkpoint("sd1", Path({str(cache_dir)!r}))
    size, steps, device, dtype = 256, 8, "cuda", "fp16"
pictures = {{}}
for name, dev, dt in (("device", device, dtype), ("cpu", "cpu", "fp32")):
    settings = Settings(models_dir=ckpt.parent.parent, output_dir=work / name, temp_dir=work / "temp",
                        input_dir=work / "input", device=dev, dtype=dt)
    workflow = comfyd_workflow(ckpt.name, size, steps, seed=7)
    workflow["9"] = {{"class_type": "SaveImage", "inputs": {{"images": ["8", 0], "filename_prefix": name}}}}
    with LocalRunner(settings) as runner:
        result = runner.run(workflow)
        if not result.ok:
            raise SystemExit(f"{{name}} run failed: {{result.error}}")
    png = sorted((work / name).rglob("*.png"))[0]
    pictures[name] = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    if dev == "cuda":
        print(f"RESULT peak_vram_gib={{torch.cuda.max_memory_allocated() / 2**30:.3f}}")
mse = float(np.mean((pictures["device"] - pictures["cpu"]) ** 2))
psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
print(f"RESULT fp16_vs_fp32_psnr_db={{psnr:.2f}}")
print(f"RESULT fp16_vs_fp32_max_diff={{int(np.abs(pictures['device'] - pictures['cpu']).max())}}")
"""


def cold_start_code(tiny: bool, cache_dir: Path, device: str) -> str:
    """Start a fresh comfyd process and time it to its first PNG."""
    return f"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, "bench")
work = Path(tempfile.mkdtemp(prefix="comfyd-gpu-cold-"))
if {tiny!r}:
    from comfyd.models.tiny import make_tiny_checkpoint
    ckpt = make_tiny_checkpoint(work / "models" / "checkpoints", family="sd1", seed=0)
    size, steps = 64, 4
else:
    from gpu_throughput import full_checkpoint
    ckpt = full_checkpoint("sd1", Path({str(cache_dir)!r}))
    size, steps = 512, 20
from gpu_throughput import comfyd_workflow
workflow = comfyd_workflow(ckpt.name, size, steps, seed=1)
workflow["9"] = {{"class_type": "SaveImage", "inputs": {{"images": ["8", 0], "filename_prefix": "cold"}}}}
path = work / "wf.json"
path.write_text(json.dumps(workflow))
env = dict(os.environ, COMFYD_DEVICE={device!r}, COMFYD_CONFIG=os.devnull)
started = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "comfyd", "run", str(path), "--models-dir", str(ckpt.parent.parent),
                       "--output", str(work / "out")], env=env, capture_output=True, text=True)
seconds = time.perf_counter() - started
if proc.returncode != 0 or not list((work / "out").rglob("*.png")):
    raise SystemExit(f"comfyd run failed ({{proc.returncode}}): {{proc.stdout[-2000:]}} {{proc.stderr[-2000:]}}")
print(f"RESULT cold_start_s={{seconds:.2f}}")
"""


def flux_fp8_args(plan: Plan) -> list[str]:
    """A full-size Flux.1-dev in fp8 (random, written here) with full-size CLIP-L + T5-XXL, the
    GPU capped at 24 GB: load, encode (the T5 offloaded after it), 1024x1024 20 steps; tiny on CPU."""
    work = ["--workdir", str(plan.cache_dir / "flux-fp8")]
    if plan.tiny:
        return [*work, "--tiny", "--double", "1", "--single", "1", "--text-encoders", "--size", "64", "--steps", "2"]
    return [*work, "--device", "cuda", "--dtype", "bf16", "--text-encoders", "--size", "1024", "--steps", "20",
            "--cap-gb", "24"]  # fmt: skip


def comfyui_step(run: Runner, pair: tuple[str, str, list[str]], root: Path) -> None:
    """ComfyUI's it/s on the job of `pair[0]`, and gpu_its_ratio = comfyd's there / ComfyUI's."""
    ours_name, name, job = pair
    need = 30 if run.plan.tiny else 90
    step = run.command(name, [sys.executable, "bench/comfyui_its.py", "--comfyui", str(root), *job],
                       need_s=need, timeout_s=1200 if run.plan.tiny else 300)
    ours = next((s.results.get("comfyd_its") for s in run.steps if s.name == ours_name), None)
    theirs = step.results.get("comfyui_its")
    if isinstance(ours, float) and isinstance(theirs, float) and theirs > 0:
        step.results["gpu_its_ratio"] = round(ours / theirs, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="same steps on CPU with tiny models")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time budget of the whole run (480 s on the GPU; 1800 s for the dry run, whose "
                             "CPU may be shared)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "comfyd-gpu-check")
    parser.add_argument("--comfyui", type=Path, default=None,
                        help="a ComfyUI source tree (gpu_check.sh: the carried tarball, unpacked): render beside comfyd")
    parser.add_argument("--only", default="", help="comma-separated step names to run; the others are skipped")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else (1800.0 if args.cpu_dry_run else 480.0)
    if args.comfyui is not None and not (args.comfyui / "main.py").is_file():
        print(f"error: --comfyui {args.comfyui} is not a ComfyUI source tree (no main.py)", file=sys.stderr)
        return 2
    plan = make_plan(args.cpu_dry_run, budget, args.cache_dir, comfyui=args.comfyui is not None)
    plan.only = frozenset(n for n in args.only.split(",") if n)
    if not plan.tiny:
        import torch

        if not torch.cuda.is_available():
            print("error: no CUDA device; run `bash bench/gpu_check.sh --cpu-dry-run` on a CPU machine", file=sys.stderr)
            return 2
    run = Runner(plan, args.out)
    run.python("imports", IMPORTS, need_s=5, timeout_s=120)
    if not plan.tiny:
        run.command("checkpoints", [sys.executable, "-c", CHECKPOINTS, str(plan.cache_dir)], need_s=60, timeout_s=240)
    elif plan.comfyui is not None:
        run.command("checkpoints", [sys.executable, "-c", PARITY, str(plan.cache_dir)], need_s=20, timeout_s=600)
    pytest_args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/gpu"]
    run.command("cuda_tests", pytest_args, need_s=10, timeout_s=180)
    for name, extra in plan.throughput:
        need = 20 if plan.tiny else (90 if "compile" in name or "sdxl" in name else 40)
        run.command(name, [sys.executable, "bench/gpu_throughput.py", *extra], need_s=need,
                    timeout_s=900 if name.endswith("_parity") else 240)
    if plan.comfyui is not None:
        comfyui_step(run, plan.comfyui, args.comfyui)
    run.python("fp16_vs_fp32", fidelity_code(plan.tiny, plan.cache_dir), need_s=20, timeout_s=240)
    run.python("cold_start", cold_start_code(plan.tiny, plan.cache_dir, plan.device), need_s=20, timeout_s=240)
    run.command("flux_fp8_24gb", [sys.executable, "bench/flux_fp8_memory.py", *flux_fp8_args(plan)],
                need_s=40 if plan.tiny else 150, timeout_s=600 if plan.tiny else 420)

    summary = run.summary()
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    for step in run.steps:
        for key, value in step.results.items():
            shown = value if not isinstance(value, float) or math.isfinite(value) else str(value)
            print(f"RESULT {step.name}.{key}={shown}")
    ratio = next((s.results["gpu_its_ratio"] for s in run.steps if s.name.startswith("comfyui_")
                  and "gpu_its_ratio" in s.results), None)
    if ratio is not None:
        print(f"RESULT gpu_its_ratio={ratio}")  # comfyd it/s / ComfyUI it/s, same job and weights
    failed = [s.name for s in run.steps if s.status == "failed"]
    print(f"RESULT gpu_check_failed_steps={len(failed)}")
    print(f"gpu_check: {len(run.steps)} steps, failed: {', '.join(failed) or 'none'}; summary in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
