"""Per-job cost of process isolation (COMFYD_ISOLATION=process) on the tiny SD1 model.

The same workflow (default graph, tiny checkpoint, small size, few steps, a new seed each run so
the sampler always runs) goes through the in-process executor and through an IsolatedExecutor
(one child that built the same runtime), alternating, after one warm run each. Prints medians and

    RESULT isolation_overhead_ms=<isolated - in-process, median per job>
    RESULT isolation_ratio=<isolated / in-process>
    RESULT isolation_child_start_s=<first job on a new child: start, imports, model load>
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from comfyd.engine.graph import parse_workflow
from comfyd.isolation import IsolatedExecutor
from comfyd.models.tiny import make_tiny_checkpoint
from comfyd.runner import default_workflow
from comfyd.runtime import build_runtime
from comfyd.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="comfyd-iso-"))
    make_tiny_checkpoint(root / "models" / "checkpoints", family="sd1", fmt="single", seed=0)
    settings = Settings(models_dir=root / "models", output_dir=root / "out", input_dir=root / "in",
                        temp_dir=root / "tmp", db_path=root / "db.sqlite", device="cpu")

    def request(seed: int):
        workflow = default_workflow("a lighthouse")
        workflow["4"]["inputs"]["ckpt_name"] = "comfyd-tiny-sd1.safetensors"
        workflow["5"]["inputs"].update(width=args.size, height=args.size)
        workflow["3"]["inputs"].update(seed=seed, steps=args.steps)
        return parse_workflow({"prompt": workflow})

    local = build_runtime(settings).executor
    isolated = IsolatedExecutor(settings)
    started = time.perf_counter()
    assert isolated.execute(request(0), "warm-iso").status == "success"
    child_start = time.perf_counter() - started
    assert local.execute(request(0), "warm-local").status == "success"
    times: dict[str, list[float]] = {"local": [], "isolated": []}
    try:
        for run in range(args.runs):
            for name, executor in (("local", local), ("isolated", isolated))[:: 1 if run % 2 else -1]:
                t0 = time.perf_counter()
                result = executor.execute(request(run + 1), f"{name}-{run}")
                times[name].append(time.perf_counter() - t0)
                assert result.status == "success", result.error
    finally:
        isolated.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median per job: in-process {med['local'] * 1000:.1f} ms, isolated {med['isolated'] * 1000:.1f} ms")
    print(f"RESULT isolation_overhead_ms={(med['isolated'] - med['local']) * 1000:.1f}")
    print(f"RESULT isolation_ratio={med['isolated'] / med['local']:.3f}")
    print(f"RESULT isolation_child_start_s={child_start:.2f}")


if __name__ == "__main__":
    main()
