"""Model parts in files of their own, as ComfyUI's split loaders read them.

- UNETLoader: a denoising network alone (`diffusion_models/`, also `unet/`); the family whose
  `diffusion_model_prefix` recognises the keys builds it (`Family.load_diffusion_model`).
- CheckpointLoaderSimple on an all-in-one file of such a family (Flux: the transformer under
  `model.diffusion_model.`, the text encoders under each encoder's checkpoint prefix, the VAE
  under `Family.checkpoint_vae_prefix`): `load_split_family_checkpoint`.
- CLIPLoader / DualCLIPLoader: text encoders alone (`text_encoders/`, also `clip/`), each file a
  CLIP text model (transformers layout, `text_model.*`) or a T5 encoder (`encoder.block.*`); the
  loader's `type` names the family (`Family.clip_types`), which says which of its encoders each
  kind of file is.
Unknown layouts and combinations are refused with a message naming what was found.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from comfyd.models import (
    detect,
    families,
    gemma2_encoder,
    llama_encoder,
    mistral3_encoder,
    qwen3_encoder,
    qwen25_encoder,
    qwen25_vision,
    t5_encoder,
    text_encoder_fp8,
    umt5_encoder,
)
from comfyd.models.detect import UnknownCheckpointLayout
from comfyd.models.devices import ComputePlan
from comfyd.models.families.base import UNET_PREFIX
from comfyd.models.keymap import HfClipTranslator
from comfyd.models.loader import empty_text_encoder, materialize
from comfyd.models.tensorfile import TensorFile


def load_diffusion_model(
    path: Path, plan: ComputePlan, allow_pickle: bool, weight_dtype: str
) -> tuple[families.Family, Any, Any]:
    """(family, network, model sampling) of a diffusion-model file."""
    with TensorFile(path, allow_pickle=allow_pickle, gguf_quantized=plan.gguf_on_the_fly) as tf:
        keys = set(tf.keys())
        claims = [(f, p) for f in families.all_families() if (p := f.diffusion_model_prefix(keys)) is not None]
        if claims:  # shapes tell variants with the same keys apart (Wan 2.2 TI2V from Wan 2.1)
            shapes = tf.shapes()
            claims = [(f, p) for f, p in claims if f.accepts_diffusion_model(shapes, p)]
        refined = {f.refines for f, _ in claims}
        for family, prefix in claims:
            if family.name not in refined:
                network, sampling = family.load_diffusion_model(tf, prefix, plan, weight_dtype)
                return family, network, sampling
    shown = ", ".join(sorted(keys)[:5])
    raise UnknownCheckpointLayout(
        f"{path.name} is not a diffusion model comfyd can load (families with diffusion-model files: "
        f"{_diffusion_families()}); first keys: {shown}"
    )


def _diffusion_families() -> str:
    """The families whose networks come as diffusion-model files (UNETLoader)."""
    own = [f.name for f in families.all_families()
           if type(f).diffusion_model_prefix is not families.Family.diffusion_model_prefix]  # fmt: skip
    return ", ".join(own)


def family_for_clip_type(clip_type: str) -> families.Family:
    for family in families.all_families():
        if clip_type in family.clip_types:
            return family
    supported = sorted(t for f in families.all_families() for t in f.clip_types)
    raise ValueError(
        f"CLIP type {clip_type!r} is not supported yet; supported: {', '.join(supported) or 'none'}"
    )


def clip_family(family: families.Family, loaded: list[tuple[str, nn.Module, str]]) -> families.Family:
    """The family a CLIP loader's files build: `family` (the first for the loader's type), or
    another family of the same type whose encoders take the kinds of files loaded (type
    "lumina2" builds Lumina 2's Gemma 2 or Z-Image's Qwen3, as ComfyUI decides by the keys)."""
    kinds = {kind for kind, _, _ in loaded}
    peers = [f for f in families.all_families() if f is not family and set(f.clip_types) & set(family.clip_types)]
    for candidate in (family, *peers):
        if all(candidate.encoder_for_kind(kind) is not None for kind in kinds):
            return candidate
    return family


def _clip_prefix(keys: set[str], base: str = "") -> str | None:
    for prefix in ("", "text_model.", "transformer.text_model.", "transformer."):
        if f"{base}{prefix}embeddings.token_embedding.weight" in keys:
            return base + prefix
    return None


def text_encoder_in(tf: TensorFile, plan: ComputePlan, base: str = "") -> tuple[str, nn.Module] | None:
    """(kind "clip" | "t5" | "umt5" | "llama", module) of the text encoder stored under `base` in
    `tf`, or None."""
    keys = set(tf.keys())
    clip_text = _clip_prefix(keys, base)
    if clip_text is not None:
        if is_clip_g(keys, clip_text):
            return "clip_g", _clip_g_from(tf, keys, clip_text, plan)
        all_shapes = tf.shapes()
        shapes = {k: v for k, v in all_shapes.items() if k.startswith(clip_text)}
        config = detect.infer_hf_clip_config(
            shapes, clip_text, detect.shipped_config(families.DEFAULT_FAMILY, "text_encoder_l.json")
        )
        translator: HfClipTranslator = HfClipTranslator(clip_text)
        outer = clip_text[: -len("text_model.")] if clip_text.endswith("text_model.") else clip_text
        if f"{outer}text_projection.weight" in keys:  # kept: HiDream pools CLIP-L through it
            projection = f"{outer}text_projection.weight"
            config.update(architectures=["CLIPTextModelWithProjection"], projection_dim=all_shapes[projection][0])
            translator = _ClipGTranslator(clip_text, projection)
        module = materialize(
            empty_text_encoder(config), translator, tf, plan.device, plan.clip_dtype,
            rounding=plan.clip_weight_rounding, what="CLIP text encoder",
        )  # fmt: skip
        return "clip", module
    if gemma2_encoder.is_gemma2(keys, base):  # Lumina 2's Gemma-2-2B (before the Llama rule)
        return "gemma2_2b", _gemma2_from(tf, keys, base, plan)
    if qwen25_encoder.is_qwen25(keys, base):
        shapes = {k: v for k, v in tf.shapes().items() if k.startswith(base)}
        module = materialize(
            qwen25_encoder.empty_encoder(qwen25_encoder.infer_config(shapes, base)),
            qwen25_encoder.Qwen25Translator(base), tf, plan.device, plan.clip_dtype,
            rounding=plan.clip_weight_rounding, what="Qwen2.5-VL text encoder",
        )  # fmt: skip
        qwen25_encoder.apply_weight_scales(module, tf, base)
        qwen25_vision.attach_tower(module, tf, plan, base)  # Qwen-Image-Edit's picture input
        return "qwen25_7b", module
    if qwen3_encoder.is_qwen3(keys, base):
        shapes = {k: v for k, v in tf.shapes().items() if k.startswith(base)}
        module = materialize(
            qwen3_encoder.empty_encoder(qwen3_encoder.infer_config(shapes, base)),
            qwen25_encoder.Qwen25Translator(base), tf, plan.device, plan.clip_dtype,
            rounding=plan.clip_weight_rounding, what="Qwen3 text encoder",
        )  # fmt: skip
        qwen25_encoder.apply_weight_scales(module, tf, base)
        # Mixed-precision fp8 files (`weight_scale`, e.g. [klein] 9B's Qwen3-8B) too.
        mistral3_encoder.apply_weight_scales(module, tf, f"{base}model.", (".weight_scale",))
        return "qwen3_4b", module
    mistral_prefix = mistral3_encoder.find_prefix(keys, tf.shapes(), base)
    if mistral_prefix is not None:  # Flux.2 [dev]'s Mistral Small 3.x (before Llama: same names)
        module = materialize(
            mistral3_encoder.empty_encoder(mistral3_encoder.infer_config(tf.shapes(), mistral_prefix)),
            mistral3_encoder.MistralTranslator(mistral_prefix), tf, plan.device, plan.clip_dtype,
            rounding=plan.clip_weight_rounding, what="Mistral text encoder",
        )  # fmt: skip
        mistral3_encoder.apply_weight_scales(module, tf, mistral_prefix)
        return "mistral3", mistral3_encoder.finish_loading(module, tf, getattr(tf, "path", None))
    llama_prefix = llama_encoder.find_prefix(keys, base)
    if llama_prefix is not None:  # HunyuanVideo's LLaVA-Llama-3
        return "llama", llama_encoder.load(tf, llama_prefix, plan.device, plan.clip_dtype)
    t5_prefix = t5_encoder.find_prefix({k for k in keys if k.startswith(base)})
    if t5_prefix is not None and umt5_encoder.is_umt5(keys, t5_prefix):
        return "umt5", _umt5_from(tf, keys, t5_prefix, base, plan)
    if t5_prefix is not None:
        shapes = {k: v for k, v in tf.shapes().items() if k.startswith(t5_prefix)}
        module = t5_encoder.empty_encoder(t5_encoder.infer_config(shapes, t5_prefix))
        text_encoder_fp8.keep_linears_in(module, text_encoder_fp8.t5_storage_dtype(tf, t5_prefix), plan.clip_dtype)
        module = materialize(
            module, t5_encoder.T5Translator(t5_prefix, keys), tf, plan.device, plan.clip_dtype,
            rounding=plan.clip_weight_rounding, what="T5 encoder",
        )  # fmt: skip
        t5_encoder.share_embedding(module)
        t5_encoder.apply_weight_scales(module, tf, t5_prefix)
        return "t5", module
    return None


def is_clip_g(keys: set[str], clip_text: str) -> bool:
    """ComfyUI's rule for a CLIP-G (OpenCLIP bigG) in transformers names: a 31st layer."""
    return f"{clip_text}encoder.layers.30.mlp.fc1.weight" in keys


class _ClipGTranslator(HfClipTranslator):
    """A transformers-named CLIP with a text projection (bigG; HiDream's CLIP-L): the projection
    sits beside `text_model.`."""

    def __init__(self, text_prefix: str, projection_key: str) -> None:
        super().__init__(text_prefix)
        self.projection_key = projection_key

    def source(self, name: str) -> Any:
        from comfyd.models.keymap import Source

        if name == "text_projection.weight":
            return Source(self.projection_key)
        return super().source(name)


def _clip_g_from(tf: TensorFile, keys: set[str], clip_text: str, plan: ComputePlan) -> nn.Module:
    """bigG (gelu, projected pooled output) from its transformers-layout keys (SD3's clip_g)."""
    outer = clip_text[: -len("text_model.")] if clip_text.endswith("text_model.") else clip_text
    projection = f"{outer}text_projection.weight"
    if projection not in keys:
        raise UnknownCheckpointLayout(f"this CLIP-G text encoder has no text projection ({projection})")
    shapes = {k: v for k, v in tf.shapes().items() if k.startswith(outer)}
    config = detect.infer_hf_clip_config(shapes, clip_text, detect.shipped_config("sdxl", "text_encoder_g.json"))
    config["projection_dim"] = shapes[projection][0]
    return materialize(
        empty_text_encoder(config), _ClipGTranslator(clip_text, projection), tf, plan.device, plan.clip_dtype,
        rounding=plan.clip_weight_rounding, what="CLIP-G text encoder",
    )  # fmt: skip


def _umt5_from(tf: TensorFile, keys: set[str], prefix: str, base: str, plan: ComputePlan) -> nn.Module:
    """A UMT5 encoder with the SentencePiece model its file carries (`spiece_model`), or one in a
    `<file name>.spiece.model` beside it (AuraFlow's checkpoints carry none; comfyd ships none)."""
    spiece = next((k for k in (f"{base}{umt5_encoder.SPIECE_KEY}", umt5_encoder.SPIECE_KEY) if k in keys), None)
    beside = tf.path.with_name(tf.path.name + umt5_encoder.SPIECE_SUFFIX)
    if spiece is None and not beside.is_file():
        raise UnknownCheckpointLayout(
            f"the UMT5 / Pile-T5 text encoder in {tf.path.name} has no tokenizer (no 'spiece_model' "
            f"tensor); use a file that carries one, as ComfyUI's umt5_xxl files do, or put the "
            f"SentencePiece model beside it as {beside.name} (for AuraFlow: ComfyUI's "
            "comfy/text_encoders/t5_pile_tokenizer/tokenizer.model)"
        )
    shapes = {k: v for k, v in tf.shapes().items() if k.startswith(prefix)}
    module = umt5_encoder.empty_encoder(umt5_encoder.infer_config(shapes, prefix))
    text_encoder_fp8.keep_linears_in(module, text_encoder_fp8.t5_storage_dtype(tf, prefix), plan.clip_dtype)
    module = materialize(
        module, t5_encoder.T5Translator(prefix, keys), tf, plan.device, plan.clip_dtype,
        rounding=plan.clip_weight_rounding, what="UMT5 encoder",
    )  # fmt: skip
    t5_encoder.share_embedding(module)
    module.comfyd_spiece_model = umt5_encoder.spiece_bytes(tf.get(spiece)) if spiece else beside.read_bytes()
    return module


def _gemma2_from(tf: TensorFile, keys: set[str], base: str, plan: ComputePlan) -> nn.Module:
    """Gemma-2 with the SentencePiece model its file carries; comfyd ships no Gemma tokenizer."""
    spiece = gemma2_encoder.spiece_key(keys, base)
    if spiece is None:
        raise UnknownCheckpointLayout(
            f"the Gemma 2 text encoder in {tf.path.name} has no tokenizer (no 'spiece_model' tensor); "
            "use a file that carries one, as ComfyUI's gemma_2_2b and lumina_2 files do"
        )
    shapes = {k: v for k, v in tf.shapes().items() if k.startswith(base)}
    module = materialize(
        gemma2_encoder.empty_encoder(gemma2_encoder.infer_config(shapes, base)),
        qwen25_encoder.Qwen25Translator(base), tf, plan.device, gemma2_encoder.compute_dtype(plan),
        what="Gemma 2 text encoder",
    )  # fmt: skip
    qwen25_encoder.apply_weight_scales(module, tf, base)
    gemma2_encoder.round_norm_scales(module, gemma2_encoder.storage_dtype(tf, base))
    module.comfyd_spiece_model = gemma2_encoder.spiece_bytes(tf.get(spiece))
    return module


def load_text_encoder(path: Path, plan: ComputePlan, allow_pickle: bool) -> tuple[str, nn.Module, str]:
    """(kind "clip" | "t5", encoder module, file name) of one text-encoder file."""
    with TensorFile(path, allow_pickle=allow_pickle, gguf_quantized=plan.gguf_on_the_fly) as tf:
        found = text_encoder_in(tf, plan)
        if found is not None:
            return found[0], found[1], path.name
        keys = tf.keys()
    raise UnknownCheckpointLayout(
        f"{path.name} is not a text encoder comfyd can load (CLIP text model, T5, UMT5, Llama, "
        f"Mistral Small, Qwen2.5-VL, Qwen3 or Gemma 2 encoder); "
        f"first keys: {', '.join(sorted(keys)[:5])}"
    )


def load_split_family_checkpoint(path: Path, plan: ComputePlan, allow_pickle: bool) -> tuple[Any, ...] | None:
    """(family, network, model sampling, encoders, vae) of an all-in-one checkpoint of a family
    whose parts the split loaders build (Flux), or None when the file is no such checkpoint."""
    with TensorFile(path, allow_pickle=allow_pickle, gguf_quantized=plan.gguf_on_the_fly) as tf:
        keys = set(tf.keys())
        family = next(
            (f for f in families.all_families() if f.diffusion_model_prefix(keys) == UNET_PREFIX),
            None,
        )
        if family is None:
            return None
        network, sampling = family.load_diffusion_model(tf, UNET_PREFIX, plan, "default")
        encoders = _checkpoint_encoders(tf, keys, family, plan, path.name)
        # A VAE of the family's own architecture (LTX-Video's video VAE), of another family's
        # (Qwen-Image's Wan 2.1 VAE under `vae.`), else the LDM one.
        vae = family.load_vae(tf, plan) or next(
            (v for f in families.all_families() if f is not family and (v := f.load_vae(tf, plan)) is not None), None
        )
        if vae is None:
            vae_prefix = family.checkpoint_vae_prefix
            if f"{vae_prefix}encoder.down.0.block.0.conv1.weight" not in keys:
                raise UnknownCheckpointLayout(
                    f"{path.name}: a {family.name} checkpoint without its VAE ({vae_prefix}*)"
                )
            vae = vae_from(tf, vae_prefix, plan)
    return family, network, sampling, encoders, vae


def _checkpoint_encoders(
    tf: TensorFile, keys: set[str], family: families.Family, plan: ComputePlan, name: str
) -> dict[str, nn.Module] | None:
    """The text encoders an all-in-one checkpoint carries; None when it carries none (LTX-Video's
    files: ComfyUI's loader then gives no CLIP either), an error when it lacks one the family
    needs (any non-empty subset is fine for families with partial encoders, SD3)."""
    if not any(k.startswith(p) for spec in family.encoders for p in spec.single_file_prefixes for k in keys):
        return None
    encoders: dict[str, nn.Module] = {}
    for spec in family.encoders:
        prefix = next((p for p in spec.single_file_prefixes if any(k.startswith(p) for k in keys)), None)
        found = text_encoder_in(tf, plan, prefix) if prefix is not None else None
        if found is not None and found[0] == spec.kind:
            encoders[spec.name] = found[1]
        elif found is not None or not family.partial_encoders:
            raise UnknownCheckpointLayout(
                f"{name}: a {family.name} checkpoint without its {spec.name} text encoder "
                f"({spec.single_file_prefixes[0]}*); load the text encoders with a CLIP loader"
            )
    if family.missing_encoders(set(encoders)):
        raise UnknownCheckpointLayout(f"{name}: a {family.name} checkpoint without text encoders")
    return encoders


def vae_from(tf: TensorFile, prefix: str, plan: ComputePlan) -> nn.Module:
    """The LDM-layout autoencoder stored under `prefix`."""
    from comfyd.models.keymap import vae_translator
    from comfyd.models.loader import empty_vae

    base = detect.shipped_config(families.DEFAULT_FAMILY, "vae.json")
    config = detect.infer_vae_config(tf.shapes(), prefix, base)
    return materialize(empty_vae(config), vae_translator(config, prefix), tf, plan.device, plan.vae_dtype, what="VAE")


def encoder_tokenizers(
    family: families.Family, encoders: dict[str, nn.Module], clip_tokenizer: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    """CLIP encoders use the shipped BPE tokenizer; a UMT5 file carries its own (`spiece_model`);
    a Llama encoder's sits beside its file (`llama_tokenizer/`);
    T5 encoders tokenize with the shipped T5 vocabulary (no entry here)."""
    out: dict[str, Any] = {}
    for name, module in encoders.items():
        kind = family.encoder(name).kind
        if kind in ("clip", "clip_g"):
            out[name] = clip_tokenizer(dict(family.encoder(name).tokenizer))
        elif kind == "umt5":
            out[name] = umt5_encoder.tokenizer_from_bytes(module.comfyd_spiece_model)
        elif kind == "gemma2_2b":  # the SentencePiece model its file carries
            out[name] = gemma2_encoder.tokenizer_from_bytes(module.comfyd_spiece_model)
        elif kind == "llama":  # read from llama_tokenizer/ beside the file (llama_encoder)
            out[name] = llama_encoder.require_tokenizer(module)
        elif kind == "mistral3":  # Tekken: from the file, beside it, or mistral-common's
            out[name] = mistral3_encoder.tokenizer_for(module)
        elif kind in ("qwen25_7b", "qwen3_4b"):  # Qwen3 uses Qwen2's vocabulary
            out[name] = qwen25_encoder.shipped_tokenizer()
    return out


def assign_encoders(family: families.Family, loaded: list[tuple[str, nn.Module, str]]) -> dict[str, nn.Module]:
    """Encoder name -> module: each file takes the family's encoder of its kind, each one once."""
    encoders: dict[str, nn.Module] = {}
    for kind, module, name in loaded:
        spec = family.encoder_for_kind(kind)
        if spec is None or spec.name in encoders:
            raise ValueError(f"{name} ({kind} text encoder) has no place in a {family.name} CLIP")
        encoders[spec.name] = module
    missing = family.missing_encoders(set(encoders))
    if missing:
        raise ValueError(
            f"a {family.name} CLIP needs text encoder(s) {[e.name for e in family.encoders]}; "
            f"missing {missing}"
        )
    return encoders
