"""ComfyUI's Primitive nodes: a constant INT, FLOAT, STRING or BOOLEAN to link into other inputs.

Their declarations are ComfyUI's to the letter: PrimitiveInt and PrimitiveFloat have no default
and span Python's `sys.maxsize` either way, the strings say whether they are multiline.
"""

from __future__ import annotations

import sys

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import InputSpec, Node, NodeSchema, OutputSpec, register_node

CATEGORY = "utils/primitive"


def _schema(class_type: str, display_name: str, spec: InputSpec) -> NodeSchema:
    return NodeSchema(
        class_type=class_type,
        display_name=display_name,
        inputs=(spec,),
        outputs=(OutputSpec(spec.type),),
        category=CATEGORY,
    )


@register_node
class PrimitiveInt(Node):
    schema = _schema(
        "PrimitiveInt",
        "Int",
        InputSpec("value", "INT", min=-sys.maxsize, max=sys.maxsize, control_after_generate=True),
    )

    def run(self, ctx: NodeContext, value: int) -> tuple[int]:
        return (value,)


@register_node
class PrimitiveFloat(Node):
    schema = _schema("PrimitiveFloat", "Float", InputSpec("value", "FLOAT", min=-sys.maxsize, max=sys.maxsize))

    def run(self, ctx: NodeContext, value: float) -> tuple[float]:
        return (value,)


@register_node
class PrimitiveString(Node):
    schema = _schema("PrimitiveString", "String", InputSpec("value", "STRING", extra={"multiline": False}))

    def run(self, ctx: NodeContext, value: str) -> tuple[str]:
        return (value,)


@register_node
class PrimitiveStringMultiline(Node):
    schema = _schema("PrimitiveStringMultiline", "String (Multiline)", InputSpec("value", "STRING", multiline=True))

    def run(self, ctx: NodeContext, value: str) -> tuple[str]:
        return (value,)


@register_node
class PrimitiveBoolean(Node):
    schema = _schema("PrimitiveBoolean", "Boolean", InputSpec("value", "BOOLEAN"))

    def run(self, ctx: NodeContext, value: bool) -> tuple[bool]:
        return (value,)
