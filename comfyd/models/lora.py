"""LoRA files: parsing the formats in circulation, and patching weights in place, reversibly.

Formats (all normalised to `(component, module path with '_' for '.')`):
- kohya / ComfyUI: `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`, text
  encoders `lora_te_` (SD1/SD2) or `lora_te1_` / `lora_te2_` (SDXL's CLIP-L / OpenCLIP-G; each
  family says which component patches which of its encoders). UNet
  module names may be diffusers-style (`down_blocks_0_attentions_0_...`) or original-style
  (`input_blocks_1_1_transformer_blocks_0_attn1_to_q`); both resolve.
- diffusers / peft: `unet.<module>.lora_A.weight` / `.lora_B.weight` (or `.lora.down/up.weight`),
  `text_encoder.` / `text_encoder_2.` prefixes, optional `.alpha`; the older attention-processor
  spelling (`attn1.processor.to_q_lora.down.weight`) too. SimpleTuner's `lycoris_` names the UNet.
- Per layer, the tensor kinds LyCORIS and ComfyUI know: LoRA / LoCon (`lora_mid`), LoHa
  (`hada_*`), LoKr (`lokr_*`), DoRA (`dora_scale` beside any of them), full differences
  (`diff`, `diff_b` for the bias, `w_norm` / `b_norm`) and `set_weight`; the arithmetic of each is
  in `lora_adapters`.

A plain LoRA's change is `strength * (alpha / rank) * up @ down` (alpha absent: scale 1). Every
change is computed in fp32 on an fp32 copy of the weight, in the order the patches were given,
before casting back once (ComfyUI's arithmetic). `LoraPatcher.restore` copies back a saved copy of every touched weight,
so the base weights return bit for bit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from comfyd.models import families, hypernetwork
from comfyd.models.gguf_layers import QuantizedSlot, drop_patches, quantized_weights
from comfyd.models.handles import HypernetworkPatch, LoraPatch, MergePatch
from comfyd.models.lora_adapters import Adapter, Difference, Hadamard, Kronecker, LowRank, Replacement
from comfyd.models.lora_index import module_index
from comfyd.models.lora_stored import STORED, StoredLayout, stored_layout
from comfyd.models.tensorfile import TensorFile

log = logging.getLogger(__name__)

_KOHYA_PREFIXES = (
    ("lora_unet_", "unet"),
    ("lora_transformer_", "unet"),  # OneTrainer's diffusers-named transformer LoRAs
    ("lycoris_", "unet"),  # SimpleTuner's LyCORIS files
    ("lora_te1_", "te1"),
    ("lora_te2_", "te2"),
    ("lora_te_", "te"),
)
_PEFT_PREFIXES = (
    ("unet.", "unet"),
    ("transformer.", "unet"),  # diffusers / ai-toolkit transformer LoRAs
    ("diffusion_model.", "unet"),  # stored-layout names as they are (BFL's for Flux)
    ("text_encoder_2.", "te2"),
    ("text_encoder.", "te"),
)
# Tensor names after the layer name, as LyCORIS and ComfyUI spell them -> comfyd's part names.
_LYCORIS_PARTS = {
    "lora_down.weight": "down",
    "lora_up.weight": "up",
    "lora_mid.weight": "mid",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    **{name: name for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")},
    **{name: name for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")},
    "diff": "diff",
    "diff_b": "diff_b",
    "set_weight": "set_weight",
    "w_norm": "w_norm",
    "b_norm": "b_norm",
}
_PEFT_PARTS = {
    "lora_A.weight": "down",
    "lora_B.weight": "up",
    "lora.down.weight": "down",
    "lora.up.weight": "up",
    "down.weight": "down",  # attention-processor spelling: `to_q_lora.down.weight`
    "up.weight": "up",
    **_LYCORIS_PARTS,
}


class LoraFormatError(ValueError):
    """A LoRA file with nothing comfyd can apply."""


@dataclass(frozen=True)
class LayerChange:
    """What a LoRA file does to one layer: a change of its weight and/or of its bias."""

    weight: Adapter | None = None
    bias: Difference | None = None

    @property
    def nbytes(self) -> int:
        return sum(change.nbytes for change in (self.weight, self.bias) if change is not None)


@dataclass(frozen=True)
class ParsedLora:
    name: str
    entries: dict[tuple[str, str], LayerChange]  # (component, module path '_'-joined) -> change
    unrecognised: tuple[str, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(change.nbytes for change in self.entries.values())

    def components(self) -> set[str]:
        return {component for component, _ in self.entries}


def _split_key(key: str) -> tuple[str, str, str] | None:
    """(component, module path, part) of one LoRA tensor key, or None if not a LoRA key we know."""
    for prefix, component in _KOHYA_PREFIXES:
        if key.startswith(prefix):
            base, _, part = key.partition(".")
            if part in _LYCORIS_PARTS:
                return component, base[len(prefix) :], _LYCORIS_PARTS[part]
            return None
    for prefix, component in _PEFT_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            for suffix, part in _PEFT_PARTS.items():
                if rest.endswith("." + suffix):
                    module = rest[: -len(suffix) - 1]
                    return component, _normalise_peft_module(module), part
            return None
    return None


def _normalise_peft_module(module: str) -> str:
    """`attn1.processor.to_out_lora` -> `attn1.to_out.0`; then '.' -> '_'."""
    module = module.replace(".processor.", ".")
    if module.endswith("_lora"):
        module = module[: -len("_lora")]
        if module.endswith("to_out"):
            module += ".0"
    return module.replace(".", "_")


def _weight_change(found: dict[str, torch.Tensor], alpha: float | None) -> Adapter | None:
    """The weight change of one layer's tensors. Where a file holds several kinds for one layer the
    later in ComfyUI's order wins: LoRA, LoHa, LoKr, then w_norm, diff, set_weight."""
    dora = found.get("dora_scale")
    change: Adapter | None = None
    if "up" in found and "down" in found:
        change = LowRank(found["up"], found["down"], alpha, found.get("mid"), dora)
    if all(f"hada_{w}" in found for w in ("w1_a", "w1_b", "w2_a", "w2_b")):
        change = Hadamard(found["hada_w1_a"], found["hada_w1_b"], found["hada_w2_a"], found["hada_w2_b"],
                          alpha, found.get("hada_t1"), found.get("hada_t2"), dora)
    lokr = Kronecker(*(found.get(f"lokr_{w}") for w in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")),
                     alpha=alpha, dora_scale=dora)
    if lokr.complete:
        change = lokr
    for diff in ("w_norm", "diff"):
        if diff in found:
            change = Difference(found[diff])
    if "set_weight" in found:
        change = Replacement(found["set_weight"])
    return change


def parse_lora(tf: TensorFile) -> ParsedLora:
    """The LoRA layers of a file; raises LoraFormatError when it holds none comfyd knows."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unrecognised: list[str] = []
    for key in tf.keys():
        split = _split_key(key)
        if split is None:
            unrecognised.append(key)
            continue
        component, module, part = split
        # A copy, not a view of the mapped file: the parsed LoRA outlives the open file.
        parts.setdefault((component, module), {})[part] = tf.get(key).clone()
    entries: dict[tuple[str, str], LayerChange] = {}
    for target, found in parts.items():
        alpha = found.get("alpha")
        weight = _weight_change(found, float(alpha.float().item()) if alpha is not None else None)
        bias = found.get("diff_b", found.get("b_norm"))
        if weight is None and bias is None:
            unrecognised.extend(f"{target[0]}:{target[1]} ({part})" for part in found)
            continue
        entries[target] = LayerChange(weight, Difference(bias) if bias is not None else None)
    if not entries:
        sample = ", ".join(tf.keys()[:4]) or "no tensors"
        raise LoraFormatError(
            f"{tf.path.name} holds no LoRA layers comfyd knows (kohya lora_unet_/lora_te_ or diffusers/peft "
            f"unet./text_encoder. names, with LoRA, LoCon, LoHa, LoKr, DoRA, diff or set_weight tensors); "
            f"first keys: {sample}"
        )
    if unrecognised:
        log.warning(
            "%s: %d LoRA tensors of unsupported kinds ignored (e.g. %s)",
            tf.path.name,
            len(unrecognised),
            unrecognised[0],
        )
    return ParsedLora(name=tf.path.name, entries=entries, unrecognised=tuple(unrecognised))


# --- patching --------------------------------------------------------------------------------
def component_role(component: str, family: str) -> str | None:
    """Which module a LoRA component patches: "unet", the text encoder name (l, h, g), or None
    when the family has no encoder that component is meant for."""
    if component == "unet":
        return "unet"
    return families.get(family).lora_role(component)


@dataclass
class _ModuleState:
    role: str
    module: nn.Module
    cond: threading.Condition = field(default_factory=threading.Condition)
    users: int = 0
    active: tuple[Any, ...] = ()
    backups: dict[str, torch.Tensor] = field(default_factory=dict)
    processors: dict[str, Any] | None = None  # attention processors a hypernetwork replaced
    index: dict[str, str] | None = None
    hooks: list[Any] = field(default_factory=list)
    original_keys: dict[str, str | None] | None = None
    layout: StoredLayout | None = None
    _names: frozenset[str] | None = None

    def parameter_names(self) -> frozenset[str]:
        if self._names is None:
            named = (name for name, _ in self.module.named_parameters())
            self._names = frozenset(named) | frozenset(quantized_weights(self.module))
        return self._names


# How long a merge waits to read another model that a job is patching right now; past it the
# merge fails with a message instead of waiting on a job that may be waiting on this one.
_SOURCE_WAIT_S = 60.0

WeightOp = Callable[[torch.Tensor], torch.Tensor]  # fp32 weight -> fp32 weight (may be in place)


def _lora_op(strength: float, change: Adapter, weight: torch.Tensor) -> torch.Tensor:
    # Each change sees the result of the ones before it (DoRA's norm does).
    return change.apply(weight, strength)


def _merge_op(strength_patch: float, strength_model: float, source: _SourceView, name: str, weight: torch.Tensor):
    # ComfyUI's order: the model's own weight scaled first, then the other's added.
    if strength_model != 1.0:
        weight *= strength_model
    if strength_patch != 0.0:
        weight += strength_patch * source.weight(name).to(weight.device)
    return weight


class _SourceView:
    """Another model's weights as its own patches make them (fp32, unrounded), read lazily."""

    def __init__(self, patcher: LoraPatcher | None, module: nn.Module, patches: tuple[Any, ...]) -> None:
        self.parameters = dict(module.named_parameters())
        self.patcher = patcher
        self.state = patcher._states.get(id(module)) if patcher is not None else None
        self.ops = patcher._ops(self.state, patches) if patcher is not None and self.state is not None else {}

    def weight(self, name: str) -> torch.Tensor:
        parameter = self.parameters[name]
        if self.state is None:
            base = parameter.detach().to(torch.float32, copy=True)
        else:
            # The base weight: saved aside while a job has that module patched.
            if not self.state.cond.acquire(timeout=_SOURCE_WAIT_S):
                raise RuntimeError("a model being merged stayed busy in another job; try again")
            try:
                saved = self.state.backups.get(name)
                base = (saved if saved is not None else parameter.detach()).to(torch.float32, copy=True)
            finally:
                self.state.cond.release()
        if any(key.startswith(STORED) for key in self.ops):
            raise ValueError("merging from a model whose fused weights carry LoRAs is not supported yet")
        for op in self.ops.get(name, ()):
            base = op(base)
        return base


class LoraPatcher:
    """The WeightPatcher of one loaded checkpoint (its UNet and text encoders): LoRAs, merges
    with other models (MergePatch) and UNet hooks (anything with `install`).

    Several jobs share the modules: `apply` lets any number of users in together while they want
    the same patches, and makes a user who wants different ones wait until the module is free.
    The patches are applied by the first user in and removed (bit-exact) by the last one out.
    """

    def __init__(
        self,
        family: str,
        modules: Mapping[str, nn.Module],
        lora_source: Callable[[str], ParsedLora],
    ) -> None:
        self.family = family
        self._lora_source = lora_source
        self._states = {id(module): _ModuleState(role, module) for role, module in modules.items()}
        self._warned: set[tuple[str, str]] = set()

    def _state(self, module: Any) -> _ModuleState:
        state = self._states.get(id(module))
        if state is None or state.module is not module:
            raise ValueError("this module does not belong to the checkpoint this patcher serves")
        return state

    def apply(self, module: Any, patches: tuple[Any, ...]) -> None:
        state = self._state(module)
        patches = tuple(patches)
        with state.cond:
            while state.users and state.active != patches:
                state.cond.wait()
            if state.active != patches:
                try:
                    self._patch(state, patches)
                except BaseException:
                    self._restore_base(state)
                    raise
                state.active = patches
            state.users += 1

    def restore(self, module: Any) -> None:
        state = self._state(module)
        with state.cond:
            if state.users == 0:
                return
            state.users -= 1
            if state.users == 0:
                self._restore_base(state)
                state.active = ()
                state.cond.notify_all()

    def active(self, module: Any) -> tuple[Any, ...]:
        return self._state(module).active

    def _ops(self, state: _ModuleState, patches: tuple[Any, ...]) -> dict[str, list[WeightOp]]:
        """Per parameter name, the changes `patches` make to it, in order."""
        ops: dict[str, list[WeightOp]] = {}
        for patch in patches:
            if isinstance(patch, LoraPatch):
                self._lora_ops(state, patch, ops)
            elif isinstance(patch, MergePatch):
                self._merge_ops(state, patch, ops)
        return ops

    def _lora_ops(self, state: _ModuleState, patch: LoraPatch, ops: dict[str, list[WeightOp]]) -> None:
        if patch.strength == 0:
            return
        if state.index is None:
            state.index = module_index(state.module, state.role, self.family)
        lora = self._lora_source(patch.key)
        layout = self._layout(state)
        parameters = state.parameter_names() | {key[len(STORED) :] for key in layout.groups}
        unmatched: list[str] = []
        for (component, path), layer in lora.entries.items():
            if component_role(component, self.family) != state.role:
                continue
            name = state.index.get(path)
            if name is None:
                unmatched.append(path)
                continue
            for param, change in ((f"{name}.weight", layer.weight), (f"{name}.bias", layer.bias)):
                # A bias change for a layer without a bias has nothing to patch (as in ComfyUI).
                if change is not None and param.removeprefix(STORED) in parameters:
                    target, op = layout.target(param, partial(_lora_op, patch.strength, change))
                    ops.setdefault(target, []).append(op)
        if unmatched and (patch.key, state.role) not in self._warned:
            self._warned.add((patch.key, state.role))
            log.warning(
                "LoRA %s: %d layers match nothing in the %s model (e.g. %s)",
                lora.name,
                len(unmatched),
                state.role,
                unmatched[0],
            )

    def _merge_ops(self, state: _ModuleState, patch: MergePatch, ops: dict[str, list[WeightOp]]) -> None:
        source = patch.source_modules.get(state.role)
        if source is None:
            return
        theirs = dict(source.named_parameters())
        view = _SourceView(patch.source_patcher, source, patch.source_patches)
        keys = self._original_keys(state) if patch.block_ratios else {}
        mismatched = 0
        for name, parameter in state.module.named_parameters():
            other = theirs.get(name)
            if other is None:
                continue
            strength_patch, strength_model = patch.strengths(keys.get(name))
            if other.shape != parameter.shape:
                # As ComfyUI: the weight is still scaled by strength_model, nothing is added.
                mismatched += 1
                strength_patch = 0.0
            target, op = self._layout(state).target(name, partial(_merge_op, strength_patch, strength_model, view, name))
            ops.setdefault(target, []).append(op)
        if quantized_weights(state.module) or quantized_weights(source):
            log.warning("merge with a GGUF model: its weights kept quantized are not merged")
        if mismatched:
            log.warning("merge into the %s model: %d weights differ in shape, not merged", state.role, mismatched)

    def _layout(self, state: _ModuleState) -> StoredLayout:
        if state.layout is None:
            config = getattr(state.module, "config", None)
            unet = state.role == "unet" and config is not None
            translator = families.get(self.family).unet_key_map(config, key_prefix="") if unet else None
            state.layout = stored_layout(state.module, translator)
        return state.layout

    def _original_keys(self, state: _ModuleState) -> dict[str, str | None]:
        """Parameter name -> its key in the original (LDM) layout, for ModelMergeBlocks."""
        if state.original_keys is None:
            keys: dict[str, str | None] = {}
            config = getattr(state.module, "config", None)
            translator = families.get(self.family).unet_key_map(config, key_prefix="") if config else None
            for name, _ in state.module.named_parameters():
                source = translator.source(name) if translator is not None else None
                keys[name] = source.key if source is not None else None
            state.original_keys = keys
        return state.original_keys

    def _patch(self, state: _ModuleState, patches: tuple[Any, ...]) -> None:
        ops = self._ops(state, patches)
        if ops:
            # GGUF-quantized weights (gguf_layers) keep their blocks; the patched weight goes beside.
            parameters = dict(state.module.named_parameters()) | quantized_weights(state.module)
            with torch.no_grad():
                for name, changes in ops.items():
                    if name.startswith(STORED):
                        self._patch_stored(state, parameters, name, changes)
                        continue
                    weight = parameters[name]
                    if isinstance(weight, QuantizedSlot):
                        weight.patch(changes)
                        continue
                    state.backups[name] = weight.detach().clone()
                    patched = weight.detach().to(torch.float32)
                    if patched.data_ptr() == weight.data_ptr():
                        patched = patched.clone()
                    for change in changes:
                        patched = change(patched)
                    weight.copy_(patched.to(weight.dtype))
        attention = [(p.layers, p.strength) for p in patches if isinstance(p, HypernetworkPatch) and p.strength != 0]
        if attention and state.role == "unet":
            state.processors = hypernetwork.install(state.module, attention)
        for patch in patches:
            if not isinstance(patch, LoraPatch | MergePatch | HypernetworkPatch):
                state.hooks.extend(patch.install(state.module))

    @staticmethod
    def _patch_stored(state: _ModuleState, parameters: dict[str, Any], key: str, changes: list[WeightOp]) -> None:
        layout = state.layout
        assert layout is not None
        for piece in layout.groups[key]:
            if not isinstance(parameters[piece.param], QuantizedSlot):
                state.backups[piece.param] = parameters[piece.param].detach().clone()
        patched = layout.gather(parameters, key)
        for change in changes:
            patched = change(patched)
        layout.scatter(parameters, key, patched)

    def _restore_base(self, state: _ModuleState) -> None:
        for handle in state.hooks:
            handle.remove()
        state.hooks.clear()
        if state.processors is not None:
            hypernetwork.restore(state.module, state.processors)
            state.processors = None
        drop_patches(state.module)
        if not state.backups:
            return
        parameters = dict(state.module.named_parameters())
        with torch.no_grad():
            for name, saved in state.backups.items():
                parameters[name].copy_(saved)
        state.backups.clear()
