"""Cross-request batching: N sampling jobs one by one against the same N jobs at once, batched.

    python bench/batching.py                       # tiny random SD1 model, 64x64, CPU
    python bench/batching.py --models DIR          # the parity-size model that
                                                   # `python tests/fidelity/make_cases.py --models DIR` writes
    python bench/batching.py --jobs 4 --steps 8 --size 64 --repeats 3 [--device cuda]

Each job has its own prompt, seed and sampler (euler / euler_ancestral alternately, cfg 7), as
queued requests would. What is timed is the sampler (KSampler's common_ksampler: noise, CFG, all
UNet calls), the part batching changes; text encoding and VAE run per job either way. The modes
run alternately, `--repeats` times each, and the best time of each counts:

- sequential: one job after another, the network alone (batching off), all CPU threads;
- concurrent: N threads at once, batching off, each with its share of the CPU threads (what
  COMFYD_CPU_THREADS=0 gives N concurrent jobs);
- batched: N threads at once through the step batcher (max N jobs per call), all CPU threads
  (one network call computes at a time).

Prints:
    RESULT batch_throughput_ratio=<sequential time / batched time>
    RESULT batch_concurrent_ratio=<sequential time / concurrent time>   (batching off)
    RESULT batch_bit_identical=<true|false>   (every batched job's latent torch.equal to alone,
                                               alone computed with the batched mode's threads)
    RESULT batch_rows_per_call=<mean jobs per network call in the batched mode>
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from comfyd.models.manager import ModelManager  # noqa: E402
from comfyd.models.text_encoding import encode_text  # noqa: E402
from comfyd.models.threads import usable_cpus  # noqa: E402
from comfyd.sampling.ksampler import common_ksampler  # noqa: E402
from comfyd.sampling.step_batcher import StepBatcher  # noqa: E402
from comfyd.settings import Settings  # noqa: E402

PARITY = "comfyd-parity-sd1.safetensors"
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk", "a bowl of ramen", "an old sailing ship",
           "a cat on a windowsill", "a mountain lake", "a neon city street", "a field of sunflowers"]


def load(models: Path | None, device: str) -> tuple[Any, Any]:
    if models is None:
        from comfyd.models.tiny import make_tiny_checkpoint

        models = Path(tempfile.mkdtemp(prefix="comfyd-batching-"))
        atexit.register(shutil.rmtree, models, True)
        name = make_tiny_checkpoint(models / "checkpoints", "sd1", "single", seed=0).name
    else:
        name = PARITY
        if not (models / "checkpoints" / name).exists():
            sys.exit(f"{models}/checkpoints/{name} is missing: python tests/fidelity/make_cases.py --models {models}")
    manager = ModelManager(Settings(models_dir=models, device=device))
    model, clip, _vae = manager.load_checkpoint(name)
    return model, clip


def jobs_for(clip: Any, n: int, size: int) -> tuple[list[dict[str, Any]], Any]:
    negative = encode_text(clip, "blurry, low quality")
    jobs = []
    for i in range(n):
        jobs.append({"seed": 1000 + i, "sampler": "euler_ancestral" if i % 2 else "euler",
                     "positive": encode_text(clip, PROMPTS[i % len(PROMPTS)])})
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    return jobs, (negative, latent)


def sample(model: Any, job: dict[str, Any], shared: Any, steps: int, threads: int) -> torch.Tensor:
    torch.set_num_threads(threads)  # per thread: torch's OpenMP thread count is the caller's
    negative, latent = shared
    return common_ksampler(model, job["seed"], steps, 7.0, job["sampler"], "normal", job["positive"],
                           negative, latent)["samples"]  # fmt: skip


def at_once(model: Any, jobs: list[dict[str, Any]], shared: Any, steps: int, threads: int) -> list[torch.Tensor]:
    out: list[Any] = [None] * len(jobs)

    def body(i: int) -> None:
        out[i] = sample(model, jobs[i], shared, steps, threads)

    workers = [threading.Thread(target=body, args=(i,)) for i in range(len(jobs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if any(o is None for o in out):
        raise RuntimeError("a job failed (see its traceback above)")
    return out


def in_a_thread(fn: Any) -> Any:
    """Every mode computes in fresh threads (torch's OpenMP thread count is per thread)."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(fn()))
    worker.start()
    worker.join()
    if not out:
        raise RuntimeError("the run failed (see its traceback above)")
    return out[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, help="models folder holding the parity checkpoint")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batched-threads", type=int, default=0,
                        help="CPU threads of the batched mode (default: all; the server's automatic "
                             "COMFYD_CPU_THREADS gives each job its share instead)")
    args = parser.parse_args()

    model, clip = load(args.models, args.device)
    jobs, shared = jobs_for(clip, args.jobs, args.size)
    cpus = usable_cpus()
    share = max(1, cpus // args.jobs)
    batched_threads = args.batched_threads or cpus
    plain = dataclasses.replace(model, batcher=None)
    cuda = torch.device(model.device).type == "cuda"
    batcher = StepBatcher(args.jobs, window_s=1.0, exact=not cuda)
    batched = dataclasses.replace(model, batcher=batcher)

    def timed(fn: Any) -> tuple[float, Any]:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    times: dict[str, list[float]] = {"sequential": [], "concurrent": [], "batched": []}
    alone: list[torch.Tensor] = []
    together: list[torch.Tensor] = []
    in_a_thread(lambda: sample(plain, jobs[0], shared, 1, cpus))  # warm-up (allocator, kernels)
    for _ in range(args.repeats):
        t, alone = timed(lambda: in_a_thread(lambda: [sample(plain, job, shared, args.steps, cpus) for job in jobs]))
        times["sequential"].append(t)
        t, _ = timed(lambda: at_once(plain, jobs, shared, args.steps, share))
        times["concurrent"].append(t)
        t, together = timed(lambda: at_once(batched, jobs, shared, args.steps, batched_threads))
        times["batched"].append(t)
    if batched_threads != cpus:
        # The reference for exactness computes with the batched mode's thread count: on CPU the
        # thread count alone changes some kernels' summation order, batched or not.
        alone = in_a_thread(lambda: [sample(plain, job, shared, args.steps, batched_threads) for job in jobs])
    identical = all(torch.equal(a, b) for a, b in zip(alone, together, strict=True))
    best = {k: min(v) for k, v in times.items()}
    stats = batcher.stats
    model_name = "parity" if args.models else "tiny"
    print(f"model={model_name} device={model.device} jobs={args.jobs} steps={args.steps} size={args.size} "
          f"cpus={cpus} threads(seq/conc/batched)={cpus}/{share}/{batched_threads} torch={torch.__version__} "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    for name, values in times.items():
        print(f"{name:>10}: best {best[name]:.3f} s  (runs: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"RESULT batch_throughput_ratio={best['sequential'] / best['batched']:.3f}")
    print(f"RESULT batch_concurrent_ratio={best['sequential'] / best['concurrent']:.3f}")
    print(f"RESULT batch_bit_identical={'true' if identical else 'false'}")
    print(f"RESULT batch_rows_per_call={stats.member_calls / max(1, stats.network_calls):.2f}")


if __name__ == "__main__":
    main()
