"""The plugin API: what a third-party node package imports to define comfyd nodes.

    from comfyd.plugin import Int, Link, Node, NodeContext, NodeSchema, OutputSpec

A plugin lists its node classes in `COMFYD_NODES` (a module attribute, or a callable returning
them) and is found through the `comfyd.nodes` entry-point group or a folder in
COMFYD_CUSTOM_NODES_DIRS. See docs/nodes.md.
"""

from __future__ import annotations

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import (
    Boolean,
    Combo,
    Float,
    InputSpec,
    Int,
    Link,
    Node,
    NodeOutput,
    NodeSchema,
    OutputSpec,
    String,
)

__all__ = [
    "Boolean",
    "Combo",
    "Float",
    "InputSpec",
    "Int",
    "Link",
    "Node",
    "NodeContext",
    "NodeEnvironment",
    "NodeOutput",
    "NodeSchema",
    "OutputSpec",
    "String",
]
