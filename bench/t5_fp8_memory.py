"""Memory of a full-size T5-XXL text encoder stored in fp8 (`t5xxl_fp8_e4m3fn.safetensors`, random
weights in its layout), loaded by CLIPLoader's path: the encoder keeps its linear weights in fp8
(comfyd/models/text_encoder_fp8.py). Writes the 4.9 GB file once under --work, loads it on the
CPU and prints:

RESULT file_gb, RESULT resident_gb (the encoder's parameters), RESULT manager_gb (what the model
manager accounts; on a CPU as host bytes),
RESULT upcast_bf16_gb (the same encoder upcast to bf16 at load, computed from its parameters),
RESULT fp8_linear_share (parameters kept in fp8), RESULT load_anon_increase_gb (the load's own
anonymous memory), RESULT load_s; with --encode also RESULT encode_s and RESULT encode_peak_anon_gb
(a 256-token prompt, one block cast up at a time).

Needs ~6 GB free (~7 GB with --encode); run under the machine-wide lock:
`flock /work/wt/heavy.lock /work/main/.venv/bin/python bench/t5_fp8_memory.py --work /tmp/t5fp8`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flux_fp8_memory import GB, T5_XXL, MemorySampler, _layout, write_streamed  # noqa: E402

NAME = "t5xxl-fp8-random.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the 4.9 GB file (kept)")
    parser.add_argument("--encode", action="store_true", help="also encode a prompt (minutes on 2 cores)")
    args = parser.parse_args()

    from comfyd.models import t5_encoder
    from comfyd.models.manager import ModelManager, module_bytes
    from comfyd.settings import Settings

    path = args.work / "text_encoders" / NAME
    if not path.is_file():
        layout = _layout(t5_encoder.empty_encoder(T5_XXL))
        layout.pop("encoder.embed_tokens.weight", None)
        started = time.perf_counter()
        write_streamed(path, layout, torch.float8_e4m3fn, 0)
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"RESULT file_gb={path.stat().st_size / GB:.2f}")

    sampler = MemorySampler()
    base = MemorySampler.now()
    manager = ModelManager(Settings(models_dir=args.work, device="cpu", output_dir=args.work / "out",
                                    temp_dir=args.work / "temp", input_dir=args.work / "in"))  # fmt: skip
    sampler.enter("load")
    started = time.perf_counter()
    clip = manager.load_clip([NAME], "chroma")
    load_s = time.perf_counter() - started
    sampler.enter("loaded")
    (encoder,) = clip.text_encoders.values()
    resident = sum(module_bytes(encoder))
    params = list(encoder.parameters())
    fp8 = sum(p.numel() for p in params if p.dtype == torch.float8_e4m3fn)
    upcast_bf16 = sum(p.numel() for p in params) * 2
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params})
    stats = manager.stats()
    print(f"parameter dtypes: {dtypes}; compute dtype {stats['clip_dtype']}")
    print(f"RESULT resident_gb={resident / GB:.2f}")
    print(f"RESULT manager_gb={(stats['device_bytes'] + stats['host_bytes']) / GB:.2f}")
    print(f"RESULT upcast_bf16_gb={upcast_bf16 / GB:.2f}")
    print(f"RESULT fp8_linear_share={fp8 / sum(p.numel() for p in params):.3f}")
    print(f"RESULT load_anon_increase_gb={sampler.peaks['load']['RssAnon'] - base['RssAnon']:.2f}")
    print(f"RESULT load_s={load_s:.1f}")
    if args.encode:
        from comfyd.models.text_encoding import encode_text

        sampler.enter("encode")
        started = time.perf_counter()
        cond = encode_text(clip, "a photograph of a red fox in the snow, golden hour")[0][0]
        print(f"conditioning {tuple(cond.shape)}, finite: {bool(torch.isfinite(cond).all())}")
        print(f"RESULT encode_s={time.perf_counter() - started:.1f}")
        print(f"RESULT encode_peak_anon_gb={sampler.peaks['encode']['RssAnon']:.2f}")
    sampler.stop()


if __name__ == "__main__":
    main()
