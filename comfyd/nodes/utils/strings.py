"""String nodes (ComfyUI category `utils/string`): StringConcatenate."""

from __future__ import annotations

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import InputSpec, Node, NodeSchema, OutputSpec, String, register_node


@register_node
class StringConcatenate(Node):
    schema = NodeSchema(
        class_type="StringConcatenate",
        display_name="Concatenate",
        inputs=(
            InputSpec("string_a", "STRING", multiline=True),
            InputSpec("string_b", "STRING", multiline=True),
            String("delimiter", default="", extra={"multiline": False}),
        ),
        outputs=(OutputSpec("STRING"),),
        category="utils/string",
    )

    def run(self, ctx: NodeContext, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (delimiter.join((string_a, string_b)),)
