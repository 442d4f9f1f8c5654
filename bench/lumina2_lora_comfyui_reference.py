"""Lumina 2 LoRAs held to ComfyUI itself: writes the stored reference that
tests/families/test_lumina2_lora.py compares comfyd against.

ComfyUI 0.3.64 (comfy/lora.py model_lora_keys_unet) maps two key spellings onto a Lumina 2 NextDiT,
both in the stored (original release) names: kohya's `lora_unet_<name with _>` and the generic
`diffusion_model.<name>`; each with any of its LoRA tensor spellings (lora_up/lora_down,
lora_A/lora_B, alpha). The fused `attention.qkv` is one weight there; comfyd's running module is
diffusers' Lumina2Transformer2DModel with to_q / to_k / to_v, so a change of the fused weight has
to land on the right rows.

The comfyd side writes the tiny files (`make-tiny --family lumina2`) and a tiny random LoRA in those
spellings (kohya with alpha, and lora_A / lora_B without), covering fused qkv layers of the main
and refiner blocks, a feed-forward, the caption embedder and the time embedder. The ComfyUI side
(its own Python, `--comfyui-side`) builds its NextDiT at the tiny file's sizes, maps the LoRA with
model_lora_keys_unet / convert_lora / load_lora (what LoraLoaderModelOnly does) and applies every
patch with comfy.lora.calculate_weight on an fp32 copy of each weight (what its ModelPatcher does
on CPU), then runs the patched network on fixed inputs. The reference holds the LoRA, the patched
fused qkv weights and the output, plus the sha256 of the files they were computed on.

    python bench/lumina2_lora_comfyui_reference.py --workdir /tmp/lumina2-lora \
        --comfyui /work/comfyui --comfyui-python /work/cvenv/bin/python \
        --save-reference tests/families/data/lumina2_lora_comfyui_reference.safetensors

prints RESULT lumina2_lora_patched_weights=<count> and RESULT lumina2_lora_max_delta=<largest change>.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STRENGTH = 0.75
RANK = 4
# (spelling, stored layer): every spelling ComfyUI 0.3.64 maps for Lumina 2.
LAYERS = (
    ("kohya", "layers.0.attention.qkv"),
    ("peft", "layers.1.attention.qkv"),
    ("kohya", "noise_refiner.0.attention.qkv"),
    ("peft", "context_refiner.0.feed_forward.w1"),
    ("kohya", "layers.1.feed_forward.w2"),
    ("peft", "cap_embedder.1"),
    ("kohya", "t_embedder.mlp.0"),
    ("kohya", "layers.0.adaLN_modulation.1"),
)
LORA_FILE = "lumina2-tiny-lora.safetensors"


def make_lora(transformer: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(13)
    tensors: dict[str, torch.Tensor] = {}
    for spelling, layer in LAYERS:
        out_dim, in_dim = transformer[f"{layer}.weight"].shape
        down = torch.randn(RANK, in_dim, generator=gen) * 0.2
        up = torch.randn(out_dim, RANK, generator=gen) * 0.2
        if spelling == "kohya":
            name = "lora_unet_" + layer.replace(".", "_")
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                        f"{name}.alpha": torch.tensor(2.0)}  # fmt: skip
        else:
            name = f"diffusion_model.{layer}"
            tensors |= {f"{name}.lora_A.weight": down, f"{name}.lora_B.weight": up}
    return tensors


def comfyui_reference(work: Path, comfyui: Path, out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from comfyui_render import load_comfyui

    load_comfyui(comfyui, work, None, work / "comfyui-out")
    import comfy.lora
    import comfy.lora_convert
    import comfy.ops
    from comfy.ldm.lumina.model import NextDiT
    from comfyd_tiny_names import NAMES  # written beside the reference by the comfyd side

    net_sd = load_file(str(work / "models" / NAMES["transformer"]))
    dim, width = net_sd["x_embedder.weight"].shape
    head = net_sd["layers.0.attention.q_norm.weight"].shape[0]
    heads = dim // head
    net = NextDiT(
        patch_size=2, in_channels=width // 4, dim=dim, n_layers=2, n_refiner_layers=1, n_heads=heads,
        n_kv_heads=(net_sd["layers.0.attention.qkv.weight"].shape[0] // head - heads) // 2, qk_norm=True,
        cap_feat_dim=net_sd["cap_embedder.1.weight"].shape[1], axes_dims=[head // 3] * 3, axes_lens=[300, 512, 512],
        dtype=torch.float32, operations=comfy.ops.disable_weight_init,
    )  # fmt: skip
    net.load_state_dict(net_sd, strict=True)

    class Holder(torch.nn.Module):  # what model_lora_keys_unet reads of a BaseModel
        def __init__(self) -> None:
            super().__init__()
            self.diffusion_model = net
            self.model_config = type("Config", (), {"unet_config": {}})()

    holder = Holder()
    lora = load_file(str(work / LORA_FILE))
    key_map = comfy.lora.model_lora_keys_unet(holder, {})
    loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map)
    state = holder.state_dict()
    weight_before = {k: v.detach().clone() for k, v in state.items()}
    delta = 0.0
    tensors: dict[str, torch.Tensor] = {f"lora/{k}": v for k, v in lora.items()}
    for key, patch in loaded.items():
        assert isinstance(key, str) and key in state, key  # no offsets for Lumina 2
        weight = state[key].detach().to(torch.float32, copy=True)
        patched = comfy.lora.calculate_weight([(STRENGTH, patch, 1.0, None, None)], weight, key)
        state[key].copy_(patched.to(state[key].dtype))
        if ".qkv." in key:  # the fused weights in full (the output covers the rest; keeps the file small)
            tensors[f"patched/{key.removeprefix('diffusion_model.')}"] = patched.clone()
        delta = max(delta, (patched - weight_before[key]).abs().max().item())
    g = torch.Generator().manual_seed(7)
    tensors |= {
        "x": torch.randn(2, 16, 6, 8, generator=g), "sigma": torch.tensor([0.9, 0.35]),
        "context": torch.randn(2, 11, net_sd["cap_embedder.1.weight"].shape[1], generator=g),
    }  # fmt: skip
    tensors["out"] = net(tensors["x"], tensors["sigma"], tensors["context"], 11)
    files = {**NAMES, "lora": LORA_FILE}
    digests = {
        name: hashlib.sha256(
            ((work / "models" / rel) if name != "lora" else work / rel).read_bytes()
        ).hexdigest()
        for name, rel in files.items()
        if name in ("transformer", "lora")
    }
    metadata = {"sha256": json.dumps(digests), "strength": str(STRENGTH)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out), metadata=metadata)
    print(f"RESULT lumina2_lora_patched_weights={len(loaded)}")
    print(f"RESULT lumina2_lora_max_delta={delta:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--comfyui-python", default=sys.executable)
    parser.add_argument("--save-reference", type=Path, required=True)
    parser.add_argument("--comfyui-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = args.workdir.resolve()
    if args.comfyui_side:
        sys.path.insert(0, str(work))
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            comfyui_reference(work, args.comfyui.resolve(), args.save_reference.resolve())
        return 0
    from comfyd.models.families import _lumina2_tiny
    from comfyd.models.tiny import make_tiny

    work.mkdir(parents=True, exist_ok=True)
    make_tiny(work / "models", family="lumina2")
    (work / "comfyd_tiny_names.py").write_text(f"NAMES = {dict(_lumina2_tiny.NAMES)!r}\n")
    transformer = load_file(str(work / "models" / _lumina2_tiny.NAMES["transformer"]))
    save_file(make_lora(transformer), str(work / LORA_FILE))
    cmd = [args.comfyui_python, __file__, "--workdir", str(work), "--comfyui", str(args.comfyui),
           "--save-reference", str(args.save_reference.resolve()), "--comfyui-side"]  # fmt: skip
    subprocess.run(cmd, check=True)
    print(f"wrote {args.save_reference}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
