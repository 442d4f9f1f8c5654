"""ComfyUI's import names, installed in `sys.modules` when (and only when) packs are loaded.

`install()` maps `folder_paths`, `comfy`, `comfy.utils`, `comfy.model_management`,
`node_helpers`, `nodes` and `server` to the modules in comfyd.compat.comfyui, and adds an import
hook that answers every other module under ComfyUI's own namespaces (`comfy.*`,
`comfy_extras.*`, `comfy_execution.*`, `comfy_api.*`, `latent_preview`, ...) with a placeholder:
importing it succeeds, so a pack loads as far as it can, and using anything from it raises
`NotProvided` naming what is missing. Which placeholders a pack touched is recorded, so the
loader can tell which of its nodes cannot run.

Plain `import comfyd` installs nothing; comfyd's own code never imports these names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
import types
from typing import Any

PROVIDED = {
    "folder_paths": "comfyd.compat.comfyui.folder_paths",
    "comfy": "comfyd.compat.comfyui.comfy",
    "comfy.utils": "comfyd.compat.comfyui.comfy.utils",
    "comfy.model_management": "comfyd.compat.comfyui.comfy.model_management",
    "comfy.cli_args": "comfyd.compat.comfyui.comfy.cli_args",
    "comfy.comfy_types": "comfyd.compat.comfyui.comfy.comfy_types",
    "comfy.comfy_types.node_typing": "comfyd.compat.comfyui.comfy.comfy_types.node_typing",
    "node_helpers": "comfyd.compat.comfyui.node_helpers",
    "nodes": "comfyd.compat.comfyui.nodes",
    "server": "comfyd.compat.comfyui.server",
}
# Top-level names of ComfyUI's own modules; what PROVIDED lacks under them is a placeholder.
PLACEHOLDER_ROOTS = frozenset(
    {
        "comfy",
        "comfy_extras",
        "comfy_execution",
        "comfy_api",
        "comfy_api_nodes",
        "comfy_config",
        "latent_preview",
        "execution",
        "app",
        "cuda_malloc",
        "comfyui_version",
        "new_updater",
        "protocol",
        "hook_breaker_ac10a0",
    }
)

_lock = threading.Lock()
_installed = False
# Every placeholder name touched so far, in order (the loader diffs it around each pack).
touched: list[str] = []


class NotProvided(RuntimeError):
    """A pack used a ComfyUI module or name that comfyd does not provide."""


class _MissingMeta(type):
    """Placeholder values: usable as base classes and in annotations, fail when called."""

    _qualname: str

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return missing(f"{cls._qualname}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotProvided(f"{cls._qualname} is part of ComfyUI and comfyd does not provide it")

    def __bool__(cls) -> bool:
        return False

    def __getitem__(cls, item: Any) -> Any:
        return cls

    def __or__(cls, other: Any) -> Any:
        return cls

    def __iter__(cls) -> Any:
        return iter(())

    def __repr__(cls) -> str:
        return f"<not provided by comfyd: {cls._qualname}>"


def missing(qualname: str) -> type:
    touched.append(qualname)
    return _MissingMeta(
        qualname.rsplit(".", 1)[-1], (), {"_qualname": qualname, "__module__": "comfyd.compat.missing"}
    )


def is_missing(value: Any) -> bool:
    return isinstance(value, _MissingMeta) or isinstance(value, PlaceholderModule)


class PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = missing(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".", 1)[0] not in PLACEHOLDER_ROOTS or fullname in PROVIDED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        touched.append(spec.name)
        module = PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


_FINDER = _PlaceholderFinder()


def install() -> None:
    """Make ComfyUI's names importable (idempotent). A name already imported from elsewhere
    (a real ComfyUI on the path, say) is left alone."""
    global _installed
    with _lock:
        if _installed:
            return
        for name, target in PROVIDED.items():
            if name not in sys.modules:
                sys.modules[name] = importlib.import_module(target)
        comfy = sys.modules["comfy"]
        for sub in ("utils", "model_management", "cli_args", "comfy_types"):
            if sub not in vars(comfy):
                setattr(comfy, sub, sys.modules[f"comfy.{sub}"])
        # Last: a real module of the same name (installed, or a pack's own) always wins; only
        # names nothing else can import become placeholders.
        sys.meta_path.append(_FINDER)
        _installed = True


def installed() -> bool:
    return _installed
