"""comfyd: run ComfyUI workflows as a service.

`comfyd.generate_image(...)` runs a workflow in this process; everything heavy (torch,
diffusers) is imported only when it is first called. `comfyd.LocalRunner` keeps models loaded
between calls (`generate_image(..., runner=runner)`).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# OpenMP threads that wait by spinning (libgomp's default) make torch on CPU many times slower
# as soon as anything else competes for the cores: a barrier then waits for a thread the
# scheduler has parked (bench/cpu_threads.py: 38 s against 2.6 s for 20 tiny-model steps on a
# busy 2-core machine). Passive waiting costs little when the cores are idle. The variable is read
# when torch loads, so it can only be set here, before; a value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from comfyd.runner import LocalRunner, RunResult


def generate_image(*args: Any, **kwargs: Any) -> RunResult:
    """See `comfyd.runner.generate_image`."""
    from comfyd.runner import generate_image as _generate_image

    return _generate_image(*args, **kwargs)


def __getattr__(name: str) -> Any:
    # Lazy, like generate_image: `import comfyd` must stay light (`comfyd --help`).
    if name == "LocalRunner":
        from comfyd.runner import LocalRunner

        return LocalRunner
    raise AttributeError(f"module 'comfyd' has no attribute {name!r}")


__all__ = ["LocalRunner", "generate_image", "__version__"]
