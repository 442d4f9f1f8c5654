"""ComfyUI's `comfy` package as packs see it: `comfy.utils` and `comfy.model_management` are
provided; every other `comfy.*` module is a placeholder (comfyd.compat.aliases)."""

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    # `import comfy` then `comfy.sd.X`: resolve the submodule as `import comfy.sd` would.
    if name.startswith("__"):
        raise AttributeError(name)
    return importlib.import_module(f"comfy.{name}")
