"""CPU threads: KSampler time of the default workflow (tiny SD1) under several thread set-ups.

Each configuration runs in a fresh process (thread settings only take effect before torch's
first parallel region), configurations alternate, and the median per configuration is printed:

    RESULT ksampler_s_<config>=<median seconds>

Configurations:
- `torch_default_seq`: torch's own threads and OpenMP's default wait policy, sequential mode
  (what comfyd did before)
- `torch_default_par`: the same in parallel mode (nodes on pool threads)
- `comfyd_auto_seq` / `comfyd_auto_par`: comfyd's defaults now (passive OpenMP waiting,
  automatic `cpu_threads`)
- `one_thread_seq`: OMP_NUM_THREADS=1
- `passive_wait_seq` / `active_wait_seq`: torch's threads with OMP_WAIT_POLICY set either way

    python bench/cpu_threads.py [--size 128] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The environment before comfyd is imported here (importing it sets OMP_WAIT_POLICY).
BASE_ENV = dict(os.environ)

CONFIGS: dict[str, tuple[dict[str, str], str]] = {
    # name -> (environment, execution mode); COMFYD_CPU_THREADS=-1 is this script's "leave torch alone".
    "torch_default_seq": ({"COMFYD_BENCH_TORCH_DEFAULT": "1"}, "sequential"),
    "torch_default_par": ({"COMFYD_BENCH_TORCH_DEFAULT": "1"}, "parallel"),
    "comfyd_auto_seq": ({}, "sequential"),
    "comfyd_auto_par": ({}, "parallel"),
    "one_thread_seq": ({"OMP_NUM_THREADS": "1", "COMFYD_CPU_THREADS": "1"}, "sequential"),
    "passive_wait_seq": ({"COMFYD_BENCH_TORCH_DEFAULT": "1", "OMP_WAIT_POLICY": "PASSIVE"}, "sequential"),
    "active_wait_seq": ({"COMFYD_BENCH_TORCH_DEFAULT": "1", "OMP_WAIT_POLICY": "ACTIVE"}, "sequential"),
}

CHILD = """
import json, os, sys
if os.environ.get("COMFYD_BENCH_TORCH_DEFAULT"):
    import torch  # loaded before comfyd: libgomp keeps its default (spinning) wait policy
from comfyd.runner import LocalRunner, apply_sets, default_workflow
from comfyd.settings import Settings
models, out, size, steps, mode = sys.argv[1:6]
if os.environ.get("COMFYD_BENCH_TORCH_DEFAULT"):
    import comfyd.models.threads as threads
    threads.configure_cpu_threads = lambda *a, **k: None  # the behaviour before automatic threads
runner = LocalRunner(Settings(models_dir=models, output_dir=out, device="cpu"))
wf = apply_sets(default_workflow(), [f"5.width={size}", f"5.height={size}", f"3.steps={steps}"])
wf["4"]["inputs"]["ckpt_name"] = sys.argv[6]
result = runner.run(wf, execution_mode=mode)
import torch
print(json.dumps({"ksampler": result.node_timings["3"], "threads": torch.get_num_threads(), "ok": result.ok}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args()
    from comfyd.models.tiny import make_tiny_checkpoint

    names = args.configs.split(",")
    times: dict[str, list[float]] = {n: [] for n in names}
    threads: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        made = make_tiny_checkpoint(Path(tmp) / "models" / "checkpoints", family="sd1", fmt="single", seed=0)
        for _ in range(args.repeats):
            for name in names:
                extra, mode = CONFIGS[name]
                env = {**BASE_ENV, **extra}
                if "COMFYD_BENCH_TORCH_DEFAULT" in extra:
                    env.pop("OMP_WAIT_POLICY", None)
                proc = subprocess.run(
                    [sys.executable, "-c", CHILD, str(Path(tmp) / "models"), str(Path(tmp) / "out"),
                     str(args.size), str(args.steps), mode, made.name],
                    capture_output=True, text=True, env=env, check=True,
                )
                data = json.loads(proc.stdout.strip().splitlines()[-1])
                assert data["ok"]
                times[name].append(data["ksampler"])
                threads[name] = data["threads"]
                print(f"{name}: {data['ksampler']:.3f} s ({data['threads']} threads)", flush=True)
    print(f"cpus: {os.cpu_count()}, size {args.size}, steps {args.steps}")
    for name in names:
        print(f"RESULT ksampler_s_{name}={statistics.median(times[name]):.3f}")
        print(f"RESULT threads_{name}={threads[name]}")


if __name__ == "__main__":
    main()
