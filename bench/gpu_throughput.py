"""Sampler throughput on a GPU: comfyd vs a plain diffusers pipeline on the same weights.

    python bench/gpu_throughput.py [--family sd1|sdxl] [--steps 20] [--size 512] [--compile]
    python bench/gpu_throughput.py --tiny        # CPU, tiny model: what the tests run

Full size: a random-weight checkpoint with the real shapes (generated once into
~/.cache/comfyd-bench/), fp16 on CUDA, euler + normal, 512x512 (1024 for SDXL), cfg 8. The
diffusers pipeline is built from the very modules comfyd loaded (same UNet, VAE, text
encoders), with EulerDiscreteScheduler from the shipped scheduler config, so only the sampling
loops and their overhead differ. Both use PyTorch SDPA attention and channels_last; with
--compile, both UNets are the same `torch.compile`d module. Runs alternate. Sampler it/s is
measured between the first and the last step callback of each side.

Ends with `RESULT gpu_its_ratio=<comfyd it/s / diffusers it/s>` (target >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from comfyd.runner import LocalRunner
from comfyd.settings import Settings

PROMPT, NEGATIVE = "a photograph of a fox in the snow", "blurry"


def checkpoint(family: str, tiny: bool, cache: Path) -> Path:
    from comfyd.models.tiny import make_tiny_checkpoint, write_random_checkpoint

    if tiny:
        return make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "checkpoints", family=family, fmt="single", seed=0)
    path = cache / "full" / "checkpoints" / f"{family}-random-fp16.safetensors"
    if family == "sd1" and (cache / "full" / "checkpoints" / "sd15-random-fp16.safetensors").is_file():
        return cache / "full" / "checkpoints" / "sd15-random-fp16.safetensors"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing a full-size random {family} checkpoint to {path} (once)", file=sys.stderr)
        write_random_checkpoint(path, family, "single", seed=0, size="full")
    return path


def workflow(ckpt: str, family: str, size: int, steps: int, seed: int) -> dict:
    text = resources.files("comfyd.workflows").joinpath("default_api.json").read_text()
    wf = json.loads(text)
    wf["4"]["inputs"]["ckpt_name"] = ckpt
    wf["6"]["inputs"]["text"], wf["7"]["inputs"]["text"] = PROMPT, NEGATIVE
    wf["5"]["inputs"].update(width=size, height=size)
    wf["3"]["inputs"].update(seed=seed, steps=steps, cfg=8.0, sampler_name="euler", scheduler="normal")
    wf["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return wf


def steps_per_second(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


def build_pipeline(handles, family: str):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    model, clip, vae = handles
    config = json.loads(resources.files("comfyd.models.configs").joinpath(family).joinpath("scheduler.json").read_text())
    scheduler = EulerDiscreteScheduler.from_config(config)
    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae.vae, text_encoder=clip.text_encoders["l"], text_encoder_2=clip.text_encoders["g"],
            tokenizer=clip.tokenizers["l"], tokenizer_2=clip.tokenizers["g"], unet=model.unet, scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae.vae, text_encoder=clip.text_encoders["l"], tokenizer=clip.tokenizers["l"], unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (tests)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (both sides)")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "comfyd-bench")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        print("error: no CUDA GPU here; run on a GPU host, or pass --tiny for the CPU smoke run", file=sys.stderr)
        return 2
    steps = args.steps or (4 if args.tiny else 20)
    size = args.size or (64 if args.tiny else (1024 if args.family == "sdxl" else 512))
    device = "cpu" if args.tiny else "cuda"

    path = checkpoint(args.family, args.tiny, args.cache_dir)
    work = Path(tempfile.mkdtemp(prefix="comfyd-gpu-bench-"))
    settings = Settings(models_dir=path.parent.parent, output_dir=work / "out", temp_dir=work / "temp",
                        input_dir=work / "in", device=device, torch_compile=args.compile)
    runner = LocalRunner(settings)
    handles = runner.env.models.load_checkpoint(path.name)
    model = handles[0]
    if device == "cuda":
        model.unet.to(memory_format=torch.channels_last)
        if args.compile:
            model.unet.forward = torch.compile(model.unet.forward)
    pipe = build_pipeline(handles, args.family)
    pipe.set_progress_bar_config(disable=True)

    def run_comfyd(seed: int) -> tuple[float, float]:
        stamps: list[float] = []

        def listener(event: str, data: dict) -> None:
            if event == "progress" and data.get("node") == "3":
                if device == "cuda":
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

        runner.executor.cache.clear()  # every node runs, as in the diffusers pipeline
        t0 = time.perf_counter()
        result = runner.run(workflow(path.name, args.family, size, steps, seed), listener=listener)
        assert result.ok, result.error
        return steps_per_second(stamps), time.perf_counter() - t0

    def run_diffusers(seed: int) -> tuple[float, float]:
        stamps: list[float] = []

        def on_step(pipeline, step, timestep, kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
            return kwargs

        generator = torch.Generator("cpu").manual_seed(seed)
        t0 = time.perf_counter()
        pipe(PROMPT, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
             guidance_scale=8.0, generator=generator, callback_on_step_end=on_step, output_type="pil")
        return steps_per_second(stamps), time.perf_counter() - t0

    run_comfyd(0), run_diffusers(0)  # warm-up (kernels, allocator, compile)
    ours, theirs = [], []
    for i in range(args.repeats):
        ours.append(run_comfyd(i + 1))
        theirs.append(run_diffusers(i + 1))
    med = statistics.median
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device {name}, {args.family}{' tiny' if args.tiny else ''}, {size}x{size}, {steps} steps euler")
    print(f"comfyd    sampler {med(r[0] for r in ours):8.3f} it/s   end to end {med(r[1] for r in ours):.3f} s")
    print(f"diffusers sampler {med(r[0] for r in theirs):8.3f} it/s   end to end {med(r[1] for r in theirs):.3f} s")
    print(f"RESULT gpu_its_ratio={med(r[0] for r in ours) / med(r[0] for r in theirs):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
