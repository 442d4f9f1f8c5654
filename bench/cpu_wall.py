"""Sampling wall time on CPU: comfyd against ComfyUI, same workflow, same weights, alternating.

    python bench/cpu_wall.py --comfyui /work/comfyui [--comfyui-python /work/cvenv/bin/python]
                             [--size 256] [--steps 4] [--repeats 5] [--tiny]

Two long-lived processes, one per side, each loads the checkpoint once (the full-size random
SD1.5 of bench/gpu_throughput.py, or with --tiny the SD1 "parity" checkpoint, which ComfyUI also
recognises) and runs the workflow once untimed (first-call costs). Then the bench asks them in
turn (comfyd, ComfyUI, ComfyUI, comfyd, ...) for a run with a new seed, so only the KSampler and
what follows it run again, and only one side computes at a time. Timed: the KSampler node
(comfyd: its node timing; ComfyUI: its KSampler.sample call), and the whole run.

Both sides use torch's default thread count for one job (comfyd's automatic `cpu_threads` for
`comfyd run` is all usable CPUs, as torch's default). comfyd sets OMP_WAIT_POLICY=PASSIVE when it
is imported (comfyd/__init__.py); ComfyUI runs with whatever the environment says, unless
`--comfyui-env OMP_WAIT_POLICY=PASSIVE` gives it the same (the printout says which).

Last lines: `RESULT comfyd_ksampler_s`, `RESULT comfyui_ksampler_s` (medians) and
`RESULT cpu_wall_ratio=<comfyd / ComfyUI KSampler seconds>` (below 1: comfyd is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def workflow(ckpt_name: str, size: int, steps: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    from cold_start import workflow as cold_workflow

    return cold_workflow(ckpt_name, size, steps, seed)


# --- the two sides, each in its own process ---------------------------------------------------
def comfyd_side(models: Path, out: Path) -> Any:
    sys.path.insert(0, str(REPO))
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    runner = LocalRunner(Settings(models_dir=models, output_dir=out, temp_dir=out / "temp", input_dir=out / "in",
                                  device="cpu"))

    def run(graph: dict[str, Any]) -> dict[str, float]:
        started = time.perf_counter()
        result = runner.run(graph)
        seconds = time.perf_counter() - started
        if not result.ok:
            raise RuntimeError(f"comfyd failed: {result.error}")
        return {"ksampler_s": result.node_timings["3"], "run_s": seconds}

    return run


def comfyui_side(root: Path, models: Path, out: Path) -> Any:
    sys.path.insert(0, str(BENCH))
    from comfyui_render import load_comfyui, render

    comfy = load_comfyui(root, models, None, out)
    sampler = comfy["nodes"].KSampler
    original = sampler.sample
    spent: list[float] = []

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - started)

    sampler.sample = timed

    def run(graph: dict[str, Any]) -> dict[str, float]:
        spent.clear()
        started = time.perf_counter()
        render(comfy, graph, out)
        seconds = time.perf_counter() - started
        if len(spent) != 1:
            raise RuntimeError(f"ComfyUI ran KSampler.sample {len(spent)} times")
        return {"ksampler_s": spent[0], "run_s": seconds}

    return run


def serve_side(args: argparse.Namespace) -> int:
    """Child mode: load, then answer one JSON line per workflow read from stdin."""
    out = Path(args.out)
    if args.side == "comfyd":
        run = comfyd_side(Path(args.models), out)
    else:
        run = comfyui_side(Path(args.comfyui), Path(args.models), out)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            answer: dict[str, Any] = run(json.loads(line))
        except Exception as exc:  # reported to the parent, which stops
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    return 0


# --- the parent ------------------------------------------------------------------------------
class Side:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask(None)

    def ask(self, graph: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if graph is not None:
            self.proc.stdin.write(json.dumps(graph) + "\n")
            self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name}: the process exited ({self.proc.wait()})")
            if line.startswith("{"):  # anything else is the side's own chatter
                answer = json.loads(line)
                if "error" in answer:
                    raise RuntimeError(f"{self.name}: {answer['error']}")
                return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def prepare_checkpoint(args: argparse.Namespace) -> Path:
    sys.path.insert(0, str(BENCH))
    sys.path.insert(0, str(REPO))
    if args.tiny:
        from comfyd.models.tiny import write_random_checkpoint

        path = args.cache_dir / "parity" / "checkpoints" / "sd1-parity.safetensors"
        if not path.is_file():
            partial = path.with_suffix(".partial")
            partial.parent.mkdir(parents=True, exist_ok=True)
            write_random_checkpoint(partial, "sd1", "single", seed=0, size="parity")
            partial.replace(path)
        return path
    from gpu_throughput import full_checkpoint

    return full_checkpoint("sd1", args.cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, help="a ComfyUI checkout (required, except in --side mode)")
    parser.add_argument("--comfyui-python", default="/work/cvenv/bin/python")
    parser.add_argument("--comfyui-env", action="append", default=[], metavar="K=V",
                        help="an extra environment variable for the ComfyUI process")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each side")
    parser.add_argument("--tiny", action="store_true", help="the SD1 parity checkpoint instead of the full size")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "comfyd-bench")
    parser.add_argument("--side", choices=["comfyd", "comfyui"], help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        return serve_side(args)
    if args.comfyui is None or not (args.comfyui / "main.py").is_file():
        parser.error("--comfyui must name a ComfyUI checkout")
    checkpoint = prepare_checkpoint(args)
    models = checkpoint.parent.parent
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="comfyd-cpu-wall-") as tmp:
        work = Path(tmp)
        me = str(Path(__file__).resolve())
        ours_env = dict(os.environ, COMFYD_CONFIG=os.devnull, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        theirs_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        theirs_env.update(dict(item.split("=", 1) for item in args.comfyui_env))
        sides = [
            Side("comfyd", [sys.executable, me, "--side", "comfyd", "--models", str(models), "--out",
                            str(work / "comfyd")], ours_env),
            Side("comfyui", [args.comfyui_python, me, "--side", "comfyui", "--comfyui", str(args.comfyui),
                             "--models", str(models), "--out", str(work / "comfyui")], theirs_env),
        ]
        timings: dict[str, list[dict[str, float]]] = {s.name: [] for s in sides}
        try:
            for side in sides:  # untimed: first-call costs, model load, text encodings
                side.ask(workflow(checkpoint.name, args.size, args.steps, seed=0))
            for i in range(args.repeats):
                for side in sides if i % 2 == 0 else sides[::-1]:
                    answer = side.ask(workflow(checkpoint.name, args.size, args.steps, seed=i + 1))
                    timings[side.name].append(answer)
                    print(f"[{i + 1}/{args.repeats}] {side.name:8s} KSampler {answer['ksampler_s']:.2f} s, "
                          f"run {answer['run_s']:.2f} s", flush=True)
        finally:
            for side in sides:
                side.close()
    loads.append(os.getloadavg()[0])
    print(f"model {checkpoint.name}, {args.size}x{args.size}, euler {args.steps} steps, cfg 8; "
          f"{os.cpu_count()} CPUs, load average {loads[0]:.2f} before, {loads[1]:.2f} after; "
          f"ComfyUI env: {' '.join(args.comfyui_env) or 'as inherited'}")
    medians = {name: statistics.median(t["ksampler_s"] for t in runs) for name, runs in timings.items()}
    for name, runs in timings.items():
        print(f"RESULT {name}_ksampler_s={medians[name]:.4f}")
        print(f"RESULT {name}_run_s={statistics.median(t['run_s'] for t in runs):.4f}")
    print(f"RESULT cpu_wall_ratio={medians['comfyd'] / medians['comfyui']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
