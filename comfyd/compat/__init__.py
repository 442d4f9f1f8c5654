"""Custom nodes: comfyd's own plugins and ComfyUI node packs.

ComfyUI packs import ComfyUI's own module names (`folder_paths`, `comfy.utils`,
`comfy.model_management`, `node_helpers`, `nodes`, `server`). `comfyd.compat.comfyui` provides
the subset of those names that packs use, mapped onto comfyd's settings and node context;
`aliases.install()` makes them importable under ComfyUI's names, only when custom nodes are
loaded (never at `import comfyd`). `loader.load_custom_nodes` finds and registers the nodes;
`pack_node` adapts a ComfyUI node class to comfyd's Node. The engine never imports this package:
the composition root (comfyd.runtime) calls the loader.

For other layers (`comfyd check`, logs): `unavailable_nodes()` -> {class_type: reason}, and
`reports()` -> one PackReport per pack.
"""

from __future__ import annotations

from typing import Any


def unavailable_nodes(settings: Any = None) -> dict[str, str]:
    """class_type -> why it cannot run in comfyd, for every custom-node class loaded so far;
    with `settings`, first load the custom nodes they name (what `comfyd check` needs)."""
    from comfyd.compat.loader import node_registry
    from comfyd.compat.loader import unavailable_nodes as _unavailable

    if settings is not None:
        node_registry(settings)
    return _unavailable()


def reports() -> list[Any]:
    from comfyd.compat.loader import reports as _reports

    return _reports()
