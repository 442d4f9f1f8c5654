"""Widget layouts: which inputs of a node class the ComfyUI frontend shows as widgets, in order.

A UI-format workflow stores a node's literal inputs as the list `widgets_values`, in the order of
the node's widgets; turning it into an API prompt needs that order. comfyd's own nodes give it
from their schemas. For ComfyUI's built-in nodes that comfyd does not implement, a table dumped
from ComfyUI 0.3.64's declarations (bench/comfyui_widget_layouts.py) gives it: the layout
assumed is that version's. The same table names the model folder each loader's combo reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from comfyd.engine.schema import WIDGET_TYPES, NodeSchema

LAYOUT_SOURCE_VERSION = "0.3.64"
CORE_PACK = "ComfyUI core"


@dataclass(frozen=True)
class Widget:
    name: str
    type: str
    # The frontend adds a control_after_generate value ("fixed", "randomize", ...) after it.
    control: bool = False
    # The frontend adds an upload button whose value ("image") follows in widgets_values.
    upload: bool = False
    default: Any = None


@dataclass(frozen=True)
class NodeLayout:
    class_type: str
    widgets: tuple[Widget, ...]
    # Link-type inputs (name, type), in declaration order.
    links: tuple[tuple[str, str], ...] = ()
    outputs: tuple[str, ...] = ()
    # widget name -> ComfyUI model folder its file name is looked up in.
    model_folders: dict[str, str] = field(default_factory=dict)
    # "comfyd" when comfyd implements the node, "comfyui" when only ComfyUI's table knows it.
    source: str = "comfyd"


@lru_cache(maxsize=1)
def comfyui_table() -> dict[str, Any]:
    text = resources.files("comfyd.workflow_formats").joinpath("data/comfyui_widget_layouts.json").read_text()
    return json.loads(text)["nodes"]


@lru_cache(maxsize=1)
def node_pack_table() -> dict[str, str]:
    text = resources.files("comfyd.workflow_formats").joinpath("data/node_packs.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def pack_for(class_type: str) -> str | None:
    """The custom-node pack known to provide `class_type`, or ComfyUI core for built-in nodes."""
    pack = node_pack_table().get(class_type)
    if pack:
        return pack
    if class_type in comfyui_table():
        return CORE_PACK
    return None


def layout_from_schema(schema: NodeSchema) -> NodeLayout:
    ordered = [s for s in schema.inputs if not s.optional] + [s for s in schema.inputs if s.optional]
    widgets = []
    links = []
    for spec in ordered:
        if spec.type in WIDGET_TYPES and not spec.extra.get("forceInput"):
            control = spec.control_after_generate or (spec.type == "INT" and spec.name in ("seed", "noise_seed"))
            upload = spec.image_upload or any(spec.extra.get(k) for k in ("video_upload", "audio_upload"))
            default = spec.default
            if default is None and not spec.optional and isinstance(spec.choices, list) and spec.choices:
                # What the frontend shows for a required combo the saved node lacks (saved before
                # the node had that widget): its first choice.
                default = spec.choices[0]
            widgets.append(Widget(spec.name, spec.type, control, upload, default))
        else:
            links.append((spec.name, spec.type))
    folders = dict(comfyui_table().get(schema.class_type, {}).get("model_folders", {}))
    return NodeLayout(
        schema.class_type, tuple(widgets), tuple(links), tuple(o.type for o in schema.outputs), folders, "comfyd"
    )


def layout_from_table(class_type: str) -> NodeLayout | None:
    entry = comfyui_table().get(class_type)
    if entry is None:
        return None
    widgets = tuple(
        Widget(w[0], w[1], control="control" in w[2:], upload="upload" in w[2:]) for w in entry["widgets"]
    )
    return NodeLayout(
        class_type,
        widgets,
        tuple((n, t) for n, t in entry["links"]),
        tuple(entry["outputs"]),
        dict(entry.get("model_folders", {})),
        "comfyui",
    )


LayoutLookup = Callable[[str], "NodeLayout | None"]


def registry_layouts(registry: Any | None = None) -> LayoutLookup:
    """Layouts from a node registry (comfyd's schemas first), then from ComfyUI's table."""
    if registry is None:
        from comfyd.engine.schema import REGISTRY

        registry = REGISTRY

    def lookup(class_type: str) -> NodeLayout | None:
        node_cls = registry.get(class_type)
        if node_cls is not None:
            return layout_from_schema(node_cls.schema)
        return layout_from_table(class_type)

    return lookup
