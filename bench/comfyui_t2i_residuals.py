"""What ComfyUI's T2I-Adapter control hands the UNet, for a small adapter file: a reference for
tests/fidelity/test_t2i_residuals.py.

    python bench/comfyui_t2i_residuals.py --comfyui PATH --adapter FILE --out FILE.safetensors

ComfyUI loads the adapter with its own ControlNetLoader code (comfy.controlnet.load_controlnet,
which detects a full adapter of any width unaided), takes a 70x66 hint at strength 0.7 and
answers get_control for a batch of two 8x8 latents, as its sampler asks. The output file holds
the hint (`hint`, channels first), and each residual ComfyUI would add, under
`input.<position>` (positions with nothing to add are absent), with the list's length, the
adapter's SHA-256 and ComfyUI's version in the metadata.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfyui_render  # noqa: E402

STRENGTH = 0.7
BATCH = 2
LATENT = (4, 8, 8)


def reference_hint():
    import torch

    # A smooth, non-square picture: the resize to 64x64 crops its centre, as for the parity input.
    ys = torch.linspace(0, 1, 70)[:, None]
    xs = torch.linspace(0, 1, 66)[None, :]
    channels = [ys * xs, (1 - ys) * xs, 0.5 + 0.5 * torch.sin(6 * ys + 3 * xs)]
    return torch.stack(channels)[None].float()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        comfy = comfyui_render.load_comfyui(args.comfyui.resolve(), Path(tmp), None, Path(tmp))
    controlnet = importlib.import_module("comfy.controlnet")
    control = controlnet.load_controlnet(str(args.adapter))
    if type(control).__name__ != "T2IAdapter":
        raise SystemExit(f"ComfyUI did not read {args.adapter} as a T2I-Adapter ({type(control).__name__})")
    hint = reference_hint()
    control.set_cond_hint(hint, STRENGTH, (0.0, 1.0))
    x_noisy = torch.zeros(BATCH, *LATENT)
    out = control.get_control(x_noisy, torch.ones(BATCH), {}, BATCH, {})
    tensors = {"hint": hint.contiguous()}
    for i, value in enumerate(out["input"]):
        if value is not None:
            tensors[f"input.{i}"] = value.float().contiguous()
    metadata = {
        "input_length": str(len(out["input"])),
        "middle": json.dumps([v is not None for v in out["middle"]]),
        "adapter_sha256": hashlib.sha256(args.adapter.read_bytes()).hexdigest(),
        "comfyui_version": comfy["version"],
        "strength": str(STRENGTH),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    print(f"{args.out}: {len(tensors) - 1} residuals of {len(out['input'])} positions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
