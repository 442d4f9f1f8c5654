"""ComfyUI's nodes, one module per area. Importing this package registers every node.

Each module decorates its classes with `@register_node`; the edges (CLI, server, worker)
import `comfyd.nodes` once, and the engine only sees the registry.
"""

from __future__ import annotations

import importlib
import pkgutil

NODE_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

for _name in NODE_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
