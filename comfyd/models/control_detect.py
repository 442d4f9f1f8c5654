"""Which control model a file holds (ControlNet or T2I-Adapter), in which layout, from its keys.

Layouts ComfyUI's ControlNetLoader reads, for SD1.x, SD2.x and SDXL:
- original ControlNet: the UNet's input and middle blocks with `input_hint_block.*`,
  `zero_convs.*` and `middle_block_out.*`, bare or under `control_model.` (the `.pth` era files,
  also the "diff" ControlNets that hold a `difference` marker);
- diffusers ControlNet (`controlnet_cond_embedding.*`, `controlnet_down_blocks.*`), also a union
  ControlNet (`task_embedding`, `control_add_embedding.*`, `transformer_layes.*`,
  `spatial_ch_projs.*`; see control_union). ComfyUI reads the union parts only in this layout:
  an original-layout file carrying them loads as a plain ControlNet there, and here;
- T2I-Adapter, original (`conv_in`, `body.N.*`) or diffusers (`adapter.body.N.resnets.M.*`).

Everything about the architecture comes from the shapes; the family (for the attention head
rule) is the one whose UNet attends to the same context width and takes the same vector input.
A file no family's width fits (comfyd's tiny test files) names its family in its
`comfyd.family` metadata (and `comfyd.pooled_dim`, its pooled text width), else gets the default
family's rule (ComfyUI falls back to its base
config the same way).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from comfyd.models import families
from comfyd.models.control_union import UnionConfig, UnionLayoutError, union_config
from comfyd.models.detect import UnknownCheckpointLayout, _indices, infer_unet_config, shipped_config
from comfyd.models.keymap import COPY, IdentityTranslator, Source, Translator, unet_translator

CONTROLNET = "controlnet"
T2I_ADAPTER = "t2i_adapter"
DIFFUSERS_HINT_KEY = "controlnet_cond_embedding.conv_in.weight"
UNION_KEY = "control_add_embedding.linear_1.bias"
DIFFERENCE_KEY = "difference"
HINT_BLOCKS = "input_hint_block."
FAMILY_METADATA = "comfyd.family"
POOLED_METADATA = "comfyd.pooled_dim"


class UnknownControlLayout(UnknownCheckpointLayout):
    """A file in controlnet/ that is no ControlNet or T2I-Adapter layout comfyd reads."""


@dataclass(frozen=True)
class ControlInfo:
    kind: str  # CONTROLNET | T2I_ADAPTER
    layout: str  # "original" | "diffusers"
    config: dict[str, Any]  # diffusers ControlNetModel / T2IAdapter config
    translator: Translator  # module parameter name -> stored key
    family: str | None = None  # ControlNet: the family whose UNet it drives
    difference: bool = False  # weights stored as a difference to the model's UNet
    union: UnionConfig | None = None  # a union ControlNet's extra parts


def detect_control(
    keys: list[str], shapes: Mapping[str, tuple[int, ...]], name: str, metadata: Mapping[str, str] | None = None
) -> ControlInfo:
    key_set = set(keys)
    if DIFFUSERS_HINT_KEY in key_set:
        info = _diffusers_controlnet(shapes, name, metadata or {})
        # ComfyUI's marker for a union ControlNet is this one key.
        if UNION_KEY in key_set:
            try:
                union = union_config(shapes, name)
            except UnionLayoutError as exc:
                raise UnknownControlLayout(str(exc)) from None
            if union.projection != info.config["block_out_channels"][0]:
                raise UnknownControlLayout(
                    f"{name}: spatial_ch_projs gives {union.projection} channels, the hint features have "
                    f"{info.config['block_out_channels'][0]}"
                )
            info = replace(info, union=union)
        return info
    for prefix in ("control_model.", ""):
        if f"{prefix}zero_convs.0.0.weight" in key_set:
            return _original_controlnet(shapes, prefix, name, DIFFERENCE_KEY in key_set, metadata or {})
    adapter = _t2i_adapter(key_set, shapes, name)
    if adapter is not None:
        return adapter
    groups = sorted({k.split(".")[0] for k in keys})[:8]
    raise UnknownControlLayout(
        f"{name} is not a ControlNet or T2I-Adapter layout comfyd knows (expected zero_convs.* with "
        f"input_hint_block.*, controlnet_cond_embedding.*, or a T2I-Adapter's conv_in/body.*); "
        f"key groups found: {', '.join(groups) or 'none'}"
    )


def _family(context_dim: int, vector: bool, metadata: Mapping[str, str]) -> families.Family:
    # UNet families only: a transformer family (Flux, Qwen-Image, Wan, ...) has no SD ControlNet,
    # even when it borrows SD1's config folder for its CLIP.
    unet_families = [
        f for f in families.all_families()
        if type(f).diffusion_model_prefix is families.Family.diffusion_model_prefix
    ]  # fmt: skip
    candidates = [f for f in unet_families if (f.vector_conditioning is not None) == vector]
    for family in candidates:
        if shipped_config(family.name, "unet.json").get("cross_attention_dim") == context_dim:
            return family
    named = metadata.get(FAMILY_METADATA)
    if named in families.names():
        return families.get(named)
    default = families.get(families.DEFAULT_FAMILY)
    if default in candidates:
        return default
    if candidates:
        return candidates[0]
    raise UnknownControlLayout(
        f"no model family attends to {context_dim}-wide text features"
        f"{' with a vector input' if vector else ''}; the ControlNet fits no UNet comfyd loads"
    )


def _pooled_dim(family: families.Family, metadata: Mapping[str, str]) -> int | None:
    """The pooled text width inside the vector input (the family's; tiny files name theirs)."""
    if family.pooled_encoder is None:
        return None
    if metadata.get(POOLED_METADATA, "").isdigit():
        return int(metadata[POOLED_METADATA])
    return int(shipped_config(family.name, family.encoder(family.pooled_encoder).config)["projection_dim"])


def controlnet_config_from_unet(unet: dict[str, Any], hint_channels: int, embedding: list[int]) -> dict[str, Any]:
    from diffusers import ControlNetModel

    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in unet.items() if k in accepted and not k.startswith("_")}
    config.update(conditioning_channels=hint_channels, conditioning_embedding_out_channels=embedding)
    return config


# --- original layout --------------------------------------------------------------------------


class ControlNetTranslator:
    """diffusers ControlNetModel names -> original ControlNet keys (UNet half + control parts)."""

    def __init__(self, unet_config: Mapping[str, Any], prefix: str, embedding_blocks: int) -> None:
        self._unet = unet_translator(unet_config, key_prefix=prefix)
        self._prefix = prefix
        self._conv_out = 2 * (embedding_blocks + 1)

    def source(self, name: str) -> Source | None:
        p = self._prefix
        module, _, param = name.rpartition(".")
        if module == "controlnet_cond_embedding.conv_in":
            return Source(f"{p}{HINT_BLOCKS}0.{param}")
        if module == "controlnet_cond_embedding.conv_out":
            return Source(f"{p}{HINT_BLOCKS}{self._conv_out}.{param}")
        if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)", module):
            return Source(f"{p}{HINT_BLOCKS}{2 * (int(m.group(1)) + 1)}.{param}")
        if m := re.fullmatch(r"controlnet_down_blocks\.(\d+)", module):
            return Source(f"{p}zero_convs.{m.group(1)}.0.{param}")
        if module == "controlnet_mid_block":
            return Source(f"{p}middle_block_out.0.{param}", COPY)
        return self._unet.source(name)


def _original_controlnet(
    shapes: Mapping[str, tuple[int, ...]], prefix: str, name: str, difference: bool, metadata: Mapping[str, str]
) -> ControlInfo:
    inputs = _indices(shapes, rf"{re.escape(prefix)}input_blocks\.(\d+)\.")
    # A ControlNet is a UNet without its decoder half: give the config reader the output blocks
    # and output conv it counts (a UNet has as many output blocks as input blocks).
    padded = dict(shapes)
    for index in inputs:
        padded[f"{prefix}output_blocks.{index}.0.skip"] = (0,)
    in_channels = shapes.get(f"{prefix}input_blocks.0.0.weight", (0, 4))[1]
    padded[f"{prefix}out.2.weight"] = (in_channels,)
    context = _shape(shapes, _first_attention_key(shapes, prefix))[1]
    family = _family(context, f"{prefix}label_emb.0.0.weight" in shapes, metadata)
    unet = infer_unet_config(
        padded, prefix, family.name, shipped_config(family.name, "unet.json"), _pooled_dim(family, metadata)
    )
    hint_convs = _indices(shapes, rf"{re.escape(prefix + HINT_BLOCKS)}(\d+)\.weight")
    if not hint_convs or hint_convs != list(range(0, 2 * len(hint_convs), 2)):
        raise UnknownControlLayout(f"{name}: the hint encoder ({HINT_BLOCKS}*) has an unexpected layout")
    embedding = [_shape(shapes, f"{prefix}{HINT_BLOCKS}{i}.weight")[0] for i in hint_convs[:-1:2]]
    hint_channels = _shape(shapes, f"{prefix}{HINT_BLOCKS}0.weight")[1]
    config = controlnet_config_from_unet(unet, hint_channels, embedding)
    translator = ControlNetTranslator(unet, prefix, len(hint_convs) - 2)
    return ControlInfo(CONTROLNET, "original", config, translator, family.name, difference)


def _first_attention_key(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> str:
    pattern = re.compile(rf"{re.escape(prefix)}input_blocks\.\d+\.1\.transformer_blocks\.0\.attn2\.to_k\.weight")
    found = sorted(k for k in shapes if pattern.fullmatch(k))
    if not found:
        raise UnknownControlLayout("the ControlNet has no cross-attention blocks; not an SD ControlNet")
    return found[0]


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise UnknownControlLayout(f"expected tensor {key} is missing") from None


# --- diffusers layout -------------------------------------------------------------------------


def _diffusers_controlnet(
    shapes: Mapping[str, tuple[int, ...]], name: str, metadata: Mapping[str, str]
) -> ControlInfo:
    levels = _indices(shapes, r"down_blocks\.(\d+)\.")
    if not levels:
        raise UnknownControlLayout(f"{name}: a diffusers ControlNet without down_blocks")
    per_level = len(_indices(shapes, r"down_blocks\.0\.resnets\.(\d+)\."))
    channels = [_shape(shapes, f"down_blocks.{level}.resnets.0.conv2.weight")[0] for level in levels]
    depths = [len(_indices(shapes, rf"down_blocks\.{level}\.attentions\.0\.transformer_blocks\.(\d+)\."))
              for level in levels]  # fmt: skip
    mid_depth = len(_indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    attention_levels = [level for level in levels if depths[level] > 0]
    if not attention_levels or mid_depth == 0:
        raise UnknownControlLayout(f"{name}: a diffusers ControlNet without cross-attention")
    attn = f"down_blocks.{attention_levels[0]}.attentions.0."
    context = _shape(shapes, f"{attn}transformer_blocks.0.attn2.to_k.weight")[1]
    vector = "add_embedding.linear_1.weight" in shapes
    family = _family(context, vector, metadata)
    layer_depths = [d if d > 0 else 1 for d in depths]
    if depths[-1] == 0:
        layer_depths[-1] = mid_depth
    unet = dict(shipped_config(family.name, "unet.json"))
    unet.update(
        in_channels=_shape(shapes, "conv_in.weight")[1],
        block_out_channels=channels,
        layers_per_block=per_level,
        down_block_types=["CrossAttnDownBlock2D" if d > 0 else "DownBlock2D" for d in depths],
        transformer_layers_per_block=layer_depths,
        cross_attention_dim=context,
        attention_head_dim=[family.unet_heads(c) for c in channels],
        use_linear_projection=len(_shape(shapes, f"{attn}proj_in.weight")) == 2,
    )
    if vector:
        adm_in = _shape(shapes, "add_embedding.linear_1.weight")[1]
        pooled = _pooled_dim(family, metadata) or 0
        if adm_in <= pooled or (adm_in - pooled) % 6:
            raise UnknownControlLayout(f"{name}: a vector input of {adm_in} does not fit an SDXL layout")
        unet.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm_in - pooled) // 6,
            projection_class_embeddings_input_dim=adm_in,
        )
    else:
        for key in ("addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim"):
            unet.pop(key, None)
    blocks = _indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.weight")
    embedding = [_shape(shapes, DIFFUSERS_HINT_KEY)[0]]
    embedding += [_shape(shapes, f"controlnet_cond_embedding.blocks.{i}.weight")[0] for i in blocks[1::2]]
    config = controlnet_config_from_unet(unet, _shape(shapes, DIFFUSERS_HINT_KEY)[1], embedding)
    return ControlInfo(CONTROLNET, "diffusers", config, IdentityTranslator(), family.name)


# --- T2I-Adapter ------------------------------------------------------------------------------


def _t2i_adapter(key_set: set[str], shapes: Mapping[str, tuple[int, ...]], name: str) -> ControlInfo | None:
    if "body.0.in_conv.weight" in key_set:
        raise UnknownControlLayout(f"{name} is a light T2I-Adapter; comfyd runs only the full adapter")
    if "adapter.body.0.resnets.0.block1.weight" in key_set:
        translator: Translator = IdentityTranslator()
        conv_in, body = "adapter.conv_in.weight", "adapter.body.{}.resnets.{}.block2.weight"
    elif "conv_in.weight" in key_set and "body.0.block2.weight" in key_set:
        translator = T2IOriginalTranslator()
        conv_in, body = "conv_in.weight", "body.{}.block2.weight"
    else:
        return None
    if any(k.endswith("down_opt.op.weight") for k in key_set):
        raise UnknownControlLayout(f"{name}: a T2I-Adapter with convolution downsampling is not supported")
    cin, channel = _shape(shapes, conv_in)[1], _shape(shapes, conv_in)[0]
    if cin in (256, 768):
        raise UnknownControlLayout(f"{name} is an SDXL T2I-Adapter; comfyd runs SD1.x/SD2.x adapters only")
    ksize = _shape(shapes, body.format(0, 0) if "{}.resnets" in body else body.format(0))[2]
    if ksize != 1:
        raise UnknownControlLayout(f"{name}: a T2I-Adapter with {ksize}x{ksize} body kernels is not supported")
    config = {
        "in_channels": cin // 64,
        "channels": [channel, channel * 2, channel * 4, channel * 4],
        "num_res_blocks": 2,
        "downscale_factor": 8,
        "adapter_type": "full_adapter",
    }
    return ControlInfo(T2I_ADAPTER, "diffusers" if isinstance(translator, IdentityTranslator) else "original",
                       config, translator)  # fmt: skip


class T2IOriginalTranslator:
    """diffusers T2IAdapter names -> original adapter keys (`body.{2 * level + block}.*`)."""

    def source(self, name: str) -> Source | None:
        if not name.startswith("adapter."):
            return None
        rest = name[len("adapter."):]
        if m := re.fullmatch(r"body\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
            return Source(f"body.{2 * int(m.group(1)) + int(m.group(2))}.{m.group(3)}")
        if m := re.fullmatch(r"body\.(\d+)\.in_conv\.(.+)", rest):
            return Source(f"body.{2 * int(m.group(1))}.in_conv.{m.group(2)}")
        return Source(rest)

