"""Which architecture a checkpoint holds, and its component configs, from keys and shapes.

Only the file's header is read (names and shapes), plus at most one small tensor for the SD2
prediction rule below. The same code serves real full-size checkpoints and the tiny test ones:
every size (channels, levels, layers, depths, context width, vocabulary) comes from the shapes,
and the shipped full-size configs (`configs/<family>/`) supply what shapes cannot tell.

Which families exist, how each is recognised, its shipped configs and its prediction rule are
declared by the family modules (`comfyd.models.families`); this module holds the generic part.
Every family's files also hold the VAE under `first_stage_model.*`.

What shapes cannot tell, and the rule used (ComfyUI's where it has one):
- OpenCLIP text towers load as transformers CLIPTextModelWithProjection when the file holds
  `text_projection` (SDXL's G always; SD2's H in single files), so the pooled output can be
  projected as ComfyUI does; diffusers SD2 folders have no projection and load without it.
- Attention heads: the family's head rule (fixed count, or channels // head width, at least 1
  for tiny models). Text encoders: heads = width // 64 (>= 1).
- Prediction type: the family's rule (a `v_pred` key means v-prediction for every family).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from comfyd.models import families
from comfyd.models.tensorfile import TensorFile

CONFIG_DIR = families.CONFIG_DIR
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


class _EncoderPrefixes(Mapping[str, dict[str, str]]):
    """Family -> encoder -> canonical single-file prefix, read from the registered families."""

    def __getitem__(self, family: str) -> dict[str, str]:
        try:
            spec = families.get(family)
        except ValueError:
            raise KeyError(family) from None
        return {e.name: e.single_file_prefixes[0] for e in spec.encoders}

    def __iter__(self) -> Iterator[str]:
        return iter(families.names())

    def __len__(self) -> int:
        return len(families.names())


ENCODER_PREFIXES: Mapping[str, dict[str, str]] = _EncoderPrefixes()


class UnknownCheckpointLayout(ValueError):
    """The file is not a checkpoint comfyd can load; the message says what was found."""


def family_manifest(family: str) -> dict[str, Any]:
    """A plain summary of a family's declaration: latent scale, default prediction, encoders."""
    spec = families.get(family)
    return {
        "family": spec.name,
        "latent_scale": spec.latent.scale_factor,
        "prediction": spec.sampling.prediction,
        "unet_heads": {"rule": spec.unet_heads_rule.kind, "value": spec.unet_heads_rule.value},
        "encoders": {
            e.name: {"config": e.config, "layout": e.layout, "tokenizer": dict(e.tokenizer)}
            for e in spec.encoders
        },
    }


@cache
def _shipped_config(family: str, name: str) -> str:
    return (families.get(family).configs / name).read_text()


def shipped_config(family: str, name: str) -> dict[str, Any]:
    """A fresh copy of one shipped full-size config (unet.json, vae.json, text_encoder_l.json ...)."""
    return json.loads(_shipped_config(family, name))


@dataclass(frozen=True)
class EncoderInfo:
    """One text encoder of a checkpoint: where it is stored and its transformers config."""

    name: str  # "l" | "h" | "g"
    layout: str  # "hf" (transformers names) | "openclip"
    # Stored-key prefix: for "hf" it replaces transformers' `text_model.` (e.g.
    # "cond_stage_model.transformer.text_model."); for "openclip" it precedes OpenCLIP's names.
    key_prefix: str
    config: dict[str, Any]
    with_projection: bool
    tokenizer: dict[str, Any]  # tokenizer options (pad token)


@dataclass(frozen=True)
class CheckpointInfo:
    family: str
    prediction: str  # "eps" | "v"
    prediction_rule: str  # which rule decided (for logs and errors)
    latent_scale: float
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    encoders: dict[str, EncoderInfo] = field(default_factory=dict)
    unet_prefix: str = UNET_PREFIX
    vae_prefix: str = VAE_PREFIX


def unet_heads(family: str, channels: int) -> int:
    """Attention heads of a UNet block with `channels` channels (the family's head rule)."""
    heads = families.get(family).unet_heads(channels)
    if channels % heads:
        raise UnknownCheckpointLayout(
            f"{family} UNet block of {channels} channels cannot split into {heads} heads"
        )
    return heads


def text_encoder_heads(width: int) -> int:
    return max(1, width // 64)


def detect_checkpoint(tf: TensorFile) -> CheckpointInfo:
    """The family, prediction type and component configs of an original-layout checkpoint."""
    keys = tf.keys()
    key_set = set(keys)
    name = tf.path.name
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in key_set:
        raise UnknownCheckpointLayout(_unknown_message(name, keys, "no UNet (model.diffusion_model.*)"))
    prefixes = _prefixes(keys)
    try:
        recognised = families.recognise_single_file(prefixes, key_set)
    except ValueError as exc:
        raise UnknownCheckpointLayout(f"{name}: {exc}") from None
    if recognised is None:
        near_miss = families.near_miss(prefixes, key_set)
        if near_miss:
            raise UnknownCheckpointLayout(f"{name} {near_miss}")
        raise UnknownCheckpointLayout(
            _unknown_message(
                name, keys, "a UNet but no text encoder this loader knows (CLIP-L, OpenCLIP-H/G)"
            )
        )
    family, encoder_prefixes = recognised
    if f"{VAE_PREFIX}encoder.conv_in.weight" not in key_set:
        raise UnknownCheckpointLayout(_unknown_message(name, keys, "no VAE (first_stage_model.*)"))

    shapes = {k: tf.shape(k) for k in keys}
    encoders: dict[str, EncoderInfo] = {}
    for spec in family.encoders:
        prefix = encoder_prefixes[spec.name]
        base = shipped_config(family.name, spec.config)
        if spec.layout == "hf":
            prefix = _hf_text_prefix(prefix, key_set)
            config = infer_hf_clip_config(shapes, prefix, base)
        else:
            config = infer_openclip_config(shapes, prefix, base)
        encoders[spec.name] = EncoderInfo(
            name=spec.name,
            layout=spec.layout,
            key_prefix=prefix,
            config=config,
            with_projection=config["architectures"][0] == "CLIPTextModelWithProjection",
            tokenizer=dict(spec.tokenizer),
        )
    pooled_dim = (
        encoders[family.pooled_encoder].config["projection_dim"] if family.pooled_encoder else None
    )
    unet_config = infer_unet_config(
        shapes, UNET_PREFIX, family.name, shipped_config(family.name, "unet.json"), pooled_dim
    )
    context = sum(e.config["hidden_size"] for e in encoders.values())
    if unet_config["cross_attention_dim"] != context:
        raise UnknownCheckpointLayout(
            f"{name}: the UNet attends to {unet_config['cross_attention_dim']}-wide text features but the "
            f"text encoder(s) produce {context}; the file mixes parts of different models"
        )
    channels = family.latent.channels
    if unet_config["in_channels"] != channels:
        raise UnknownCheckpointLayout(
            f"{name}: a {family.name} UNet with {unet_config['in_channels']} input channels (an inpainting or "
            f"other conditioned variant); only {channels}-channel text-to-image checkpoints are supported"
        )
    vae_config = infer_vae_config(shapes, VAE_PREFIX, shipped_config(family.name, "vae.json"))
    prediction, rule = family.prediction(tf, unet_config, key_set)
    return CheckpointInfo(
        family=family.name,
        prediction=prediction,
        prediction_rule=rule,
        latent_scale=float(family.latent.scale_factor),
        unet_config=unet_config,
        vae_config=vae_config,
        encoders=encoders,
    )


def _prefixes(keys: list[str]) -> set[str]:
    """Every dotted prefix (ending in '.') of up to four components that some key starts with."""
    out: set[str] = set()
    for key in keys:
        parts = key.split(".")
        for n in range(1, min(len(parts), 5)):
            out.add(".".join(parts[:n]) + ".")
    return out


def _unknown_message(name: str, keys: list[str], what: str) -> str:
    groups = Counter(".".join(k.split(".")[:2]) if "." in k else k.split("_")[0] + "_*" for k in keys)
    found = ", ".join(f"{g} ({n} keys)" for g, n in groups.most_common(8)) or "no tensors at all"
    kind = ""
    if any(k.startswith(("lora_unet_", "lora_te", "unet.", "text_encoder")) for k in keys) and any(
        "lora" in k for k in keys
    ):
        kind = " It looks like a LoRA: put it in loras/ and use a LoRA loader."
    elif any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.")) for k in keys):
        kind = " It looks like a standalone VAE: put it in vae/ and use VAELoader."
    return (
        f"unrecognised checkpoint layout in {name}: found {what}. Expected model.diffusion_model.* with "
        f"cond_stage_model.* (SD1/SD2) or conditioner.embedders.* (SDXL) and first_stage_model.*. "
        f"Key groups found: {found}.{kind}"
    )


def _indices(shapes: Mapping[str, tuple[int, ...]], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (a regex with one group) over the keys."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes if (m := regex.match(k))}
    return sorted(found)


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise UnknownCheckpointLayout(f"expected tensor {key} is missing") from None


def infer_unet_config(
    shapes: Mapping[str, tuple[int, ...]],
    prefix: str,
    family: str,
    base: dict[str, Any],
    pooled_dim: int | None = None,
) -> dict[str, Any]:
    """A diffusers UNet2DConditionModel config for the original-layout UNet under `prefix`."""
    p = re.escape(prefix)
    inputs = _indices(shapes, rf"{p}input_blocks\.(\d+)\.")
    outputs = _indices(shapes, rf"{p}output_blocks\.(\d+)\.")
    downsamplers = [i for i in inputs if f"{prefix}input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsamplers) + 1
    per_level, remainder = divmod(len(inputs) - 1 - len(downsamplers), levels)
    if remainder or per_level < 1 or len(outputs) != levels * (per_level + 1):
        raise UnknownCheckpointLayout(
            f"UNet block structure not recognised: {len(inputs)} input blocks ({len(downsamplers)} "
            f"downsamplers), {len(outputs)} output blocks"
        )
    channels: list[int] = []
    depths: list[int] = []
    for level in range(levels):
        first = 1 + level * (per_level + 1)
        channels.append(_shape(shapes, f"{prefix}input_blocks.{first}.0.out_layers.3.weight")[0])
        depth = len(_indices(shapes, rf"{p}input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\."))
        depths.append(depth)
    attention = [d > 0 for d in depths]
    mid_depth = len(_indices(shapes, rf"{p}middle_block\.1\.transformer_blocks\.(\d+)\."))
    if mid_depth == 0:
        raise UnknownCheckpointLayout("UNet middle block has no transformer; not an SD layout")
    # diffusers gives the middle block the last level's depth, so a last level without attention
    # (SD1/SD2) carries the middle block's depth; other levels without attention ignore theirs.
    layer_depths = [d if d > 0 else 1 for d in depths]
    if depths[-1] == 0:
        layer_depths[-1] = mid_depth
    if layer_depths[-1] != mid_depth:
        raise UnknownCheckpointLayout(
            f"UNet middle block depth {mid_depth} differs from the last level's depth {layer_depths[-1]}"
        )
    first_attention = next((1 + level * (per_level + 1) for level in range(levels) if attention[level]), None)
    if first_attention is None:
        raise UnknownCheckpointLayout("UNet has no cross-attention blocks; not a text-to-image SD layout")
    attn_prefix = f"{prefix}input_blocks.{first_attention}.1."
    context_dim = _shape(shapes, f"{attn_prefix}transformer_blocks.0.attn2.to_k.weight")[1]
    linear_projection = len(_shape(shapes, f"{attn_prefix}proj_in.weight")) == 2
    model_channels = _shape(shapes, f"{prefix}input_blocks.0.0.weight")[0]
    time_embed_dim = _shape(shapes, f"{prefix}time_embed.0.weight")[0]

    config = dict(base)
    config.update(
        in_channels=_shape(shapes, f"{prefix}input_blocks.0.0.weight")[1],
        out_channels=_shape(shapes, f"{prefix}out.2.weight")[0],
        block_out_channels=channels,
        layers_per_block=per_level,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        transformer_layers_per_block=layer_depths,
        cross_attention_dim=context_dim,
        attention_head_dim=[unet_heads(family, c) for c in channels],
        use_linear_projection=linear_projection,
    )
    if model_channels != channels[0]:
        raise UnknownCheckpointLayout(
            f"UNet conv_in has {model_channels} channels but level 0 has {channels[0]}"
        )
    if time_embed_dim != 4 * channels[0]:
        config["time_embedding_dim"] = time_embed_dim
    for key in (
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
        "class_embed_type",
    ):
        config.pop(key, None)
    label_key = f"{prefix}label_emb.0.0.weight"
    if label_key in shapes:
        try:
            config.update(families.get(family).adm_unet_config(shapes[label_key][1], pooled_dim))
        except ValueError as exc:
            raise UnknownCheckpointLayout(str(exc)) from None
    return config


def infer_vae_config(
    shapes: Mapping[str, tuple[int, ...]], prefix: str, base: dict[str, Any]
) -> dict[str, Any]:
    """A diffusers AutoencoderKL config for the original-layout autoencoder under `prefix`."""
    p = re.escape(prefix)
    levels = _indices(shapes, rf"{p}encoder\.down\.(\d+)\.")
    if not levels:
        raise UnknownCheckpointLayout(f"no VAE encoder levels under {prefix}encoder.down.*")
    per_level = len(_indices(shapes, rf"{p}encoder\.down\.0\.block\.(\d+)\."))
    channels = [_shape(shapes, f"{prefix}encoder.down.{i}.block.0.conv1.weight")[0] for i in levels]
    config = dict(base)
    config.update(
        in_channels=_shape(shapes, f"{prefix}encoder.conv_in.weight")[1],
        out_channels=_shape(shapes, f"{prefix}decoder.conv_out.weight")[0],
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        layers_per_block=per_level,
        latent_channels=_shape(shapes, f"{prefix}decoder.conv_in.weight")[1],
        use_quant_conv=f"{prefix}quant_conv.weight" in shapes,
        use_post_quant_conv=f"{prefix}post_quant_conv.weight" in shapes,
        mid_block_add_attention=f"{prefix}encoder.mid.attn_1.q.weight" in shapes,
    )
    return config


def _hf_text_prefix(prefix: str, keys: set[str]) -> str:
    """Where transformers' `text_model.*` names are stored (old exports omit `text_model.`)."""
    for text in (f"{prefix}text_model.", prefix):
        if f"{text}embeddings.token_embedding.weight" in keys:
            return text
    raise UnknownCheckpointLayout(f"CLIP text encoder under {prefix} has no token embedding")


def infer_hf_clip_config(
    shapes: Mapping[str, tuple[int, ...]], text: str, base: dict[str, Any]
) -> dict[str, Any]:
    """transformers CLIPTextConfig values for a CLIP-L style encoder; `text` replaces `text_model.`."""
    p = re.escape(text)
    vocab, width = _shape(shapes, f"{text}embeddings.token_embedding.weight")
    config = dict(base)
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=_shape(shapes, f"{text}embeddings.position_embedding.weight")[0],
        num_hidden_layers=len(_indices(shapes, rf"{p}encoder\.layers\.(\d+)\.")),
        intermediate_size=_shape(shapes, f"{text}encoder.layers.0.mlp.fc1.weight")[0],
        num_attention_heads=text_encoder_heads(width),
    )
    if config["architectures"][0] != "CLIPTextModelWithProjection":
        config["projection_dim"] = width
    return config


def infer_openclip_config(
    shapes: Mapping[str, tuple[int, ...]], prefix: str, base: dict[str, Any]
) -> dict[str, Any]:
    """transformers CLIPTextConfig values for an OpenCLIP text tower (SD2's H, SDXL's bigG)."""
    p = re.escape(prefix)
    vocab, width = _shape(shapes, f"{prefix}token_embedding.weight")
    config = dict(base)
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=_shape(shapes, f"{prefix}positional_embedding")[0],
        num_hidden_layers=len(_indices(shapes, rf"{p}transformer\.resblocks\.(\d+)\.")),
        intermediate_size=_shape(shapes, f"{prefix}transformer.resblocks.0.mlp.c_fc.weight")[0],
        num_attention_heads=text_encoder_heads(width),
    )
    projection = shapes.get(f"{prefix}text_projection")
    if projection is not None:
        # ComfyUI projects the pooled output where the file has the projection (SD2's H too).
        config["architectures"] = ["CLIPTextModelWithProjection"]
        config["projection_dim"] = projection[1]
    else:
        config["projection_dim"] = width
    return config


def infer_diffusers_vae_config(shapes: Mapping[str, tuple[int, ...]], base: dict[str, Any]) -> dict[str, Any]:
    """A diffusers AutoencoderKL config for a VAE file stored with diffusers names."""
    levels = _indices(shapes, r"encoder\.down_blocks\.(\d+)\.")
    if not levels:
        raise UnknownCheckpointLayout("no VAE encoder levels under encoder.down_blocks.*")
    per_level = len(_indices(shapes, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."))
    channels = [_shape(shapes, f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in levels]
    config = dict(base)
    config.update(
        in_channels=_shape(shapes, "encoder.conv_in.weight")[1],
        out_channels=_shape(shapes, "decoder.conv_out.weight")[0],
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        layers_per_block=per_level,
        latent_channels=_shape(shapes, "decoder.conv_in.weight")[1],
        use_quant_conv="quant_conv.weight" in shapes,
        use_post_quant_conv="post_quant_conv.weight" in shapes,
        mid_block_add_attention="encoder.mid_block.attentions.0.to_q.weight" in shapes,
    )
    return config
