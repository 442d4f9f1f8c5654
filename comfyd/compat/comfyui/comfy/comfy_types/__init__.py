"""ComfyUI's `comfy.comfy_types`: the IO type names packs use in their declarations."""

from comfyd.compat.comfyui.comfy.comfy_types.node_typing import IO, ComfyNodeABC, InputTypeDict

__all__ = ["IO", "ComfyNodeABC", "InputTypeDict"]
