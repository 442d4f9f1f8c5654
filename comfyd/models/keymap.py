"""Where each diffusers / transformers parameter lives in an original-layout checkpoint.

Single-file checkpoints use the key names of the original Stable Diffusion code (`input_blocks.1.0
.in_layers.2.weight`, OpenCLIP's fused `attn.in_proj_weight`, ...); comfyd runs diffusers
`UNet2DConditionModel` / `AutoencoderKL` and transformers `CLIPTextModel`. A translator answers,
for one parameter name of the module, which stored tensor holds it and what to do to it
(`Source`). The loader walks the module's parameters and asks; the tiny-checkpoint writer walks
the same parameters and goes the other way (`to_original`), so both directions share one table.

The tables are written from the two architectures' module structure (facts, not code, taken from
the original LDM/SGM layout and diffusers' block layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch

COPY = "copy"
CONV1X1 = "conv1x1"  # stored as a 1x1 conv [o, i, 1, 1]; the module holds a Linear [o, i]
TRANSPOSE = "transpose"  # stored as [i, o] (OpenCLIP text_projection); the module holds [o, i]
CHUNK3 = "chunk3"  # one third (q, k or v) of a fused [3*d, ...] tensor along dim 0
ROWS = "rows"  # rows [start, stop) of a fused tensor along dim 0 (Flux's q/k/v/mlp projection)
SWAP_HALVES = "swap_halves"  # the two halves of dim 0 exchanged (shift/scale vs scale/shift)


@dataclass(frozen=True)
class Source:
    key: str  # key in the stored (original-layout) state dict
    op: str = COPY
    index: int = 0  # which third, for CHUNK3
    start: int = 0  # first row, for ROWS
    stop: int = 0  # row after the last, for ROWS


class Translator(Protocol):
    def source(self, name: str) -> Source | None:
        """Where module parameter `name` is stored; None if the original layout has no such tensor."""
        ...


def apply_op(tensor: torch.Tensor, source: Source) -> torch.Tensor:
    """The module's view of a stored tensor."""
    if source.op == COPY:
        return tensor
    if source.op == CONV1X1:
        return tensor.reshape(tensor.shape[0], tensor.shape[1]) if tensor.ndim == 4 else tensor
    if source.op == TRANSPOSE:
        return tensor.t()
    if source.op == CHUNK3:
        return tensor.chunk(3, dim=0)[source.index]
    if source.op == ROWS:
        return tensor[source.start : source.stop]
    if source.op == SWAP_HALVES:
        first, second = tensor.chunk(2, dim=0)
        return torch.cat([second, first], dim=0)
    raise ValueError(f"unknown tensor op {source.op!r}")


def to_original(state: Mapping[str, torch.Tensor], translator: Translator) -> dict[str, torch.Tensor]:
    """A module state dict rewritten in the original layout (the inverse of loading)."""
    out: dict[str, torch.Tensor] = {}
    thirds: dict[str, dict[int, torch.Tensor]] = {}
    row_parts: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        source = translator.source(name)
        if source is None:
            continue
        if source.op == COPY:
            out[source.key] = tensor
        elif source.op == CONV1X1:
            out[source.key] = tensor.reshape(*tensor.shape, 1, 1)
        elif source.op == TRANSPOSE:
            out[source.key] = tensor.t().contiguous()
        elif source.op == CHUNK3:
            thirds.setdefault(source.key, {})[source.index] = tensor
        elif source.op == ROWS:
            row_parts.setdefault(source.key, {})[source.start] = tensor
        elif source.op == SWAP_HALVES:
            first, second = tensor.chunk(2, dim=0)
            out[source.key] = torch.cat([second, first], dim=0)
        else:
            raise ValueError(f"unknown tensor op {source.op!r}")
    for key, parts in thirds.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"{key}: only parts {sorted(parts)} of a fused q/k/v tensor are present")
        out[key] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    for key, parts in row_parts.items():
        out[key] = torch.cat([parts[start] for start in sorted(parts)], dim=0)
    return out


@dataclass(frozen=True)
class _Block:
    original: str  # original-layout module prefix, ending with "."
    renames: Mapping[str, str]  # first name component(s) diffusers -> original
    ops: Mapping[str, str]  # first name component -> tensor op (default COPY)


_SAME: Mapping[str, str] = {}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_ATTENTION_OPS = {"to_q": CONV1X1, "to_k": CONV1X1, "to_v": CONV1X1, "to_out.0": CONV1X1}


class PrefixTranslator:
    """Translation by module prefix: `<diffusers prefix><rest>` -> `<original prefix><renamed rest>`."""

    def __init__(self, blocks: Mapping[str, _Block], key_prefix: str = "") -> None:
        self._blocks = dict(blocks)
        self.key_prefix = key_prefix

    def source(self, name: str) -> Source | None:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            block = self._blocks.get(".".join(parts[:cut]) + ".")
            if block is None:
                continue
            rest = parts[cut:]
            op = COPY
            # A rename covers the first one or two components of the rest ("conv1", "to_out.0").
            for width in (2, 1):
                if len(rest) <= width:
                    continue
                head = ".".join(rest[:width])
                if head in block.renames or head in block.ops:
                    # Ops reshape weights only (a 1x1 conv's bias is 1-D like a Linear's).
                    op = block.ops.get(head, COPY) if rest[-1] == "weight" else COPY
                    rest = [block.renames.get(head, head), *rest[width:]]
                    break
            return Source(self.key_prefix + block.original + ".".join(rest), op)
        return None


def _layers_per_block(config: Mapping[str, Any]) -> int:
    value = config["layers_per_block"]
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise ValueError(f"layers_per_block {value} differs between levels; not an SD layout")
        return int(value[0])
    return int(value)


def unet_translator(
    config: Mapping[str, Any], key_prefix: str = "model.diffusion_model."
) -> PrefixTranslator:
    """diffusers UNet2DConditionModel names -> original LDM/SGM UNet keys, for this config."""
    levels = len(config["block_out_channels"])
    per_level = _layers_per_block(config)
    blocks: dict[str, _Block] = {
        "conv_in.": _Block("input_blocks.0.0.", _SAME, _SAME),
        "time_embedding.linear_1.": _Block("time_embed.0.", _SAME, _SAME),
        "time_embedding.linear_2.": _Block("time_embed.2.", _SAME, _SAME),
        "add_embedding.linear_1.": _Block("label_emb.0.0.", _SAME, _SAME),
        "add_embedding.linear_2.": _Block("label_emb.0.2.", _SAME, _SAME),
        # unCLIP's image-embedding input: the same stored layer, a `projection` class embedding.
        "class_embedding.linear_1.": _Block("label_emb.0.0.", _SAME, _SAME),
        "class_embedding.linear_2.": _Block("label_emb.0.2.", _SAME, _SAME),
        "conv_norm_out.": _Block("out.0.", _SAME, _SAME),
        "conv_out.": _Block("out.2.", _SAME, _SAME),
        "mid_block.resnets.0.": _Block("middle_block.0.", _UNET_RESNET, _SAME),
        "mid_block.attentions.0.": _Block("middle_block.1.", _SAME, _SAME),
        "mid_block.resnets.1.": _Block("middle_block.2.", _UNET_RESNET, _SAME),
    }
    for level in range(levels):
        for j in range(per_level):
            index = 1 + level * (per_level + 1) + j
            blocks[f"down_blocks.{level}.resnets.{j}."] = _Block(
                f"input_blocks.{index}.0.", _UNET_RESNET, _SAME
            )
            blocks[f"down_blocks.{level}.attentions.{j}."] = _Block(f"input_blocks.{index}.1.", _SAME, _SAME)
        if level < levels - 1:
            index = 1 + level * (per_level + 1) + per_level
            blocks[f"down_blocks.{level}.downsamplers.0.conv."] = _Block(
                f"input_blocks.{index}.0.op.", _SAME, _SAME
            )
    up_types = config["up_block_types"]
    for level in range(levels):
        for j in range(per_level + 1):
            index = level * (per_level + 1) + j
            blocks[f"up_blocks.{level}.resnets.{j}."] = _Block(
                f"output_blocks.{index}.0.", _UNET_RESNET, _SAME
            )
            blocks[f"up_blocks.{level}.attentions.{j}."] = _Block(f"output_blocks.{index}.1.", _SAME, _SAME)
        if level < levels - 1:
            index = level * (per_level + 1) + per_level
            slot = 2 if up_types[level].startswith("CrossAttn") else 1
            blocks[f"up_blocks.{level}.upsamplers.0.conv."] = _Block(
                f"output_blocks.{index}.{slot}.conv.", _SAME, _SAME
            )
    return PrefixTranslator(blocks, key_prefix)


def vae_translator(config: Mapping[str, Any], key_prefix: str = "first_stage_model.") -> PrefixTranslator:
    """diffusers AutoencoderKL names -> original LDM autoencoder keys, for this config."""
    levels = len(config["block_out_channels"])
    per_level = _layers_per_block(config)
    blocks: dict[str, _Block] = {
        "quant_conv.": _Block("quant_conv.", _SAME, _SAME),
        "post_quant_conv.": _Block("post_quant_conv.", _SAME, _SAME),
    }
    for part in ("encoder", "decoder"):
        blocks[f"{part}.conv_in."] = _Block(f"{part}.conv_in.", _SAME, _SAME)
        blocks[f"{part}.conv_norm_out."] = _Block(f"{part}.norm_out.", _SAME, _SAME)
        blocks[f"{part}.conv_out."] = _Block(f"{part}.conv_out.", _SAME, _SAME)
        blocks[f"{part}.mid_block.resnets.0."] = _Block(f"{part}.mid.block_1.", _VAE_RESNET, _SAME)
        blocks[f"{part}.mid_block.resnets.1."] = _Block(f"{part}.mid.block_2.", _VAE_RESNET, _SAME)
        blocks[f"{part}.mid_block.attentions.0."] = _Block(
            f"{part}.mid.attn_1.", _VAE_ATTENTION, _VAE_ATTENTION_OPS
        )
    for level in range(levels):
        for j in range(per_level):
            blocks[f"encoder.down_blocks.{level}.resnets.{j}."] = _Block(
                f"encoder.down.{level}.block.{j}.", _VAE_RESNET, _SAME
            )
        if level < levels - 1:
            blocks[f"encoder.down_blocks.{level}.downsamplers.0.conv."] = _Block(
                f"encoder.down.{level}.downsample.conv.", _SAME, _SAME
            )
        # The decoder's levels are numbered from the bottom in the original layout.
        original = levels - 1 - level
        for j in range(per_level + 1):
            blocks[f"decoder.up_blocks.{level}.resnets.{j}."] = _Block(
                f"decoder.up.{original}.block.{j}.", _VAE_RESNET, _SAME
            )
        if level < levels - 1:
            blocks[f"decoder.up_blocks.{level}.upsamplers.0.conv."] = _Block(
                f"decoder.up.{original}.upsample.conv.", _SAME, _SAME
            )
    return PrefixTranslator(blocks, key_prefix)


class IdentityTranslator:
    """Names stored as-is under a prefix (transformers CLIP in SD1/SDXL checkpoints, diffusers files)."""

    def __init__(self, key_prefix: str = "", skip: tuple[str, ...] = ("position_ids",)) -> None:
        self.key_prefix = key_prefix
        self._skip = skip

    def source(self, name: str) -> Source | None:
        if name.rsplit(".", 1)[-1] in self._skip:
            return None
        return Source(self.key_prefix + name)


def text_model_name(name: str) -> str:
    """A text-encoder parameter name without transformers' `text_model.` level.

    transformers 5 builds CLIPTextModel flat (`encoder.layers.0...`) and CLIPTextModelWithProjection
    with a `text_model.` level; files and LoRAs name them `text_model.encoder.layers.0...`.
    """
    return name[len("text_model.") :] if name.startswith("text_model.") else name


class HfClipTranslator:
    """transformers CLIP text names stored under `text_prefix` (which stands for `text_model.`)."""

    def __init__(self, text_prefix: str) -> None:
        self.text_prefix = text_prefix

    def source(self, name: str) -> Source | None:
        inner = text_model_name(name)
        if not inner.startswith(("embeddings.", "encoder.", "final_layer_norm.")) or inner.endswith(
            "position_ids"
        ):
            return None
        return Source(self.text_prefix + inner)


# One transformers CLIP encoder layer's modules -> their OpenCLIP resblock names (text and vision
# towers alike); q/k/v are thirds of OpenCLIP's fused in_proj.
_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPENCLIP_QKV = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}


def openclip_block_source(base: str, inner: str) -> Source | None:
    """A parameter of one encoder layer (`inner`: its name inside the layer) -> its key in the
    OpenCLIP resblock `base` (`...transformer.resblocks.N.`)."""
    module, _, param = inner.rpartition(".")
    if module in _OPENCLIP_QKV:
        return Source(f"{base}attn.in_proj_{param}", CHUNK3, _OPENCLIP_QKV[module])
    renamed = _OPENCLIP_LAYER.get(module)
    return Source(f"{base}{renamed}.{param}") if renamed is not None else None


class OpenClipTranslator:
    """transformers CLIPTextModel(WithProjection) names -> OpenCLIP text tower keys (SD2, SDXL-G)."""

    def __init__(self, key_prefix: str) -> None:
        self.key_prefix = key_prefix

    def source(self, name: str) -> Source | None:
        p = self.key_prefix
        if name == "text_projection.weight":
            return Source(p + "text_projection", TRANSPOSE)
        name = text_model_name(name)
        if name == "embeddings.token_embedding.weight":
            return Source(p + "token_embedding.weight")
        if name == "embeddings.position_embedding.weight":
            return Source(p + "positional_embedding")
        if name.startswith("final_layer_norm."):
            return Source(p + "ln_final." + name.rsplit(".", 1)[-1])
        if not name.startswith("encoder.layers."):
            return None
        rest = name[len("encoder.layers.") :]
        index, _, inner = rest.partition(".")
        return openclip_block_source(f"{p}transformer.resblocks.{index}.", inner)
