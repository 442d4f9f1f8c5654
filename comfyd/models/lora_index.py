"""Which module of a loaded model each LoRA layer name patches.

LoRA files name layers by the module path with '_' for '.', in the module's own (diffusers /
transformers) spelling or in the stored checkpoint's; `module_index` answers both.
"""

from __future__ import annotations

from torch import nn

from comfyd.models import families
from comfyd.models.keymap import ROWS, SWAP_HALVES, text_model_name, unet_translator
from comfyd.models.lora_stored import STORED


def _patchable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.Conv2d)


def _patchable_unet(module: nn.Module) -> bool:
    # ComfyUI maps every UNet weight, norms included (full-diff files change them too); for the
    # text encoders only the projections.
    return isinstance(module, nn.Linear | nn.Conv2d | nn.GroupNorm | nn.LayerNorm)


def module_index(module: nn.Module, role: str, family: str | None = None) -> dict[str, str]:
    """'_'-joined LoRA module paths -> module names, for every Linear / Conv2d of `module`
    (and every norm of a UNet).

    UNet layers are also indexed under their stored (original-layout) names, by the family's
    key map (the LDM/SGM one when no family is given); a stored weight the module holds split
    or reordered (Flux's fused q/k/v) is indexed as STORED + its key (see lora_stored).
    A transformer wrapper's layers are also indexed without its `transformer.` prefix."""
    index: dict[str, str] = {}
    if role == "unet":
        config = getattr(module, "config", None)
        translator = None
        if config is not None:
            translator = (
                families.get(family).unet_key_map(config, key_prefix="")
                if family is not None
                else unet_translator(config, key_prefix="")
            )
        for name, sub in module.named_modules():
            if not _patchable_unet(sub):
                continue
            index[name.replace(".", "_")] = name
            if name.startswith("transformer."):
                index[name[len("transformer.") :].replace(".", "_")] = name
            source = translator.source(f"{name}.weight") if translator is not None else None
            if source is not None:
                stored = source.key[: -len(".weight")]
                split = source.op in (ROWS, SWAP_HALVES)
                index[stored.replace(".", "_")] = STORED + stored if split else name
        return index
    for name, sub in module.named_modules():
        if not _patchable(sub):
            continue
        inner = text_model_name(name)
        canonical = inner if inner == "text_projection" else f"text_model.{inner}"
        index[canonical.replace(".", "_")] = name
        # T5 / UMT5 layers as ComfyUI names them for LoRAs: without a `text_model.` level.
        if inner.startswith("encoder.block."):
            index.setdefault(inner.replace(".", "_"), name)
    return index
