"""Small random LoRA files in the LyCORIS formats (tests and fidelity cases; no real weights).

One file per format, for the UNet and the text encoders of a base checkpoint, kohya-style names
(`lora_unet_...`, `lora_te_...`). Each layer's change is scaled to about a third of the layer's
own weight scale, so a render still shows a picture but clearly moves.

Formats: "locon" (3x3 convs with `lora_mid`), "loha" (3x3 convs in the CP form `hada_t1`/`t2`),
"lokr" (`lokr_w1` with `lokr_w2_a`/`_b`, `lokr_t2` on 3x3 convs, and on every other layer
`lokr_w1_a`/`_b` with a whole `lokr_w2`), "dora" (LoRA with `dora_scale`: along the output axis
on the UNet, the input axis on the text encoders), "diff" (`diff` and `diff_b`, norms included)
and "set" (`set_weight`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from comfyd.models import families
from comfyd.models.loader import empty_text_encoder, empty_unet
from comfyd.models.lora_adapters import Adapter, Hadamard, Kronecker, LowRank
from comfyd.models.tiny import (
    LORA_TEXT_TARGETS,
    LORA_UNET_TARGETS,
    STORAGE_DTYPE,
    _generator,
    _stored_text_name,
    checkpoint_configs,
)

FORMATS = ("locon", "loha", "lokr", "dora", "diff", "set")
RANK = 4
FACTOR = 4  # LoKr's first Kronecker factor is FACTOR x FACTOR
# Norm layers the "diff" file also changes (UNet only: ComfyUI maps no text-encoder norm).
DIFF_UNET_NORMS = ("resnets.0.norm1", "transformer_blocks.0.norm1", "attentions.0.norm")

# Text-encoder layers the whole-tensor formats ("diff", "set") change.
WHOLE_TENSOR_TEXT_LAYERS = (0, 10)

Tensors = dict[str, torch.Tensor]


def _targets(module: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    kinds = nn.Linear | nn.Conv2d | nn.GroupNorm | nn.LayerNorm
    return [(n, m) for n, m in module.named_modules() if isinstance(m, kinds) and n.endswith(targets)]


def _fan_in(weight: torch.Tensor) -> int:
    return math.prod(weight.shape[1:]) if weight.dim() > 1 else 1


def _scaled(parts: Tensors, change: Adapter, scaled_part: str, weight: torch.Tensor) -> Tensors:
    """Rescale `scaled_part` so the change's spread is a third of the weight's init scale."""
    delta = change.apply(torch.zeros(weight.shape), 1.0)
    target = 0.35 / math.sqrt(_fan_in(weight))
    parts[scaled_part] = parts[scaled_part] * (target / float(delta.std().clamp_min(1e-12)))
    return parts


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g)


def _low_rank(weight: torch.Tensor, g: torch.Generator, with_mid: bool) -> Tensors:
    out, r = weight.shape[0], RANK
    conv3 = weight.dim() == 4 and weight.shape[2] > 1
    if weight.dim() == 4 and with_mid and conv3:
        parts = {"lora_down.weight": _randn(g, r, weight.shape[1], 1, 1),
                 "lora_mid.weight": _randn(g, r, r, *weight.shape[2:]),
                 "lora_up.weight": _randn(g, out, r, 1, 1)}
    elif weight.dim() == 4:
        parts = {"lora_down.weight": _randn(g, r, *weight.shape[1:]), "lora_up.weight": _randn(g, out, r, 1, 1)}
    else:
        parts = {"lora_down.weight": _randn(g, r, weight.shape[1]), "lora_up.weight": _randn(g, out, r)}
    parts["alpha"] = torch.tensor(r / 2)
    change = LowRank(parts["lora_up.weight"], parts["lora_down.weight"], r / 2, parts.get("lora_mid.weight"))
    return _scaled(parts, change, "lora_up.weight", weight)


def _loha(weight: torch.Tensor, g: torch.Generator, cp: bool) -> Tensors:
    out, fan_in, r = weight.shape[0], _fan_in(weight), RANK
    if cp and weight.dim() == 4 and weight.shape[2] > 1:  # CP form: cores carry the kernel
        parts = {"hada_t1": _randn(g, r, r, *weight.shape[2:]), "hada_t2": _randn(g, r, r, *weight.shape[2:])}
        for w in ("w1", "w2"):
            parts[f"hada_{w}_a"] = _randn(g, r, out)
            parts[f"hada_{w}_b"] = _randn(g, r, weight.shape[1])
    else:
        parts = {f"hada_{w}_{ab}": _randn(g, *((out, r) if ab == "a" else (r, fan_in)))
                 for w in ("w1", "w2") for ab in ("a", "b")}
    parts["alpha"] = torch.tensor(float(r))
    change = Hadamard(parts["hada_w1_a"], parts["hada_w1_b"], parts["hada_w2_a"], parts["hada_w2_b"],
                      float(r), parts.get("hada_t1"), parts.get("hada_t2"))
    return _scaled(parts, change, "hada_w1_a", weight)


def _lokr(weight: torch.Tensor, g: torch.Generator, split_first: bool, cp: bool) -> Tensors:
    out, cin, f, r = weight.shape[0], weight.shape[1], FACTOR, RANK
    kernel = tuple(weight.shape[2:])
    if split_first:  # lokr_w1_a @ lokr_w1_b, lokr_w2 whole
        parts = {"lokr_w1_a": _randn(g, f, 2), "lokr_w1_b": _randn(g, 2, f),
                 "lokr_w2": _randn(g, out // f, cin // f, *kernel)}
        scaled = "lokr_w2"
    else:
        parts = {"lokr_w1": _randn(g, f, f), "lokr_w2_b": _randn(g, r, cin // f)}
        if cp and kernel and kernel[0] > 1:
            parts["lokr_t2"] = _randn(g, r, r, *kernel)
            parts["lokr_w2_a"] = _randn(g, r, out // f)
        else:
            parts["lokr_w2_a"] = _randn(g, out // f, r)
            parts["lokr_w2_b"] = _randn(g, r, cin // f * math.prod(kernel))
        scaled = "lokr_w1"
    parts["alpha"] = torch.tensor(float(r))
    change = Kronecker(*(parts.get(f"lokr_{w}") for w in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")),
                       alpha=float(r))
    return _scaled(parts, change, scaled, weight)


def _dora(weight: torch.Tensor, g: torch.Generator, output_axis: bool) -> Tensors:
    parts = _low_rank(weight, g, with_mid=False)
    out, cin = weight.shape[0], weight.shape[1]
    # The random checkpoints' rows have norm ~1 (init N(0, 1/fan_in)), their columns sqrt(out/in).
    if output_axis:
        scale = 1.0 + 0.2 * (torch.rand((out,), generator=g) - 0.5)
        parts["dora_scale"] = scale.reshape(out, *[1] * (weight.dim() - 1))
    else:
        scale = math.sqrt(out / _fan_in(weight) * math.prod(weight.shape[2:]))
        scale = scale * (1.0 + 0.2 * (torch.rand((cin,), generator=g) - 0.5))
        parts["dora_scale"] = scale.reshape(1, cin, *[1] * (weight.dim() - 2))
    return parts


def _diff(weight: torch.Tensor, bias: torch.Tensor | None, g: torch.Generator, norm: bool) -> Tensors:
    if norm:
        parts = {"diff": 0.1 * _randn(g, *weight.shape)}
    else:
        parts = {"diff": 0.35 / math.sqrt(_fan_in(weight)) * _randn(g, *weight.shape)}
    if bias is not None:
        parts["diff_b"] = 0.05 * _randn(g, *bias.shape)
    return parts


def _set(weight: torch.Tensor, g: torch.Generator) -> Tensors:
    return {"set_weight": _randn(g, *weight.shape) / math.sqrt(_fan_in(weight))}


def _layer_tensors(fmt: str, index: int, layer: nn.Module, g: torch.Generator, text: bool, cp: bool) -> Tensors:
    weight, bias = layer.weight, getattr(layer, "bias", None)
    norm = isinstance(layer, nn.GroupNorm | nn.LayerNorm)
    builders: dict[str, Callable[[], Tensors]] = {
        "locon": lambda: _low_rank(weight, g, with_mid=True),
        "loha": lambda: _loha(weight, g, cp),
        "lokr": lambda: _lokr(weight, g, split_first=index % 2 == 1, cp=cp),
        "dora": lambda: _dora(weight, g, output_axis=not text),
        "diff": lambda: _diff(weight, bias, g, norm),
        "set": lambda: _set(weight, g),
    }
    return builders[fmt]()


def make_tiny_lycoris(dir: Path | str, base_checkpoint: Path | str, fmt: str, *, seed: int = 0,
                      name: str | None = None, text_encoders: bool = True, cp: bool = True) -> Path:
    """A random LoRA file of format `fmt` (see FORMATS) for `base_checkpoint`'s architecture;
    `cp=False` leaves out the CP cores (`hada_t1`/`t2`, `lokr_t2`) and stores 3x3 convs flat."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown LyCORIS format {fmt!r}; choose one of {', '.join(FORMATS)}")
    configs = checkpoint_configs(Path(base_checkpoint))
    family = families.get(configs.family)
    g = _generator(seed, f"lycoris-{fmt}")
    tensors: Tensors = {}
    unet_targets = LORA_UNET_TARGETS
    if fmt == "diff":  # whole tensors: the 3x3 convs left out to keep the file small
        unet_targets = tuple(t for t in LORA_UNET_TARGETS if not t.endswith("conv1")) + DIFF_UNET_NORMS
    if fmt == "set":  # replace a few layers only: the cross-attention keys and values
        unet_targets = ("attn2.to_k", "attn2.to_v")
    # Original-layout names for some formats, diffusers-style for the others: both are in use.
    original_names = fmt in ("lokr", "diff", "set")
    translator = family.unet_key_map(configs.unet, key_prefix="")
    for index, (layer_name, layer) in enumerate(_targets(empty_unet(configs.unet), unet_targets)):
        path = layer_name
        if original_names:
            source = translator.source(f"{layer_name}.weight")
            assert source is not None, layer_name
            path = source.key[: -len(".weight")]
        base = "lora_unet_" + path.replace(".", "_")
        for part, value in _layer_tensors(fmt, index, layer, g, text=False, cp=cp).items():
            tensors[f"{base}.{part}"] = value
    if text_encoders:
        text_targets = ("self_attn.k_proj", "self_attn.v_proj") if fmt == "set" else LORA_TEXT_TARGETS
        for enc_name, config in configs.encoders.items():
            prefix = family.encoder(enc_name).kohya_prefix
            layers = _targets(empty_text_encoder(config), text_targets)
            if fmt in ("diff", "set"):  # whole tensors: two of the encoder's layers keep the file small
                layers = [(n, m) for n, m in layers if any(f"layers.{i}." in n for i in WHOLE_TENSOR_TEXT_LAYERS)]
            for index, (layer_name, layer) in enumerate(layers):
                base = prefix + _stored_text_name(layer_name).replace(".", "_")
                for part, value in _layer_tensors(fmt, index, layer, g, text=True, cp=cp).items():
                    tensors[f"{base}.{part}"] = value
    tensors = {k: v.to(STORAGE_DTYPE).contiguous() for k, v in tensors.items()}
    path = Path(dir) / (name or f"comfyd-tiny-{configs.family}-{fmt}.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
