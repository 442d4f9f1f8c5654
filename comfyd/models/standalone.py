"""Model parts in files of their own, as ComfyUI's split loaders read them.

- UNETLoader: a denoising network alone (`diffusion_models/`, also `unet/`); the family whose
  `diffusion_model_prefix` recognises the keys builds it (`Family.load_diffusion_model`).
- CLIPLoader / DualCLIPLoader: text encoders alone (`text_encoders/`, also `clip/`), each file a
  CLIP text model (transformers layout, `text_model.*`) or a T5 encoder (`encoder.block.*`); the
  loader's `type` names the family (`Family.clip_types`), which says which of its encoders each
  kind of file is.
Unknown layouts and combinations are refused with a message naming what was found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from comfyd.models import detect, families, t5_encoder
from comfyd.models.detect import UnknownCheckpointLayout
from comfyd.models.devices import ComputePlan
from comfyd.models.keymap import HfClipTranslator
from comfyd.models.loader import empty_text_encoder, materialize
from comfyd.models.tensorfile import TensorFile


def load_diffusion_model(
    path: Path, plan: ComputePlan, allow_pickle: bool, weight_dtype: str
) -> tuple[families.Family, Any, Any]:
    """(family, network, model sampling) of a diffusion-model file."""
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        keys = set(tf.keys())
        for family in families.all_families():
            prefix = family.diffusion_model_prefix(keys)
            if prefix is not None:
                network, sampling = family.load_diffusion_model(tf, prefix, plan, weight_dtype)
                return family, network, sampling
    shown = ", ".join(sorted(keys)[:5])
    raise UnknownCheckpointLayout(
        f"{path.name} is not a diffusion model comfyd can load (supported: Flux.1 transformers in "
        f"BFL's layout); first keys: {shown}"
    )


def family_for_clip_type(clip_type: str) -> families.Family:
    for family in families.all_families():
        if clip_type in family.clip_types:
            return family
    supported = sorted(t for f in families.all_families() for t in f.clip_types)
    raise ValueError(
        f"CLIP type {clip_type!r} is not supported yet; supported: {', '.join(supported) or 'none'}"
    )


def _clip_prefix(keys: set[str]) -> str | None:
    for prefix in ("", "text_model.", "transformer.text_model.", "transformer."):
        if f"{prefix}embeddings.token_embedding.weight" in keys:
            return prefix
    return None


def load_text_encoder(path: Path, plan: ComputePlan, allow_pickle: bool) -> tuple[str, nn.Module, str]:
    """(kind "clip" | "t5", encoder module, file name) of one text-encoder file."""
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        keys = set(tf.keys())
        shapes = tf.shapes()
        clip_text = _clip_prefix(keys)
        if clip_text is not None:
            base = detect.shipped_config(families.DEFAULT_FAMILY, "text_encoder_l.json")
            config = detect.infer_hf_clip_config(shapes, clip_text, base)
            module = materialize(
                empty_text_encoder(config), HfClipTranslator(clip_text), tf, plan.device, plan.clip_dtype,
                rounding=plan.clip_weight_rounding, what="CLIP text encoder",
            )  # fmt: skip
            return "clip", module, path.name
        t5_prefix = t5_encoder.find_prefix(keys)
        if t5_prefix is not None:
            config = t5_encoder.infer_config(shapes, t5_prefix)
            module = materialize(
                t5_encoder.empty_encoder(config), t5_encoder.T5Translator(t5_prefix, keys), tf,
                plan.device, plan.clip_dtype, rounding=plan.clip_weight_rounding, what="T5 encoder",
            )  # fmt: skip
            return "t5", module, path.name
    raise UnknownCheckpointLayout(
        f"{path.name} is not a text encoder comfyd can load (CLIP text model or T5 encoder); "
        f"first keys: {', '.join(sorted(keys)[:5])}"
    )


def assign_encoders(family: families.Family, loaded: list[tuple[str, nn.Module, str]]) -> dict[str, nn.Module]:
    """Encoder name -> module: each file takes the family's encoder of its kind, each one once."""
    encoders: dict[str, nn.Module] = {}
    for kind, module, name in loaded:
        spec = family.encoder_for_kind(kind)
        if spec is None or spec.name in encoders:
            raise ValueError(f"{name} ({kind} text encoder) has no place in a {family.name} CLIP")
        encoders[spec.name] = module
    missing = [e.name for e in family.encoders if e.name not in encoders]
    if missing:
        raise ValueError(
            f"a {family.name} CLIP needs text encoder(s) {[e.name for e in family.encoders]}; "
            f"missing {missing}"
        )
    return encoders
