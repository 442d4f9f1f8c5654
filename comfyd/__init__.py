"""comfyd: run ComfyUI workflows as a service.

`comfyd.generate_image(...)` runs a workflow in this process; everything heavy (torch,
diffusers) is imported only when it is first called. `comfyd.LocalRunner` keeps models loaded
between calls (`generate_image(..., runner=runner)`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
