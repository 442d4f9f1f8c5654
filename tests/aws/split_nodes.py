"""A test-only node for the split-deployment end-to-end test (tests/aws/test_e2e_split.py):
`TestSegfault` crashes the interpreter in native code, as a broken custom node would.

Imported by the API process (tests/aws/split_api.py), so validation knows it, and by the
workers' runtimes (`build`, `child`) with this folder on PYTHONPATH."""

from __future__ import annotations

import ctypes
import dataclasses
from typing import Any

from comfyd.engine.schema import REGISTRY, Link, Node, NodeSchema, OutputSpec


class TestSegfault(Node):
    schema = NodeSchema(class_type="TestSegfault", inputs=(Link("image", "IMAGE"),),
                        outputs=(OutputSpec("IMAGE"),), category="testing")

    def run(self, ctx: Any, image: Any) -> tuple[Any]:
        ctypes.string_at(0)  # SIGSEGV
        return (image,)


def register() -> None:
    if REGISTRY.get("TestSegfault") is None:
        REGISTRY.register(TestSegfault)


def child(settings: Any) -> Any:
    """The execution child's runtime: the real nodes plus TestSegfault."""
    from comfyd.runtime import build_runtime

    register()  # before the runtime copies the registry (comfyd.compat.loader.node_registry)
    return build_runtime(settings, isolated_child=True)


def build(settings: Any) -> Any:
    """`python -m comfyd.worker --runtime split_nodes:build`: the real runtime (models listed for
    the catalog), executing in an isolated child that also knows TestSegfault."""
    from comfyd.isolation import IsolatedExecutor
    from comfyd.runtime import build_runtime

    register()  # before the runtime copies the registry (comfyd.compat.loader.node_registry)
    runtime = build_runtime(settings.model_copy(update={"isolation": "thread"}))
    isolated = IsolatedExecutor(settings, "split_nodes:child", kill_grace_s=settings.isolation_kill_grace_s)
    isolated.start()
    return dataclasses.replace(runtime, executor=isolated, release=isolated.free)
