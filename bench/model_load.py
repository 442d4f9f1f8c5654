"""Checkpoint load time: comfyd's loader vs diffusers' own single-file loader, same file.

    python bench/model_load.py [--repeats 3] [--tiny] [--cache-dir DIR] [--device cpu|cuda]

The file is a full-size random-weight SD1.5 checkpoint in the original single-file layout (fp16,
the real shapes: 1.07 B parameters, 2.1 GB), generated once into ~/.cache/comfyd-bench/. Both
loaders run fully offline (HF_HUB_OFFLINE=1): comfyd with its shipped configs, diffusers'
`StableDiffusionPipeline.from_single_file(path, config=<local folder>, local_files_only=True)`
with a config folder written from the same shipped configs. Both produce the UNet, VAE, CLIP
text encoder and tokenizer in the device's compute dtype (fp32 on CPU, fp16 on CUDA); the script
checks that their weights are identical before timing.

Timing: "load time to first usable model" = from the call until the modules are ready to run,
in this process, alternating which loader goes first, `--repeats` times each; the file is read
once before timing so both see it in the page cache. Peak RSS is measured in a fresh
subprocess per loader (the in-process figure would include the other loader's leftovers).

Last line: `RESULT load_ratio=<comfyd median / diffusers median>` (target <= 1.0).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("COMFYD_CONFIG", os.devnull)

import torch  # noqa: E402

CHECKPOINT_NAME = "sd15-random-fp16.safetensors"


def prepare(cache_dir: Path, tiny: bool) -> tuple[Path, Path]:
    """(checkpoint path, diffusers config folder), written on first use."""
    from comfyd.models.diffusers_layout import write_diffusers_folder
    from comfyd.models.tiny import full_configs, tiny_configs, write_random_checkpoint

    size = "tiny" if tiny else "full"
    root = cache_dir / size
    checkpoint = root / "checkpoints" / CHECKPOINT_NAME
    config_dir = root / "diffusers-config-sd1"
    if not checkpoint.is_file():
        print(f"writing a {size} random SD1.5 checkpoint to {checkpoint} (once) ...", flush=True)
        started = time.perf_counter()
        partial = checkpoint.with_suffix(".partial")
        write_random_checkpoint(partial, "sd1", "single", seed=0, size=size)
        partial.replace(checkpoint)
        print(
            f"  done in {time.perf_counter() - started:.1f}s, {checkpoint.stat().st_size / 1e9:.2f} GB",
            flush=True,
        )
    if not (config_dir / "model_index.json").is_file():
        configs = tiny_configs("sd1") if tiny else full_configs("sd1")
        write_diffusers_folder(config_dir, "sd1", configs.unet, configs.vae, configs.encoders, "eps")
    return checkpoint, config_dir


def compute_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_comfyd(checkpoint: Path, device: str) -> dict[str, torch.nn.Module]:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=checkpoint.parent.parent, device=device))
    model, clip, vae = manager.load_checkpoint(checkpoint.name)
    _synchronize(device)
    return {"unet": model.unet, "vae": vae.vae, "text_encoder": clip.text_encoders["l"]}


def load_diffusers(checkpoint: Path, config_dir: Path, device: str) -> dict[str, torch.nn.Module]:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()

    pipe = StableDiffusionPipeline.from_single_file(
        str(checkpoint), config=str(config_dir), local_files_only=True, torch_dtype=compute_dtype(device)
    )
    pipe.to(device)
    _synchronize(device)
    return {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _read_through(path: Path) -> None:
    """Read the file once so that every timed load finds it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(64 * 1024 * 1024):
            pass


def check_identical(a: dict[str, torch.nn.Module], b: dict[str, torch.nn.Module]) -> list[str]:
    """Names of tensors that differ (the comparison must be like with like), ignoring dtype policy."""
    differing = []
    for part in a:
        state_a, state_b = a[part].state_dict(), b[part].state_dict()
        for key, value in state_a.items():
            other = state_b.get(key)
            if (
                other is None
                or other.shape != value.shape
                or not torch.equal(value.float().cpu(), other.float().cpu())
            ):
                differing.append(f"{part}.{key}")
    return differing


def child(which: str, checkpoint: Path, config_dir: Path, device: str) -> None:
    """One load in a fresh process; prints a JSON line with its time and peak RSS."""
    # Imports are not part of the load time on either side.
    from diffusers import StableDiffusionPipeline  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    from comfyd.models.manager import ModelManager  # noqa: F401
    from comfyd.settings import Settings  # noqa: F401

    started = time.perf_counter()
    if which == "comfyd":
        load_comfyd(checkpoint, device)
    else:
        load_diffusers(checkpoint, config_dir, device)
    seconds = time.perf_counter() - started
    print(json.dumps({"which": which, "seconds": seconds, "peak_rss_bytes": peak_rss_bytes()}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux's VmHWM starts afresh at exec; getrusage's ru_maxrss would carry over the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_rss(which: str, checkpoint: Path, config_dir: Path, device: str) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--checkpoint",
        str(checkpoint),
        "--config-dir",
        str(config_dir),
        "--device",
        device,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ.copy()).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tiny SD1 checkpoint (seconds; for tests)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "comfyd-bench")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-rss", action="store_true", help="skip the subprocess peak-RSS measurement")
    parser.add_argument("--child", choices=["comfyd", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child(args.child, args.checkpoint, args.config_dir, args.device)
        return 0

    checkpoint, config_dir = prepare(args.cache_dir, args.tiny)
    _read_through(checkpoint)
    print(
        f"checkpoint: {checkpoint} ({checkpoint.stat().st_size / 1e9:.2f} GB), device {args.device}, "
        f"torch threads {torch.get_num_threads()}",
        flush=True,
    )

    # Warm-up: imports and one load of each, and the like-with-like check.
    reference = load_comfyd(checkpoint, args.device)
    baseline = load_diffusers(checkpoint, config_dir, args.device)
    differing = check_identical(reference, baseline)
    if differing:
        print(f"loaders disagree on {len(differing)} tensors, e.g. {differing[:3]}", file=sys.stderr)
        return 1
    print("weights identical between the two loaders", flush=True)
    del reference, baseline
    gc.collect()

    loaders = {
        "comfyd": lambda: load_comfyd(checkpoint, args.device),
        "diffusers": lambda: load_diffusers(checkpoint, config_dir, args.device),
    }
    times: dict[str, list[float]] = {"comfyd": [], "diffusers": []}
    for repeat in range(args.repeats):
        order = ["comfyd", "diffusers"] if repeat % 2 == 0 else ["diffusers", "comfyd"]
        for which in order:
            started = time.perf_counter()
            modules = loaders[which]()
            times[which].append(time.perf_counter() - started)
            del modules
            gc.collect()
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        print(
            f"repeat {repeat + 1}: comfyd {times['comfyd'][-1]:.3f}s  diffusers {times['diffusers'][-1]:.3f}s",
            flush=True,
        )

    medians = {which: statistics.median(values) for which, values in times.items()}
    for which in ("comfyd", "diffusers"):
        print(
            f"{which:9s} median {medians[which]:.3f}s  (runs: {', '.join(f'{t:.3f}' for t in times[which])})"
        )
    if not args.no_rss:
        for which in ("comfyd", "diffusers"):
            result = measure_rss(which, checkpoint, config_dir, args.device)
            print(
                f"{which:9s} fresh process: load {result['seconds']:.3f}s, "
                f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB"
            )
    print(f"RESULT load_ratio={medians['comfyd'] / medians['diffusers']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
