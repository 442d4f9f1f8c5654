"""Hypernetworks (A1111's format, as ComfyUI's HypernetworkLoader applies them).

A file is a pickled dict: per feature width (320, 640, 768, 1280, ...) a pair of layer stacks
(state dicts of Linear and, with `is_layer_norm`, LayerNorm layers), plus `activation_func`,
`is_layer_norm`, `use_dropout`, `activate_output`. In every transformer block of the UNet, before
the self- and the cross-attention, the inputs the keys and values are projected from pass
through the stack of their width: `k + stack0(k) * strength`, `v + stack1(v) * strength`. The
queries are left alone. Stacks are built as ComfyUI builds them (activation after each Linear but
the last unless `activate_output`, LayerNorm after it when asked); dropout layers are left out, as
inference should (ComfyUI keeps them in training mode, so its output varies run to run for files
with `use_dropout`; README, known limits).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity,
    "relu": nn.ReLU,
    "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "swish": nn.Hardswish,  # ComfyUI's (and A1111's) mapping of the name
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softsign": nn.Softsign,
    "mish": nn.Mish,
}

# width -> (key stack, value stack)
HypernetworkLayers = dict[int, tuple[nn.Sequential, nn.Sequential]]


@dataclass(frozen=True)
class Hypernetwork:
    name: str
    layers: HypernetworkLayers

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for pair in self.layers.values() for s in pair for p in s.parameters())


class HypernetworkError(ValueError):
    """A hypernetwork file that cannot be used."""


def _stack(weights: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> nn.Sequential:
    activation = options["activation_func"]
    names = [k[: -len(".weight")] for k in weights if k.endswith(".weight")]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        weight, bias = weights[f"{names[i]}.weight"], weights[f"{names[i]}.bias"]
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        layers.append(linear)
        # ComfyUI counts the LayerNorms among the layers here, so with norms even the last
        # Linear gets the activation; kept for identical results.
        last = i == len(names) - 1
        if activation != "linear" and (not last or options.get("activate_output", False)):
            layers.append(ACTIVATIONS[activation]())
        if options.get("is_layer_norm", False):
            i += 1
            ln_weight, ln_bias = weights[f"{names[i]}.weight"], weights[f"{names[i]}.bias"]
            norm = nn.LayerNorm(ln_weight.shape[0])
            norm.load_state_dict({"weight": ln_weight, "bias": ln_bias})
            layers.append(norm)
        i += 1
    return nn.Sequential(*layers).eval().requires_grad_(False)


def load_hypernetwork(path: Path, allow_pickle: bool) -> Hypernetwork | None:
    """The layer stacks of a hypernetwork file; None (with an error logged, the model unchanged,
    as in ComfyUI) for an activation ComfyUI does not know."""
    if not allow_pickle:
        raise HypernetworkError(
            f"{path.name}: hypernetworks are pickle files; comfyd loads pickles only when allowed "
            "(COMFYD_ALLOW_PICKLE=true, then with torch.load(weights_only=True))"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a broken or non-weights pickle: say which file
        raise HypernetworkError(f"{path.name} is not a readable hypernetwork file: {exc}") from exc
    if not isinstance(data, dict):
        raise HypernetworkError(f"{path.name} is not a hypernetwork file (no dict of layers)")
    options = {
        "activation_func": data.get("activation_func", "linear"),
        "is_layer_norm": data.get("is_layer_norm", False),
        "activate_output": data.get("activate_output", False),
    }
    if options["activation_func"] not in ACTIVATIONS:
        log.error("%s: unsupported hypernetwork activation %r; the model is left unchanged",
                  path.name, options["activation_func"])
        return None
    layers: HypernetworkLayers = {}
    for key, pair in data.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue
        try:
            layers[width] = (_stack(pair[0], options), _stack(pair[1], options))
        except (KeyError, IndexError, TypeError, RuntimeError) as exc:
            raise HypernetworkError(f"{path.name}: layers for width {width} are malformed: {exc}") from exc
    return Hypernetwork(path.name, layers)


class HypernetworkAttnProcessor:
    """A UNet transformer block's attention with the hypernetworks applied to its key and value
    inputs; any other attention call goes to the processor it replaced."""

    def __init__(self, nets: list[tuple[HypernetworkLayers, float]], fallback: Any) -> None:
        self.nets = nets
        self.fallback = fallback

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        plain = (hidden_states.ndim == 3 and attention_mask is None and attn.spatial_norm is None
                 and attn.group_norm is None and not attn.norm_cross and attn.norm_q is None
                 and attn.norm_k is None and not attn.residual_connection)
        if not plain:  # not the SD transformer-block path this was written for
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        keys_in, values_in = context, context
        for layers, strength in self.nets:
            pair = layers.get(keys_in.shape[-1])
            if pair is not None:
                keys_in = keys_in + pair[0](keys_in) * strength
                values_in = values_in + pair[1](values_in) * strength
        query, key, value = attn.to_q(hidden_states), attn.to_k(keys_in), attn.to_v(values_in)
        batch, heads = hidden_states.shape[0], attn.heads
        head_dim = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def _on(layers: HypernetworkLayers, device: torch.device, dtype: torch.dtype) -> HypernetworkLayers:
    # Copies: the parsed file stays on the CPU in fp32 for the next user.
    return {w: (copy.deepcopy(a).to(device, dtype), copy.deepcopy(b).to(device, dtype)) for w, (a, b) in layers.items()}


def install(unet: Any, nets: list[tuple[Hypernetwork, float]]) -> dict[str, Any]:
    """Route the UNet's transformer-block attentions (`attn1`, `attn2`) through the hypernetworks;
    returns the processors to put back (`restore`)."""
    saved = dict(unet.attn_processors)
    param = next(unet.parameters())
    placed = [(_on(net.layers, param.device, param.dtype), strength) for net, strength in nets]
    replaced = {
        name: HypernetworkAttnProcessor(placed, processor)
        if name.endswith(("attn1.processor", "attn2.processor")) else processor
        for name, processor in saved.items()
    }
    unet.set_attn_processor(replaced)
    return saved


def restore(unet: Any, saved: dict[str, Any]) -> None:
    unet.set_attn_processor(saved)
