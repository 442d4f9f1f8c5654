"""ComfyUI's nodes, grouped as ComfyUI groups its categories. Importing this package registers
every node.

Each subpackage (loaders, conditioning, sampling, latent, image, mask, video, advanced) holds one
module per concept; each module decorates its classes with `@register_node`. The edges (CLI,
server, worker) import `comfyd.nodes` once, and the engine only sees the registry.
"""

from __future__ import annotations

import importlib
import pkgutil

NODE_MODULES = sorted(
    m.name for m in pkgutil.walk_packages(__path__, prefix=f"{__name__}.") if not m.name.rsplit(".", 1)[-1].startswith("_")
)

for _name in NODE_MODULES:
    importlib.import_module(_name)
