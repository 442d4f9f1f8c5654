"""Sampler throughput on a GPU: comfyd vs a plain diffusers pipeline on the very same weights.

    python bench/gpu_throughput.py [--family sd1|sdxl] [--steps 20] [--size 512] [--compile]
    python bench/gpu_throughput.py --tiny [--family sdxl] [--dtype fp16]   # CPU, tiny model (tests)

Full size: a random-weight checkpoint with the real shapes, generated once into
~/.cache/comfyd-bench/full/checkpoints/ (the SD1.5 file is the one bench/model_load.py writes),
fp16 on CUDA, euler + normal, 512x512, cfg 8, the prompt of a real job. Random weights cost what
real ones cost: the shapes and dtypes decide the work.

The diffusers pipeline (StableDiffusionPipeline / StableDiffusionXLPipeline) is built from the
modules comfyd's model manager loaded (same UNet, VAE, text encoders and tokenizers), with
EulerDiscreteScheduler from the scheduler config comfyd ships, so only the two sampling loops and
their overhead differ. Speed options sit on the shared UNet, so both sides get them equally:
PyTorch SDPA attention (diffusers' default processor, printed), channels_last on CUDA, and with
--compile one `torch.compile` of the UNet (comfyd's `torch_compile` setting is passed too).

comfyd keeps the VAE in bf16 (fp32 where the GPU lacks bf16), never fp16; diffusers' pipelines
would feed it fp16 latents, so the diffusers side asks for latents and decodes them with the
shared VAE itself (in the VAE's dtype), as diffusers documents for `output_type="latent"`.

Each run starts cold at the node level (comfyd's node-output cache is cleared, so the prompts are
encoded again, as the pipeline does); models stay loaded on both sides. Runs alternate after one
warm-up each. Sampler it/s = (steps - 1) / time between the first and the last step callback
(comfyd: the KSampler's progress events; diffusers: callback_on_step_end), after a device
synchronize at each. End to end = the whole call: comfyd's parse, validate, encode, sample,
decode and PNG preview; diffusers' encode, sample, decode and PIL image.

Last line: `RESULT gpu_its_ratio=<comfyd median it/s / diffusers median it/s>` (target >= 1.0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("COMFYD_CONFIG", os.devnull)  # a local comfyd.toml must not change the setup

import torch  # noqa: E402

PROMPT = "a photograph of a red fox in the snow, golden hour, sharp focus"
NEGATIVE = "blurry, watermark"
CFG = 8.0
SAMPLER_NODE = "3"  # the KSampler of comfyd's default workflow
# The full-size checkpoints; the SD1.5 name is the file bench/model_load.py caches.
FULL_CHECKPOINTS = {"sd1": "sd15-random-fp16.safetensors", "sdxl": "sdxl-random-fp16.safetensors"}


@dataclass(frozen=True)
class Timing:
    its: float  # sampler steps per second
    seconds: float  # the whole call


def full_checkpoint(family: str, cache_dir: Path) -> Path:
    """The cached full-size random checkpoint of `family`, written on first use."""
    from comfyd.models.tiny import write_random_checkpoint

    path = cache_dir / "full" / "checkpoints" / FULL_CHECKPOINTS[family]
    if not path.is_file():
        print(f"writing a full-size random {family} checkpoint to {path} (once) ...", flush=True)
        started = time.perf_counter()
        partial = path.with_suffix(".partial")  # an interrupted write never looks finished
        write_random_checkpoint(partial, family, "single", seed=0, size="full")
        partial.replace(path)
        print(
            f"  done in {time.perf_counter() - started:.0f}s, {path.stat().st_size / 1e9:.2f} GB", flush=True
        )
    return path


def comfyd_workflow(ckpt_name: str, size: int, steps: int, seed: int, batch: int = 1) -> dict[str, Any]:
    """comfyd's default text-to-image graph, sized for the benchmark, previewing instead of saving."""
    from comfyd.runner import default_workflow

    workflow = default_workflow(PROMPT)
    workflow["4"]["inputs"]["ckpt_name"] = ckpt_name
    workflow["7"]["inputs"]["text"] = NEGATIVE
    workflow["5"]["inputs"].update(width=size, height=size, batch_size=batch)
    workflow[SAMPLER_NODE]["inputs"].update(
        seed=seed, steps=steps, cfg=CFG, sampler_name="euler", scheduler="normal", denoise=1.0
    )
    workflow["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    return workflow


def steps_per_second(stamps: list[float]) -> float:
    """Steps per second between the first and the last step's timestamp."""
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits for queued GPU work, so that a timestamp means the step is done."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def apply_speed_options(unet: torch.nn.Module, device: torch.device, compile_unet: bool) -> list[str]:
    """channels_last (CUDA) and torch.compile on the shared UNet; returns what is in effect."""
    attention = sorted({type(p).__name__ for p in unet.attn_processors.values()})
    options = [f"attention {'/'.join(attention)}"]
    if device.type == "cuda":
        unet.to(memory_format=torch.channels_last)
        options.append("channels_last")
    if compile_unet:
        # nn.Module.compile() compiles the module in place: comfyd's sampler and the pipeline
        # both call it. Skipped if comfyd already compiled it from its torch_compile setting.
        already = getattr(unet, "_compiled_call_impl", None) is not None or hasattr(unet, "_orig_mod")
        if not already:
            unet.compile()
        options.append("torch.compile")
    return options


def diffusers_pipeline(handles: tuple[Any, Any, Any], family: str) -> Any:
    """A diffusers pipeline around the modules comfyd loaded, with the shipped Euler scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from comfyd.models.detect import shipped_config

    model, clip, vae = handles
    scheduler = EulerDiscreteScheduler.from_config(shipped_config(family, "scheduler.json"))
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae.vae,
            text_encoder=clip.text_encoders["l"],
            text_encoder_2=clip.text_encoders["g"],
            tokenizer=clip.tokenizers["l"],
            tokenizer_2=clip.tokenizers["g"],
            unet=model.unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae.vae,
            text_encoder=clip.text_encoders["l"],
            tokenizer=clip.tokenizers["l"],
            unet=model.unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ComfydSide:
    """One text-to-image job through comfyd's LocalRunner."""

    def __init__(
        self, runner: Any, ckpt_name: str, size: int, steps: int, sync: Callable[[], None], batch: int = 1
    ) -> None:
        self.runner, self.ckpt_name, self.size, self.steps, self.sync = runner, ckpt_name, size, steps, sync
        self.batch = batch

    def run(self, seed: int) -> Timing:
        stamps: list[float] = []

        def listener(event: str, data: dict[str, Any]) -> None:
            if event == "progress" and data.get("node") == SAMPLER_NODE:
                self.sync()
                stamps.append(time.perf_counter())

        workflow = comfyd_workflow(self.ckpt_name, self.size, self.steps, seed, self.batch)
        self.runner.executor.cache.clear()  # every node runs again, as every pipeline stage does
        started = time.perf_counter()
        result = self.runner.run(workflow, listener=listener)
        self.sync()
        seconds = time.perf_counter() - started
        if not result.ok:
            raise RuntimeError(f"comfyd run failed: {result.error}")
        if len(stamps) != self.steps:
            raise RuntimeError(f"comfyd reported {len(stamps)} progress events for {self.steps} steps")
        return Timing(steps_per_second(stamps), seconds)


class DiffusersSide:
    """The same job through the diffusers pipeline."""

    def __init__(self, pipe: Any, size: int, steps: int, sync: Callable[[], None], batch: int = 1) -> None:
        self.pipe, self.size, self.steps, self.sync, self.batch = pipe, size, steps, sync, batch

    def run(self, seed: int) -> Timing:
        stamps: list[float] = []

        def on_step(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            self.sync()
            stamps.append(time.perf_counter())
            return kwargs

        vae = self.pipe.vae
        started = time.perf_counter()
        latents = self.pipe(
            PROMPT,
            negative_prompt=NEGATIVE,
            height=self.size,
            width=self.size,
            num_inference_steps=self.steps,
            guidance_scale=CFG,
            num_images_per_prompt=self.batch,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=on_step,
            output_type="latent",
        ).images
        with torch.inference_mode():
            decoded = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
        images = self.pipe.image_processor.postprocess(decoded, output_type="pil")
        self.sync()
        seconds = time.perf_counter() - started
        if len(images) != self.batch or len(stamps) != self.steps:
            raise RuntimeError(f"diffusers gave {len(images)} image(s) and {len(stamps)} step callbacks")
        return Timing(steps_per_second(stamps), seconds)


def summary(name: str, timings: list[Timing]) -> tuple[float, float]:
    its = statistics.median(t.its for t in timings)
    seconds = statistics.median(t.seconds for t in timings)
    runs = " ".join(f"{t.its:.2f}" for t in timings)
    print(f"{name:9s} sampler {its:9.3f} it/s   end to end {seconds:7.3f} s   (it/s per run: {runs})")
    return its, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=sorted(FULL_CHECKPOINTS), default="sd1")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on CPU (the test run)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (20; 4 with --tiny)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (512; 64 with --tiny)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side")
    parser.add_argument("--batch", type=int, default=1, help="images per job (batch_size / num_images_per_prompt)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "fp16", "bf16", "fp32"],
        default="auto",
        help="comfyd's dtype setting (auto: fp16 UNet and text encoders on CUDA)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the shared UNet")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "comfyd-bench")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="this checkpoint file instead (in a checkpoints/ folder; e.g. the one ComfyUI renders "
                             "in bench/gpu_check.py)")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU available; this benchmark measures GPU throughput. Run it on a machine "
            "with an NVIDIA GPU, or pass --tiny for the small CPU run the tests use.",
            file=sys.stderr,
        )
        return 2
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be at least 2 (it/s is measured between step callbacks)")
    if args.size is not None and (args.size < 64 or args.size % 8):
        parser.error("--size must be a multiple of 8, at least 64")
    steps = args.steps or (4 if args.tiny else 20)
    size = args.size or (64 if args.tiny else 512)
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        # Tiny tensors gain nothing from a second thread, and lose a lot to a busy neighbour.
        torch.set_num_threads(1)

    from comfyd.models.tiny import make_tiny_checkpoint
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    with tempfile.TemporaryDirectory(prefix="comfyd-gpu-bench-") as tmp:
        work = Path(tmp)
        if args.checkpoint is not None:
            checkpoint = args.checkpoint.resolve()
        elif args.tiny:
            checkpoint = make_tiny_checkpoint(work / "models" / "checkpoints", family=args.family, seed=0)
        else:
            checkpoint = full_checkpoint(args.family, args.cache_dir)
        settings = Settings(
            models_dir=checkpoint.parent.parent,
            output_dir=work / "output",
            temp_dir=work / "temp",
            input_dir=work / "input",
            device=str(device),
            dtype=args.dtype,
            torch_compile=args.compile,
        )
        runner = LocalRunner(settings)
        handles = runner.env.models.load_checkpoint(checkpoint.name)
        model, _, vae = handles
        options = apply_speed_options(model.unet, device, args.compile)
        sync = synchronizer(device)
        comfyd = ComfydSide(runner, checkpoint.name, size, steps, sync, args.batch)
        plain = DiffusersSide(diffusers_pipeline(handles, args.family), size, steps, sync, args.batch)

        comfyd.run(0), plain.run(0)  # warm-up: kernels, allocator, compilation
        ours: list[Timing] = []
        theirs: list[Timing] = []
        for i in range(args.repeats):
            ours.append(comfyd.run(i + 1))
            theirs.append(plain.run(i + 1))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}; {args.family}{' tiny' if args.tiny else ''}, {size}x{size} x{args.batch}, {steps} steps euler, "
        f"cfg {CFG}; unet {model.dtype}, vae {vae.dtype}; {', '.join(options)}"
    )
    our_its, our_seconds = summary("comfyd", ours)
    their_its, their_seconds = summary("diffusers", theirs)
    print(f"end-to-end ratio (comfyd/diffusers seconds): {our_seconds / their_seconds:.4f}")
    print(f"RESULT comfyd_its={our_its:.4f}")
    print(f"RESULT diffusers_its={their_its:.4f}")
    print(f"RESULT e2e_ratio={our_seconds / their_seconds:.4f}")
    if device.type == "cuda":
        print(f"RESULT peak_vram_gib={torch.cuda.max_memory_allocated(device) / 2**30:.3f}")
    print(f"RESULT gpu_its_ratio={our_its / their_its:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
