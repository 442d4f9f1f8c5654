"""Build diffusers / transformers modules from checkpoint files, offline, without a second copy.

Single-file checkpoints: the modules are created empty (meta device) from the configs `detect`
derived, then each parameter is taken from the memory-mapped file, converted to its target dtype
and device, and assigned in place; at no point is the whole file read into RAM next to the model.
The loaded weights never alias the mapped file (a tensor that needs no conversion is copied):
a checkpoint overwritten in place while the server runs can neither change a loaded model nor
crash it with a bus error.

Diffusers folders load through `from_pretrained(local_files_only=True)`. Nothing here ever calls a
model hub: configs and the tokenizer vocabulary are shipped in `comfyd/models/configs/`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from torch import nn

from comfyd.models import detect, families, gguf_layers
from comfyd.models.detect import CheckpointInfo, UnknownCheckpointLayout
from comfyd.models.devices import ComputePlan
from comfyd.models.gguf_layers import QuantizedTensor
from comfyd.models.keymap import (
    CHUNK3,
    CONV1X1,
    COPY,
    ROWS,
    SWAP_HALVES,
    IdentityTranslator,
    Translator,
    apply_op,
    vae_translator,
)
from comfyd.models.prefetch import Target, TensorPrefetch
from comfyd.models.tensorfile import FP8_DTYPES, ModelFileError, TensorFile

log = logging.getLogger(__name__)

TOKENIZER_DIR = detect.CONFIG_DIR / "clip_tokenizer"


@dataclass
class LoadedCheckpoint:
    """The modules of one checkpoint, ready to run, and what drives them."""

    family: str
    prediction: str
    latent_scale: float
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoders: dict[str, Any]  # "l" / "h" / "g" -> CLIPTextModel(WithProjection)
    tokenizer_options: dict[str, dict[str, Any]]  # encoder -> tokenizer options (pad token)
    source_format: str  # "single" | "diffusers"
    notes: dict[str, str] = field(default_factory=dict)


# --- building modules ------------------------------------------------------------------------
def empty_unet(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel.from_config(dict(config))


def empty_vae(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import AutoencoderKL

    with init_empty_weights():
        return AutoencoderKL.from_config(dict(config))


def empty_text_encoder(config: Mapping[str, Any]) -> nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    text_config = CLIPTextConfig.from_dict(dict(config))
    with_projection = (
        list(config.get("architectures") or ["CLIPTextModel"])[0] == "CLIPTextModelWithProjection"
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    with init_empty_weights():
        return cls(text_config)


def convert_tensor(
    tensor: torch.Tensor, device: torch.device, dtype: torch.dtype, rounding: torch.dtype | None = None
) -> torch.Tensor:
    """`tensor` on `device` in `dtype`, in memory of its own (never a view of the source)."""
    source = tensor
    if rounding is not None and tensor.is_floating_point() and tensor.dtype != rounding:
        tensor = tensor.to(rounding)
    if tensor.device != device:
        # Move in the stored (usually smaller) dtype, convert on the device.
        tensor = tensor.to(device)
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    if (
        tensor.device == source.device
        and tensor.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()
    ):
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor.contiguous()


def materialize(
    module: nn.Module,
    translator: Translator,
    tf: TensorFile,
    device: torch.device,
    dtype: torch.dtype,
    *,
    rounding: torch.dtype | None = None,
    what: str = "module",
    prefetch: TensorPrefetch | None = None,
) -> nn.Module:
    """Fill an empty (meta) module with tensors from `tf`, each converted once, and return it.
    Floating tensors become `dtype`, except where the empty module holds an fp8 parameter: that
    one is converted straight to its fp8 dtype. `prefetch`: tensors already converted to
    (`device`, `dtype`, `rounding`) on another thread."""
    state: dict[str, torch.Tensor] = {}
    held: dict[str, QuantizedTensor] = {}  # GGUF weights kept quantized (gguf_layers)
    blocks: dict[str, QuantizedTensor | None] = {}  # per stored key: read and moved once
    handed_out: set[str] = set()
    missing: list[str] = []
    expected = module.state_dict(keep_vars=True)
    parameters = {name for name, _ in module.named_parameters()}
    for name, ref in expected.items():
        source = translator.source(name)
        if source is None or source.key not in tf:
            if name in parameters or ref.is_meta:
                missing.append(source.key if source is not None else name)
            continue
        quantized = _kept_quantized(module, name, source, tf, tuple(ref.shape), blocks, device)
        if quantized is not None:
            held[name] = quantized
            continue
        ready = prefetch.take(source.key) if prefetch is not None and ref.is_floating_point() else None
        tensor = apply_op(tf.get(source.key) if ready is None else ready, source)
        if tuple(tensor.shape) != tuple(ref.shape):
            # Tolerated: the same tensor with extra size-1 dims (a 1x1 conv where a Linear is built).
            if _squeezed(tensor.shape) != _squeezed(ref.shape):
                raise UnknownCheckpointLayout(
                    f"{what} in {tf.path.name}: {source.key} has shape {tuple(tensor.shape)}, "
                    f"the model expects {tuple(ref.shape)}"
                )
            tensor = tensor.reshape(ref.shape)
        # A parameter the empty module holds in fp8 (layerwise-cast storage) is read straight into it.
        target_dtype = ref.dtype if ref.dtype in FP8_DTYPES or not ref.is_floating_point() else dtype
        if ready is not None and ready.dtype == target_dtype and ready.device == device:
            # Converted already, in memory of its own: a whole tensor is used as it is the first
            # time; a slice, a transpose or a second use of the same key gets a copy, as before.
            own = source.op in (COPY, CONV1X1) and tensor.is_contiguous() and source.key not in handed_out
            handed_out.add(source.key)
            state[name] = tensor if own else tensor.clone(memory_format=torch.contiguous_format)
            continue
        state[name] = convert_tensor(
            tensor, device, target_dtype, rounding if ref.is_floating_point() else None
        )
    if missing:
        shown = ", ".join(missing[:6])
        raise UnknownCheckpointLayout(f"{what} in {tf.path.name} lacks {len(missing)} tensors: {shown}")
    module.load_state_dict(state, strict=False, assign=True)
    gguf_layers.install(module, held, device, dtype, rounding)
    # Buffers not stored in the file (position ids) were built on the CPU; bring them along.
    for sub in module.modules():
        for buffer_name, buffer in list(sub.named_buffers(recurse=False)):
            if buffer is not None and buffer.device != device:
                sub._buffers[buffer_name] = buffer.to(device)
    leftover = [n for n, p in module.named_parameters() if p.is_meta]
    if leftover:
        raise UnknownCheckpointLayout(f"{what}: parameters left unfilled: {', '.join(leftover[:6])}")
    module.requires_grad_(False)
    module.eval()
    return module


def _kept_quantized(
    module: nn.Module,
    name: str,
    source: Any,
    tf: TensorFile,
    expected: tuple[int, ...],
    read: dict[str, QuantizedTensor | None],
    device: torch.device,
) -> QuantizedTensor | None:
    """A GGUF block-quantized weight that a Linear / Embedding of `module` holds as it is stored
    (or as rows of it: fused tensors are split along dim 0, which are whole rows of blocks).
    `read`: the blocks already read, on `device`; a tensor used twice (tied embeddings) or split
    (fused q/k/v) is held once, its users holding views of it."""
    if source.op not in (COPY, CHUNK3, ROWS, SWAP_HALVES) or not tf.may_stay_quantized(source.key):
        return None
    if source.key not in read:
        found = tf.quantized(source.key)
        ok = found is not None and len(found.shape) == 2
        read[source.key] = replace(found, blocks=found.blocks.to(device)) if ok else None
    quantized = read[source.key]
    if quantized is None:
        return None
    blocks = apply_op(quantized.blocks, source)
    kept = gguf_layers.QuantizedTensor(blocks, quantized.type_name, (blocks.shape[0], quantized.shape[1]))
    return kept if gguf_layers.can_hold(module, name, kept, expected) else None


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


# --- single-file checkpoints ----------------------------------------------------------------
def load_single_file(path: Path, plan: ComputePlan, allow_pickle: bool = False) -> LoadedCheckpoint:
    """An original-layout checkpoint (`.safetensors`, or pickle when allowed) as runnable modules."""
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        info = detect.detect_checkpoint(tf)
        return _load_detected(tf, info, plan)


def _load_detected(tf: TensorFile, info: CheckpointInfo, plan: ComputePlan) -> LoadedCheckpoint:
    # The tensors are converted on a background thread while diffusers and transformers are
    # imported and the empty modules built (comfyd.models.prefetch); the UNet's first.
    targets = [Target(info.unet_prefix, plan.device, plan.unet_dtype), Target(info.vae_prefix, plan.device, plan.vae_dtype)]
    targets += [Target(enc.key_prefix, plan.device, plan.clip_dtype, plan.clip_weight_rounding)
                for enc in info.encoders.values()]
    with TensorPrefetch(tf, targets, convert_tensor) as prefetch:
        return _build_modules(tf, info, plan, prefetch)


def _build_modules(tf: TensorFile, info: CheckpointInfo, plan: ComputePlan, prefetch: TensorPrefetch) -> LoadedCheckpoint:
    device = plan.device
    family = families.get(info.family)
    unet = materialize(
        empty_unet(info.unet_config),
        family.unet_key_map(info.unet_config, info.unet_prefix),
        tf,
        device,
        plan.unet_dtype,
        what=f"{info.family} UNet",
        prefetch=prefetch,
    )
    vae = materialize(
        empty_vae(info.vae_config),
        family.vae_key_map(info.vae_config, info.vae_prefix),
        tf,
        device,
        plan.vae_dtype,
        what=f"{info.family} VAE",
        prefetch=prefetch,
    )
    encoders = {
        name: materialize(
            empty_text_encoder(enc.config),
            family.encoder_key_map(enc.layout, enc.key_prefix),
            tf,
            device,
            plan.clip_dtype,
            rounding=plan.clip_weight_rounding,
            what=f"{info.family} text encoder {name}",
            prefetch=prefetch,
        )
        for name, enc in info.encoders.items()
    }
    return LoadedCheckpoint(
        family=info.family,
        prediction=info.prediction,
        latent_scale=info.latent_scale,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizer_options={name: enc.tokenizer for name, enc in info.encoders.items()},
        source_format="single",
        notes={"prediction_rule": info.prediction_rule},
    )


# --- diffusers folders ----------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read {path}: {exc}") from exc


def _weights_variant(component: Path, allow_pickle: bool) -> str | None:
    """Which weights file a component folder has: None (plain), "fp16"; refuses pickle-only."""
    names = {p.name for p in component.iterdir()} if component.is_dir() else set()
    safetensors = [n for n in names if n.endswith(".safetensors") or n.endswith(".safetensors.index.json")]
    if any(".fp16." not in n for n in safetensors):
        return None
    if safetensors:
        return "fp16"
    pickles = [n for n in names if n.endswith((".bin", ".ckpt", ".pt", ".pth"))]
    if pickles and not allow_pickle:
        raise ModelFileError(
            f"refusing to load {component}: it only has pickle weights ({', '.join(sorted(pickles))}), and "
            "unpickling can run arbitrary code. Convert them to .safetensors, or let the operator set "
            "allow_pickle (COMFYD_ALLOW_PICKLE=1)."
        )
    if not pickles:
        raise ModelFileError(f"{component} has no weights file")
    return None


def _diffusers_component(cls: Any, folder: Path, dtype: torch.dtype, allow_pickle: bool) -> nn.Module:
    variant = _weights_variant(folder, allow_pickle)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": not allow_pickle or None}
    if variant:
        kwargs["variant"] = variant
    module_path = cls.__module__
    if module_path.startswith("transformers"):
        from transformers.utils import logging as transformers_logging

        # Its per-file progress bar is noise in a server log and a CLI run.
        transformers_logging.disable_progress_bar()
        kwargs["dtype"] = dtype
    else:
        kwargs["torch_dtype"] = dtype
    try:
        return cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot load {folder}: {exc}") from exc


def _component_config(folder: Path, component: str) -> dict[str, Any]:
    path = folder / component / "config.json"
    return _read_json(path) if path.is_file() else {}


def diffusers_family(folder: Path) -> tuple[str, dict[str, str]]:
    """(family, encoder name -> subfolder) of a diffusers checkpoint folder."""
    _read_json(folder / "unet" / "config.json")  # a folder without a readable UNet config is refused
    try:
        family = families.recognise_diffusers(folder, _component_config)
    except ValueError as exc:
        raise UnknownCheckpointLayout(str(exc)) from None
    if family is None:
        if not (folder / "text_encoder").is_dir():
            raise UnknownCheckpointLayout(f"diffusers folder {folder.name} has no text_encoder/")
        raise UnknownCheckpointLayout(
            f"diffusers folder {folder.name}: no model family recognises its text encoders and UNet"
        )
    return family.name, {e.name: e.diffusers_folders[0] for e in family.encoders}


def load_diffusers_folder(folder: Path, plan: ComputePlan, allow_pickle: bool = False) -> LoadedCheckpoint:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    for part in ("unet", "vae"):
        if not (folder / part / "config.json").is_file():
            raise UnknownCheckpointLayout(f"diffusers folder {folder.name} has no {part}/config.json")
    family_name, encoder_dirs = diffusers_family(folder)
    family = families.get(family_name)
    device = plan.device
    unet = _diffusers_component(UNet2DConditionModel, folder / "unet", plan.unet_dtype, allow_pickle)
    vae = _diffusers_component(AutoencoderKL, folder / "vae", plan.vae_dtype, allow_pickle)
    encoders: dict[str, nn.Module] = {}
    for name, sub in encoder_dirs.items():
        config = _read_json(folder / sub / "config.json")
        with_projection = (config.get("architectures") or [""])[0] == "CLIPTextModelWithProjection"
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        load_dtype = plan.clip_weight_rounding or plan.clip_dtype
        encoder = _diffusers_component(cls, folder / sub, load_dtype, allow_pickle)
        encoders[name] = encoder.to(plan.clip_dtype)
    for module in (unet, vae, *encoders.values()):
        module.to(device)
        module.requires_grad_(False)
        module.eval()
    scheduler_path = folder / "scheduler" / "scheduler_config.json"
    prediction = family.sampling.prediction
    rule = f"{family.name} default"
    if scheduler_path.is_file():
        declared = _read_json(scheduler_path).get("prediction_type", "epsilon")
        prediction = "v" if declared == "v_prediction" else "eps"
        rule = f"scheduler prediction_type {declared}"
    latent_scale = float(getattr(vae.config, "scaling_factor", None) or family.latent.scale_factor)
    return LoadedCheckpoint(
        family=family.name,
        prediction=prediction,
        latent_scale=latent_scale,
        unet=unet,
        vae=vae,
        text_encoders=encoders,
        tokenizer_options={name: dict(family.encoder(name).tokenizer) for name in encoders},
        source_format="diffusers",
        notes={"prediction_rule": rule},
    )


# --- standalone VAE files -------------------------------------------------------------------
def load_vae_file(path: Path, plan: ComputePlan, allow_pickle: bool = False) -> nn.Module:
    """A VAE file in the original layout (`encoder.down.0...`, optionally `first_stage_model.`) or
    diffusers layout (`encoder.down_blocks.0...`)."""
    if path.is_dir():
        from diffusers import AutoencoderKL

        vae = _diffusers_component(AutoencoderKL, path, plan.vae_dtype, allow_pickle)
        return vae.to(plan.device).requires_grad_(False).eval()
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        for family in families.all_families():
            own = family.load_vae(tf, plan)  # a family's own VAE architecture (Wan's video VAE)
            if own is not None:
                return own
        keys = set(tf.keys())
        shapes = tf.shapes()
        # The VAE architecture is shared by the SD families; the default family's config is the base.
        base = detect.shipped_config(families.DEFAULT_FAMILY, "vae.json")
        for prefix in ("", detect.VAE_PREFIX):
            if f"{prefix}encoder.down.0.block.0.conv1.weight" in keys:
                config = detect.infer_vae_config(shapes, prefix, base)
                translator: Translator = vae_translator(config, prefix)
                break
        else:
            if "encoder.down_blocks.0.resnets.0.conv1.weight" not in keys:
                raise UnknownCheckpointLayout(
                    f"{path.name} is not a VAE: no encoder.down.* (original) or encoder.down_blocks.* "
                    f"(diffusers) weights; first keys: {', '.join(sorted(keys)[:5])}"
                )
            config = detect.infer_diffusers_vae_config(shapes, base)
            translator = IdentityTranslator()
        return materialize(empty_vae(config), translator, tf, plan.device, plan.vae_dtype, what="VAE")


def load_clip_tokenizer(options: Mapping[str, Any] | None = None) -> Any:
    """The CLIP BPE tokenizer shipped with comfyd (ComfyUI's token ids), with `options` (pad token)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True, **dict(options or {}))
