"""What ComfyUI's union ControlNet computes for a small SDXL-style union file: a reference for
tests/fidelity/test_union_residuals.py.

    python bench/comfyui_union_residuals.py --comfyui PATH --controlnet UNION.safetensors \
        --twin ORIGINAL.safetensors --out FILE.safetensors

UNION is a diffusers-layout union ControlNet (the only layout ComfyUI reads union parts in),
TWIN the same weights in the original layout. ComfyUI reads a diffusers ControlNet only when its
down half matches a fixed table of full-size configs, and a full-size SDXL one is out of reach
here; so, as bench/comfyui_union_render.py does, the table lookup answers the config ComfyUI's
own detector (model_config_from_unet, as its ControlNet loader calls it) infers from TWIN. The
rest is ComfyUI's loader and its cldm.ControlNet: the file holds the inputs (x, hint, timesteps,
context, pooled, time_ids; the vector input `y` is built as ComfyUI's SDXL encode_adm builds it)
and the residuals for no control type ("auto": `auto.output.<i>`, `auto.middle`) and for type 3
(`type3.*`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfyui_render  # noqa: E402

BATCH = 2
TIME_IDS = [64.0, 64.0, 0.0, 0.0, 64.0, 64.0]  # height, width, crop top, crop left, target h, target w
CASES = {"auto": [], "type3": [3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--controlnet", type=Path, required=True)
    parser.add_argument("--twin", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        comfy = comfyui_render.load_comfyui(args.comfyui.resolve(), Path(tmp), None, Path(tmp))
    utils = importlib.import_module("comfy.utils")
    detection = importlib.import_module("comfy.model_detection")
    controlnet = importlib.import_module("comfy.controlnet")
    openaimodel = importlib.import_module("comfy.ldm.modules.diffusionmodules.openaimodel")

    twin_config = dict(detection.model_config_from_unet(utils.load_torch_file(str(args.twin)), "", True).unet_config)
    # A ControlNet has no output blocks, but ComfyUI's diffusers key map also names a UNet's up
    # blocks: give it the depths a UNet with this down half has (convert_config's rule). No
    # up-block key exists in the file, so these names map nothing.
    depths, t_out = list(twin_config["transformer_depth"]), []
    for res in twin_config["num_res_blocks"]:
        t_out += [depths[0]] * (res + 1)
        depths = depths[res:]
    twin_config["transformer_depth_output"] = t_out
    table_lookup = detection.unet_config_from_diffusers_unet

    def lookup(state_dict, dtype=None):  # type: ignore[no-untyped-def]
        return table_lookup(state_dict, dtype) or dict(twin_config, dtype=dtype)

    detection.unet_config_from_diffusers_unet = lookup
    model = controlnet.load_controlnet(str(args.controlnet)).control_model
    if model.control_add_embedding is None:
        raise SystemExit("ComfyUI did not read the union parts")

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, model.in_channels, 8, 8, generator=generator)
    hint = torch.rand(BATCH, 3, 64, 64, generator=generator)
    timesteps = torch.tensor([500.0, 500.0])
    context_dim = model.input_blocks[-1][1].transformer_blocks[0].attn2.to_k.weight.shape[1]
    context = torch.randn(BATCH, 5, context_dim, generator=generator)
    adm = model.label_emb[0][0].weight.shape[1]
    pooled = torch.randn(BATCH, adm - 256 * len(TIME_IDS), generator=generator)
    embedder = openaimodel.Timestep(256)
    flat = torch.flatten(torch.cat([embedder(torch.tensor([v])) for v in TIME_IDS])).unsqueeze(0).repeat(BATCH, 1)
    y = torch.cat([pooled, flat], dim=1)

    tensors = {"x": x, "hint": hint, "timesteps": timesteps, "context": context, "pooled": pooled,
               "time_ids": torch.tensor([TIME_IDS] * BATCH)}  # fmt: skip
    with torch.no_grad():
        for name, control_type in CASES.items():
            out = model(x=x, hint=hint, timesteps=timesteps, context=context, y=y, control_type=control_type)
            for i, value in enumerate(out["output"]):
                tensors[f"{name}.output.{i}"] = value
            tensors[f"{name}.middle"] = out["middle"][0]
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(args.out),
              metadata={"comfyui_version": comfy["version"]})
    print(f"{args.out}: {len(tensors)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
