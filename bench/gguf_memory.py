"""Resident bytes and seconds per step of a GGUF Flux kept quantized vs dequantized at load.

    PYTHONPATH=. python bench/gguf_memory.py [--width 1536] [--layers 1,1] [--quants Q8_0,Q4_K]
                                             [--size 256] [--steps 3] [--device auto] [--dtype auto]

Writes a random Flux dev transformer cut in depth (`--layers` double,single blocks) at `--width`
(128-wide heads, Flux's own; 3072 is the real width) and a 4096-wide context (T5-XXL's), as
GGUF in each quant (tests/models/gguf_files.py), loads each file both ways (COMFYD_GGUF_
DEQUANTIZE_AT_LOAD off and on), and times `--steps` transformer calls on a `--size` square
latent with random conditioning. Prints, per quant:

    RESULT gguf_<quant>_resident_bytes=...        (kept quantized: blocks + plain tensors)
    RESULT gguf_<quant>_dequantized_bytes=...     (dequantized at load, in the compute dtype)
    RESULT gguf_<quant>_resident_ratio=...
    RESULT gguf_<quant>_s_per_step_quantized=...  RESULT gguf_<quant>_s_per_step_dequantized=...
    RESULT gguf_<quant>_max_abs_diff=...          (the two outputs; 0 when bit-identical)

and, with --check-exact, `RESULT gguf_dequant_exact_<type>=1|0` for every torch dequantizer on
the compute device against the gguf library's numpy one.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyd.models import standalone  # noqa: E402
from comfyd.models.devices import compute_plan  # noqa: E402
from comfyd.models.manager import module_bytes  # noqa: E402
from tests.models.gguf_files import write_gguf, write_wide_flux  # noqa: E402

CONTEXT = 4096  # T5-XXL's width
POOLED = 768  # CLIP-L's pooled width
TEXT_TOKENS = 256


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(network, size: int, device: torch.device, dtype: torch.dtype) -> tuple:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, size // 8, size // 8, generator=gen)
    context = torch.randn(1, TEXT_TOKENS, CONTEXT, generator=gen)
    added = {"pooled": torch.randn(1, POOLED, generator=gen).to(device, dtype),
             "guidance": torch.tensor([3.5], device=device, dtype=dtype)}  # fmt: skip
    return x.to(device, dtype), torch.tensor([0.7], device=device, dtype=dtype), context.to(device, dtype), added


def _run(path: Path, on_the_fly: bool, args, device: torch.device) -> tuple[int, float, torch.Tensor]:
    plan = compute_plan(args.device, args.dtype, gguf_on_the_fly=on_the_fly)
    _, network, _ = standalone.load_diffusion_model(path, plan, False, "default")
    resident = sum(module_bytes(network))
    x, t, context, added = _inputs(network, args.size, device, plan.unet_dtype)
    times = []
    with torch.inference_mode():
        out = network(x, t, context, added_cond_kwargs=added, return_dict=False)[0]  # warm-up
        for _ in range(args.steps):
            _sync(device)
            start = time.perf_counter()
            out = network(x, t, context, added_cond_kwargs=added, return_dict=False)[0]
            _sync(device)
            times.append(time.perf_counter() - start)
    del network
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return resident, float(np.median(times)), out.float().cpu()


def _check_exact(device: torch.device) -> None:
    import gguf

    from comfyd.models.gguf_dequant import BLOCKS, DEQUANTIZERS, dequantize

    rng = np.random.default_rng(0)
    for name in sorted(DEQUANTIZERS):
        qtype = getattr(gguf.GGMLQuantizationType, name)
        block, _ = BLOCKS[name]
        values = rng.standard_normal((64, 4 * max(block, 256))).astype(np.float32)
        if name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):  # no numpy quantizer: random bytes
            raw = rng.integers(0, 256, size=(64, values.shape[1] // block * BLOCKS[name][1]), dtype=np.uint8)
            with np.errstate(all="ignore"):
                ref = gguf.quants.dequantize(raw, qtype)
        else:
            raw = gguf.quants.quantize(values, qtype).view(np.uint8)
            ref = gguf.quants.dequantize(raw, qtype)
        got = dequantize(torch.from_numpy(raw.copy()).to(device), name, ref.shape).cpu()
        exact = torch.equal(got.view(torch.int32), torch.from_numpy(ref.copy()).view(torch.int32))
        print(f"RESULT gguf_dequant_exact_{name}={int(exact)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1536)
    parser.add_argument("--layers", default="1,1", help="double,single blocks")
    parser.add_argument("--quants", default="Q8_0,Q4_K")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--check-exact", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="folder for the files (default: temporary)")
    args = parser.parse_args(argv)
    device = compute_plan(args.device, args.dtype).device
    if args.check_exact:
        _check_exact(device)
    double, single = (int(v) for v in args.layers.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        source = write_wide_flux(work / "flux.safetensors", args.width, head_dim=128, layers=(double, single),
                                 context_dim=CONTEXT, pooled_dim=POOLED)  # fmt: skip
        print(f"# Flux cut to {double}+{single} blocks, {args.width} wide, on {device}; {args.size}px")
        for quant in args.quants.split(","):
            path = write_gguf(source, work / f"flux-{quant}.gguf", "flux", quant=quant)
            kept, kept_s, kept_out = _run(path, True, args, device)
            full, full_s, full_out = _run(path, False, args, device)
            print(f"RESULT gguf_{quant}_resident_bytes={kept}")
            print(f"RESULT gguf_{quant}_dequantized_bytes={full}")
            print(f"RESULT gguf_{quant}_resident_ratio={kept / full:.3f}")
            print(f"RESULT gguf_{quant}_s_per_step_quantized={kept_s:.4f}")
            print(f"RESULT gguf_{quant}_s_per_step_dequantized={full_s:.4f}")
            print(f"RESULT gguf_{quant}_max_abs_diff={float((kept_out - full_out).abs().max()):.3g}")
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
