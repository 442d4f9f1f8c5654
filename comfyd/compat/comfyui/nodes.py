"""ComfyUI's `nodes` module: MAX_RESOLUTION and comfyd's core nodes as ComfyUI-style classes.

`from nodes import SaveImage, EmptyLatentImage` gives a class with ComfyUI's INPUT_TYPES,
RETURN_TYPES and FUNCTION whose method runs comfyd's node (on the running pack node's job), so
packs that call or subclass core nodes work. Core nodes comfyd does not have are absent: the
import fails, and the pack's loader reports it.
"""

from __future__ import annotations

from typing import Any

from comfyd.compat import state
from comfyd.nodes.image.transform import MAX_RESOLUTION

# ComfyUI's FUNCTION names of the core nodes comfyd implements (any name works; see __getattr__).
_FUNCTIONS = {
    "CheckpointLoaderSimple": "load_checkpoint",
    "VAELoader": "load_vae",
    "LoraLoader": "load_lora",
    "LoraLoaderModelOnly": "load_lora_model_only",
    "CLIPSetLastLayer": "set_last_layer",
    "CLIPTextEncode": "encode",
    "CLIPTextEncodeSDXL": "encode",
    "ConditioningCombine": "combine",
    "ConditioningAverage": "addWeighted",
    "ConditioningConcat": "concat",
    "ConditioningSetArea": "append",
    "ConditioningSetTimestepRange": "set_range",
    "ConditioningZeroOut": "zero_out",
    "EmptyLatentImage": "generate",
    "KSampler": "sample",
    "KSamplerAdvanced": "sample",
    "LatentUpscale": "upscale",
    "LatentUpscaleBy": "upscale",
    "RepeatLatentBatch": "repeat",
    "LatentFromBatch": "frombatch",
    "SetLatentNoiseMask": "set_mask",
    "VAEDecode": "decode",
    "VAEEncode": "encode",
    "VAEEncodeForInpaint": "encode",
    "LoadImage": "load_image",
    "SaveImage": "save_images",
    "PreviewImage": "save_images",
    "ImageScale": "upscale",
    "ImageScaleBy": "upscale",
    "ImageInvert": "invert",
}


def _core_node_class(class_type: str) -> type | None:
    from comfyd.engine.schema import REGISTRY

    node_cls = REGISTRY.get(class_type)
    if node_cls is None or getattr(node_cls, "comfyd_pack", None) is not None:
        return None
    schema = node_cls.schema
    info = schema.object_info(None)
    order = [s.name for s in schema.inputs]
    function = _FUNCTIONS.get(class_type, "execute")

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(dict(zip(order, args, strict=False)))
        ctx = state.current_context()
        if ctx is None:
            raise RuntimeError(f"{class_type} can only run inside a comfyd job")
        hidden = {"prompt": ctx.prompt, "extra_pnginfo": ctx.extra_pnginfo, "unique_id": ctx.node_id}
        for name in ("prompt", "extra_pnginfo", "unique_id"):
            kwargs.pop(name, None)
        for kind in schema.hidden:
            key = {"PROMPT": "prompt", "EXTRA_PNGINFO": "extra_pnginfo", "UNIQUE_ID": "unique_id"}.get(kind)
            if key:
                kwargs[key] = hidden[key]
        raw = node_cls().run(ctx, **kwargs)
        values = tuple(getattr(raw, "values", raw) or ())
        ui = getattr(raw, "ui", None)
        if ui is not None:
            return {"ui": ui, "result": values}
        return values

    def input_types(cls: type) -> dict[str, Any]:
        return schema.object_info(state.environment())["input"]

    attrs: dict[str, Any] = {
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(info["output"]),
        "RETURN_NAMES": tuple(info["output_name"]),
        "OUTPUT_IS_LIST": tuple(info["output_is_list"]),
        "FUNCTION": function,
        "CATEGORY": schema.category,
        "OUTPUT_NODE": schema.output_node,
        function: call,
        "__getattr__": lambda self, name: (
            call.__get__(self) if not name.startswith("_") else object.__getattribute__(self, name)
        ),
        "__module__": __name__,
    }
    cls = type(class_type, (), attrs)
    if class_type in ("SaveImage", "PreviewImage"):
        settings = state.settings()
        temp = class_type == "PreviewImage"
        cls.output_dir = str(settings.temp_dir if temp else settings.output_dir)
        cls.type = "temp" if temp else "output"
        cls.prefix_append = ""
        cls.compress_level = 1 if temp else 4
    return cls


_made: dict[str, type] = {}
# Names ComfyUI's `nodes` module has (core node classes and helpers): a name comfyd lacks among
# these is a placeholder; any other name is an AttributeError, so `hasattr(nodes, ...)` checks
# (packs keeping registries on the module) see the truth.
COMFYUI_NAMES = frozenset(
    "CLIPLoader CLIPSetLastLayer CLIPTextEncode CLIPVisionEncode CLIPVisionLoader CheckpointLoader "
    "CheckpointLoaderSimple ConditioningAverage ConditioningCombine ConditioningConcat ConditioningSetArea "
    "ConditioningSetAreaPercentage ConditioningSetAreaStrength ConditioningSetMask ConditioningSetTimestepRange "
    "ConditioningZeroOut ControlNetApply ControlNetApplyAdvanced ControlNetLoader DiffControlNetLoader "
    "DiffusersLoader DualCLIPLoader EXTENSION_WEB_DIRS EmptyImage EmptyLatentImage GLIGENLoader "
    "GLIGENTextBoxApply ImageBatch ImageInvert ImagePadForOutpaint ImageScale ImageScaleBy "
    "InpaintModelConditioning KSampler KSamplerAdvanced LOADED_MODULE_DIRS LatentBlend LatentComposite "
    "LatentCrop LatentFlip LatentFromBatch LatentRotate LatentUpscale LatentUpscaleBy LoadImage LoadImageMask "
    "LoadImageOutput LoadLatent LoraLoader LoraLoaderModelOnly PreviewImage RepeatLatentBatch SaveImage "
    "SaveLatent SetLatentNoiseMask StyleModelApply StyleModelLoader UNETLoader VAEDecode VAEDecodeTiled "
    "VAEEncode VAEEncodeForInpaint VAEEncodeTiled VAELoader before_node_execution common_ksampler "
    "get_module_name interrupt_processing load_custom_node unCLIPCheckpointLoader unCLIPConditioning".split()
)


def __getattr__(name: str) -> Any:
    if name == "NODE_CLASS_MAPPINGS":
        from comfyd.engine.schema import REGISTRY

        return {n: c for n in REGISTRY.names() if (c := _lookup(n)) is not None}
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        from comfyd.engine.schema import REGISTRY

        return {
            n: cls.schema.display_name or n
            for n, cls in REGISTRY.items()
            if getattr(cls, "comfyd_pack", None) is None
        }
    cls = _lookup(name)
    if cls is None:
        if name not in COMFYUI_NAMES:
            raise AttributeError(f"module 'nodes' has no attribute {name!r}")
        from comfyd.compat.aliases import missing

        return missing(f"nodes.{name}")  # a core node (or helper) comfyd does not have
    return cls


def _lookup(name: str) -> type | None:
    if name not in _made:
        made = _core_node_class(name)
        if made is None:
            return None
        _made[name] = made
    return _made[name]


__all__ = ["MAX_RESOLUTION"]
