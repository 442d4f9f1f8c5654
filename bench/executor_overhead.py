"""Executor overhead: comfyd's default workflow vs the same computation as a plain torch loop.

Both sides use the same loaded modules (the tiny SD1 model unless --models-dir names a real
one), the same prompt, seed, schedule (euler + normal) and PNG encoding; runs alternate so that
drift hits both equally. Prints per-run medians and ends with

    RESULT overhead_ratio=<comfyd/plain>          (target <= 1.02)
    RESULT cached_rerun_ratio=<seed-only rerun / first run>   (target <= 0.5)

The first-run figure is a cold run in a fresh runner (checkpoint load, text encoding,
sampling, decode, save); the rerun changes only the seed.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from comfyd.runner import LocalRunner, apply_sets, default_workflow
from comfyd.settings import Settings

PROMPT = "cyberpunk city"
NEGATIVE = "text, watermark"


def plain_loop(handles, seed: int, steps: int, cfg: float, width: int, height: int) -> bytes:
    """The default workflow written directly against the modules: encode, euler, decode, PNG."""
    model, clip, vae = handles
    tokenizer, encoder = clip.tokenizers["l"], clip.text_encoders["l"]
    with torch.inference_mode():
        ids = tokenizer([NEGATIVE, PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = encoder(ids.to(clip.device)).last_hidden_state.float()

        # ComfyUI's discrete sigma table and normal schedule (linspace of timesteps).
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        table = ((1 - alphas) / alphas).sqrt().float()
        log_table = table.log()
        ts = torch.linspace(999, 0, steps)
        low, high = ts.floor().long(), ts.ceil().long()
        w = ts.frac()
        sigmas = torch.cat([((1 - w) * log_table[low] + w * log_table[high]).exp(), torch.zeros(1)])

        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn((1, 4, height // 8, width // 8), generator=generator)
        x = (noise * (1 + sigmas[0] ** 2).sqrt()).to(model.device, model.dtype)
        unet = model.unet
        for i in range(steps):
            sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
            t = (log_table - np.log(sigma)).abs().argmin().item()
            x_in = torch.cat([x, x]) / (sigma**2 + 1) ** 0.5
            eps = unet(x_in, torch.tensor([t, t], device=model.device), encoder_hidden_states=context.to(model.dtype)).sample
            denoised = x - eps.float() * sigma
            uncond, cond = denoised.chunk(2)
            denoised = uncond + (cond - uncond) * cfg
            x = x + (x - denoised) / sigma * (sigma_next - sigma)
        latent = x / model.latent_scale
        image = vae.vae.decode(latent.to(vae.device, vae.dtype)).sample
        image = ((image.float() + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.clip(255.0 * image, 0, 255).astype(np.uint8)).save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, help="ComfyUI models folder (default: tiny model in a temp dir)")
    parser.add_argument("--ckpt", default=None, help="checkpoint name in models/checkpoints")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="comfyd-bench-"))
    models_dir = args.models_dir or work / "models"
    ckpt = args.ckpt
    if ckpt is None:
        from comfyd.models.tiny import make_tiny_checkpoint

        ckpt = make_tiny_checkpoint(models_dir / "checkpoints", family="sd1", fmt="single", seed=0).name
    settings = Settings(models_dir=models_dir, output_dir=work / "out", temp_dir=work / "temp", input_dir=work / "in")

    def workflow(seed: int) -> dict:
        wf = default_workflow(PROMPT)
        wf["7"]["inputs"]["text"] = NEGATIVE
        wf["4"]["inputs"]["ckpt_name"] = ckpt
        return apply_sets(wf, [f"3.seed={seed}", f"3.steps={args.steps}", "3.cfg=8.0",
                               f"5.width={args.size}", f"5.height={args.size}"])

    # Cold first run vs seed-only rerun, each in a fresh process-level runner.
    first, rerun = [], []
    for i in range(max(3, args.repeats // 2)):
        runner = LocalRunner(settings)
        runner.env.models.free()
        t0 = time.perf_counter()
        assert runner.run(workflow(1000 + i)).ok
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert runner.run(workflow(2000 + i)).ok
        rerun.append(time.perf_counter() - t0)

    # Overhead: warm models on both sides; comfyd's node cache sees a new seed every run, so the
    # sampler, decoder and saver execute (what a service does per request).
    runner = LocalRunner(settings)
    handles = runner.env.models.load_checkpoint(ckpt)
    runner.run(workflow(1))
    plain_loop(handles, 1, args.steps, 8.0, args.size, args.size)
    comfyd_times, plain_times = [], []
    for i in range(args.repeats):
        seed = 3000 + i
        t0 = time.perf_counter()
        assert runner.run(workflow(seed)).ok
        comfyd_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain_loop(handles, seed, args.steps, 8.0, args.size, args.size)
        plain_times.append(time.perf_counter() - t0)

    med = statistics.median
    print(f"first run (cold)      median {med(first):.3f} s   runs {[round(t, 3) for t in first]}")
    print(f"seed-only rerun       median {med(rerun):.3f} s   runs {[round(t, 3) for t in rerun]}")
    print(f"comfyd warm run       median {med(comfyd_times):.3f} s   runs {[round(t, 3) for t in comfyd_times]}")
    print(f"plain torch loop      median {med(plain_times):.3f} s   runs {[round(t, 3) for t in plain_times]}")
    print(f"RESULT overhead_ratio={med(comfyd_times) / med(plain_times):.4f}")
    print(f"RESULT cached_rerun_ratio={med(rerun) / med(first):.4f}")


if __name__ == "__main__":
    main()
