"""Memory of a full-size Flux.1-dev transformer stored in fp8, loaded through comfyd's UNETLoader path.

Writes a FULL-SIZE Flux.1-dev transformer (diffusers' config: 19 double + 38 single blocks, 3072
wide, 24 heads, 4096-wide context) with random weights in ComfyUI's (BFL's) layout, streamed to a
safetensors file tensor by tensor (never the whole model in memory), then in a fresh process loads
it with the model manager (what UNETLoader calls) and runs one KSampler step on fixed conditioning
tensors (a random T5 context [1, 256, 4096] and CLIP pooled vector [1, 768]; the text encoders are
too big for this machine), sampling memory all along:

    flock /work/wt/heavy.lock python bench/flux_fp8_memory.py --workdir /tmp/flux-fp8-mem
    python bench/flux_fp8_memory.py --double 1 --single 2 --source bf16 --weight-dtype fp8_e4m3fn

prints RESULT peak_rss_gb (the whole measuring process, VmHWM), load_peak_rss_gb and
load_peak_anon_gb (while loading: all resident pages / the process's own memory, without the
file's mapped pages, which are reclaimable page cache released when the file closes),
load_anon_increase_gb (the load's own memory: its anonymous peak less the process's before it),
transformer_resident_gb (the loaded network's tensors), stored_gb (the file), manager_bytes_gb
(what the model manager accounts), load_s and step_s. `--source fp8|bf16` writes the file in that
dtype; `--weight-dtype` is UNETLoader's; `--legacy` loads as comfyd did before (materialize in the
compute dtype, then cast to fp8) for a before/after at a cut depth (`--double`, `--single`);
`--dtype bf16` computes in bf16 (COMFYD_DTYPE). The file is deleted at the end unless `--keep`.

On a GPU (`--device cuda`, bench/gpu_check.py's flux_fp8_24gb step): `--size 1024 --steps 20
--text-encoders` also writes a full-size random T5-XXL (in `--source`'s dtype: fp8 stays fp8, as
t5xxl_fp8_e4m3fn does) and CLIP-L (fp16), encodes a prompt through
DualCLIPLoader's path (the T5 offloaded to host after encoding, COMFYD_TEXT_ENCODER_OFFLOAD auto),
caps the process at `--cap-gb` of GPU memory (torch.cuda.set_per_process_memory_fraction) and the
model cache at 80 % of it, and prints RESULT gpu_peak_allocated_gb (torch.cuda.max_memory_allocated
over the load, the encode and the denoise). `--tiny` shrinks everything for the CPU dry run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "out_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
T5_XXL = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "is_gated_act": True,
    "dense_act_fn": "gelu_pytorch_tanh", "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
ST_DTYPES = {
    torch.float8_e4m3fn: "F8_E4M3",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
}
SOURCES = {"fp8": torch.float8_e4m3fn, "bf16": torch.bfloat16}
GB = 1024**3
NAMES = {"unet": "diffusion_models/flux-dev-random.safetensors", "t5": "text_encoders/t5xxl-random.safetensors",
         "clip_l": "text_encoders/clip-l-random.safetensors"}  # fmt: skip


# --- writing ---------------------------------------------------------------------------------
def _layout(module: torch.nn.Module, translator: Any = None) -> dict[str, tuple[int, ...]]:
    """Stored key -> shape of an empty (meta) module, in the layout `translator` writes."""
    from comfyd.models.keymap import to_original

    state = module.state_dict()
    stored = to_original(state, translator) if translator is not None else state
    return {k: tuple(v.shape) for k, v in stored.items()}


POOL = 1 << 26  # random values drawn once; each tensor is a run of them from a random start


def write_streamed(path: Path, layout: dict[str, tuple[int, ...]], dtype: torch.dtype, seed: int) -> int:
    """A safetensors file of random tensors (std 0.02; norm scales 1), written piece by piece:
    never more than the pool of random values in memory (drawing 12B values would take minutes)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    width = torch.empty(0, dtype=dtype).element_size()
    for key, shape in layout.items():
        size = math.prod(shape) * width
        header[key] = {
            "dtype": ST_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    pool = (torch.randn(POOL, generator=generator) * 0.02).to(dtype).view(torch.uint8).numpy().tobytes()
    one = torch.ones(1, dtype=dtype).view(torch.uint8).numpy().tobytes()
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for key, shape in layout.items():
            left = math.prod(shape) * width
            if re.search(r"(scale|norm\d?\.weight)$", key):
                out.write(one * (left // width))
                continue
            start = int(torch.randint(0, POOL, (1,), generator=generator)) * width
            while left:
                piece = pool[start : start + left]
                out.write(piece)
                left -= len(piece)
                start = 0
    return offset


def make_files(
    work: Path, config: dict[str, Any], source: torch.dtype, text_encoders: bool, tiny: bool
) -> None:
    from comfyd.models import t5_encoder
    from comfyd.models.families import _flux_transformer as transformer
    from comfyd.models.tensorfile import FP8_DTYPES

    unet = work / NAMES["unet"]
    if not unet.is_file():
        empty = transformer.empty_transformer(config)
        write_streamed(unet, _layout(empty, transformer.FluxTranslator(config, "")), source, 0)
    if text_encoders and not (work / NAMES["t5"]).is_file():
        from comfyd.models.families import _flux_tiny
        from comfyd.models.families.base import CONFIG_DIR
        from comfyd.models.loader import empty_text_encoder

        t5_config = _flux_tiny.TINY_T5 if tiny else T5_XXL
        t5 = _layout(t5_encoder.empty_encoder(t5_config))
        t5.pop("encoder.embed_tokens.weight", None)
        # As the fp8 Flux files ship with t5xxl_fp8_e4m3fn, which stays fp8 (text_encoder_fp8).
        write_streamed(work / NAMES["t5"], t5, source if source in FP8_DTYPES else torch.float16, 1)
        clip_config = json.loads((CONFIG_DIR / "sd1" / "text_encoder_l.json").read_text())
        if tiny:
            clip_config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               projection_dim=32)  # fmt: skip
        clip = {
            k: v
            for k, v in _layout(empty_text_encoder(clip_config)).items()
            if not k.endswith("position_ids")
        }
        write_streamed(work / NAMES["clip_l"], clip, torch.float16, 2)


# --- measuring -------------------------------------------------------------------------------
class MemorySampler:
    """Peaks of VmRSS and RssAnon (GB) in named phases, polled every 20 ms on a thread."""

    def __init__(self) -> None:
        self.phase = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> dict[str, float]:
        text = Path("/proc/self/status").read_text()
        return {
            k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) * 1024 / GB
            for k in ("VmRSS", "RssAnon", "VmHWM")
        }  # type: ignore[union-attr]

    def sample(self) -> None:
        values = self.now()
        peak = self.peaks.setdefault(self.phase, {})
        for key, value in values.items():
            peak[key] = max(peak.get(key, 0.0), value)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def enter(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def legacy_loading() -> None:
    """comfyd's loading before fp8 storage by construction: the whole network in the compute
    dtype first, then cast to fp8 (diffusers' layerwise casting, its default skips)."""
    from comfyd.models.families import _network
    from comfyd.models.loader import materialize

    def load_transformer(
        tf: Any, plan: Any, weight_dtype: str, module: Any, translator: Any, what: str, **_: Any
    ) -> Any:
        net = materialize(module, translator, tf, plan.device, plan.unet_dtype, what=what)
        storage = _network.storage_dtype(weight_dtype)
        if storage is not None:
            net.enable_layerwise_casting(storage_dtype=storage, compute_dtype=plan.unet_dtype)
        return net

    import comfyd.models.families.flux as flux

    flux.load_transformer = load_transformer  # type: ignore[assignment]


def measure(args: argparse.Namespace) -> None:
    from comfyd.models.manager import ModelManager, module_bytes
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    sampler = MemorySampler()
    work = Path(args.workdir)
    cuda = args.device.startswith("cuda")
    overrides: dict[str, Any] = {}
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gb * GB / total))
        overrides["model_cache_device_bytes"] = int(args.cap_gb * GB * 0.8)
    if args.legacy:
        legacy_loading()
    settings = Settings(
        models_dir=work, device=args.device, dtype=args.dtype, home=work / "home", **overrides
    )
    manager = ModelManager(settings)
    from diffusers import FluxTransformer2DModel  # noqa: F401  (imported before the baseline)

    sampler.enter("load")
    base = sampler.now()
    started = time.perf_counter()
    model = manager.load_diffusion_model(Path(NAMES["unet"]).name, args.weight_dtype)
    load_s = time.perf_counter() - started
    sampler.enter("loaded")
    device_bytes, host_bytes = module_bytes(model.unet)
    stats = manager.stats()
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.unet.parameters()})
    print(f"transformer parameter dtypes: {dtypes}", flush=True)
    if args.text_encoders:
        from comfyd.models.text_encoding import encode_text

        clip = manager.load_clip([Path(NAMES["clip_l"]).name, Path(NAMES["t5"]).name], "flux")
        for key, encoder in clip.text_encoders.items():
            kinds = sorted({str(p.dtype).removeprefix("torch.") for p in encoder.parameters()})
            print(f"text encoder {key} parameter dtypes: {kinds}", flush=True)
        positive = encode_text(clip, "a photograph of a red fox in the snow, golden hour")
        positive = [[c, {**extra, "guidance": 3.5}] for c, extra in positive]
        print(
            f"model cache after the encode: {json.dumps({k: manager.stats()[k] for k in ('device_bytes', 'host_bytes', 'offloads', 'offloads_after_encode')})}",
            flush=True,
        )
    else:
        g = torch.Generator().manual_seed(0)
        width = model.unet.config.joint_attention_dim
        context = torch.randn(1, 256, width, generator=g)
        pooled = torch.randn(1, model.unet.config.pooled_projection_dim, generator=g)
        positive = [[context, {"pooled_output": pooled, "guidance": 3.5}]]
    latent = {"samples": torch.zeros(1, 16, args.size // 8, args.size // 8)}
    sampler.enter("step")
    started = time.perf_counter()
    out = common_ksampler(model, 7, args.steps, 1.0, "euler", "simple", positive, positive, latent)["samples"]
    step_s = time.perf_counter() - started
    sampler.stop()
    load = sampler.peaks["load"]
    finite = bool(torch.isfinite(out).all())
    results = {
        "stored_gb": (work / NAMES["unet"]).stat().st_size / GB,
        "load_peak_rss_gb": load["VmRSS"],
        "load_peak_anon_gb": load["RssAnon"],
        "load_anon_increase_gb": load["RssAnon"] - base["RssAnon"],  # the load's own memory
        "transformer_resident_gb": (device_bytes + host_bytes) / GB,
        "manager_bytes_gb": (stats["device_bytes"] + stats["host_bytes"]) / GB,
        "peak_rss_gb": max(p["VmHWM"] for p in sampler.peaks.values()),
        "peak_anon_gb": max(p["RssAnon"] for p in sampler.peaks.values()),
        "load_s": load_s,
        "step_s": step_s,
    }
    if cuda:
        results["gpu_peak_allocated_gb"] = torch.cuda.max_memory_allocated() / GB
    tag = f"_{args.tag}" if args.tag else ""
    print(
        f"output finite: {finite}; {args.steps} step(s) at {args.size}x{args.size} on {args.device}",
        flush=True,
    )
    for key, value in results.items():
        print(f"RESULT {key}{tag}={value:.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/flux-fp8-mem")
    parser.add_argument(
        "--source", choices=sorted(SOURCES), default="fp8", help="dtype the file is written in"
    )
    parser.add_argument("--weight-dtype", default="default", help="UNETLoader's weight_dtype")
    parser.add_argument("--dtype", default="auto", help="COMFYD_DTYPE: the compute dtype (auto: fp32 on CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--double", type=int, default=19, help="double blocks (19: Flux.1-dev)")
    parser.add_argument("--single", type=int, default=38, help="single blocks (38: Flux.1-dev)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument(
        "--text-encoders", action="store_true", help="full-size random CLIP-L + T5-XXL, a real encode"
    )
    parser.add_argument("--cap-gb", type=float, default=24.0, help="GPU memory the run may use (CUDA only)")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (the CPU dry run)")
    parser.add_argument(
        "--legacy", action="store_true", help="load as comfyd did before (compute dtype, then fp8)"
    )
    parser.add_argument("--tag", default="", help="suffix of the RESULT names")
    parser.add_argument("--keep", action="store_true", help="keep the written files")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(args)
        return 0
    work = Path(args.workdir)
    config = dict(FLUX_DEV, num_layers=args.double, num_single_layers=args.single)
    if args.tiny:
        config.update(attention_head_dim=32, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                      axes_dims_rope=[8, 12, 12])  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free / GB
    print(f"writing {config['num_layers']} double + {config['num_single_layers']} single blocks ({args.source}) "
          f"under {work}; {free:.0f} GB free there", flush=True)  # fmt: skip
    try:
        started = time.perf_counter()
        make_files(work, config, SOURCES[args.source], args.text_encoders, args.tiny)
        print(f"written in {time.perf_counter() - started:.0f} s", flush=True)
        child = [sys.executable, __file__, "--measure", *(argv if argv is not None else sys.argv[1:])]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
            ),
        }
        return subprocess.run(child, env=env, check=False).returncode
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
