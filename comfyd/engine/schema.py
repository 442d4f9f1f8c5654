"""Node schemas and the node registry.

A node is a small declarative class: a `schema` (its inputs and outputs, which also render as
ComfyUI's `/object_info` entry) and a `run` method. Node modules register themselves with
`@register_node`; the engine only ever sees the registry, never a node module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from comfyd.engine.context import NodeContext, NodeEnvironment

# Value types that travel on links between nodes (ComfyUI's names).
LINK_TYPES = frozenset(
    {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "UPSCALE_MODEL", "CLIP_VISION"}
)
# Types whose values are literals in the workflow JSON (widgets in ComfyUI's UI).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

ChoiceSource = Callable[["NodeEnvironment"], list[str]]
# Checks one literal value; returns None when valid, else the reason it is not.
InputValidator = Callable[["NodeEnvironment | None", Any], "str | None"]
# Checks a node's literal inputs together (ComfyUI's VALIDATE_INPUTS); None when valid.
NodeValidator = Callable[["NodeEnvironment | None", dict[str, Any]], "str | None"]


@dataclass(frozen=True)
class InputSpec:
    """One input of a node.

    `type` is a link type (MODEL, LATENT, ...) or a widget type (INT, FLOAT, STRING, BOOLEAN,
    COMBO). COMBO inputs take their allowed values from `choices`: a fixed list, or a function
    of the environment (the files present in `models/checkpoints`, say).
    """

    name: str
    type: str
    default: Any = None
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | None = None
    choices: list[str] | ChoiceSource | None = None
    multiline: bool = False
    tooltip: str | None = None
    optional: bool = False
    # ComfyUI widgets such as `seed` carry control_after_generate in the UI only.
    control_after_generate: bool = False
    image_upload: bool = False
    # Link inputs may also accept a literal (ComfyUI's forceInput is the opposite); rarely used.
    extra: dict[str, Any] = field(default_factory=dict)
    # The input checks its own value, like an input ComfyUI's VALIDATE_INPUTS takes: validation
    # skips the range and choice-list checks and reports a returned reason as
    # `custom_validation_failed`. LoadImage accepts files its choice list does not show this way.
    validator: InputValidator | None = None
    # ComfyUI's newer (v3 schema) nodes declare a choice as ["COMBO", {"options": [...]}] rather
    # than [[...], {}]; /object_info and error bodies show it that way.
    combo_as_options: bool = False

    @property
    def is_link(self) -> bool:
        return self.type not in WIDGET_TYPES

    def resolve_choices(self, env: NodeEnvironment | None) -> list[str]:
        if self.choices is None:
            return []
        if callable(self.choices):
            return list(self.choices(env)) if env is not None else []
        return list(self.choices)

    def options(self) -> dict[str, Any]:
        """The option dict ComfyUI shows beside the type in /object_info and error bodies."""
        opts: dict[str, Any] = {}
        if self.default is not None:
            opts["default"] = self.default
        for key in ("min", "max", "step", "round"):
            value = getattr(self, key)
            if value is not None:
                opts[key] = value
        if self.multiline:
            opts["multiline"] = True
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.image_upload:
            opts["image_upload"] = True
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        opts.update(self.extra)
        return opts

    def input_config(self, env: NodeEnvironment | None) -> list[Any]:
        """ComfyUI's `[type_or_choices, options]` pair for this input."""
        if self.type == "COMBO":
            opts = {k: v for k, v in self.options().items() if k != "tooltip"}
            if self.combo_as_options:
                return ["COMBO", {"multiselect": False, "options": self.resolve_choices(env), **opts}]
            return [self.resolve_choices(env), opts]
        return [self.type, self.options()]


# Small constructors so node files read like ComfyUI's INPUT_TYPES tables.
def Int(name: str, default: int = 0, min: int = 0, max: int = 2**31 - 1, step: int = 1, **kw: Any) -> InputSpec:
    return InputSpec(name, "INT", default=default, min=min, max=max, step=step, **kw)


def Float(
    name: str, default: float = 0.0, min: float = 0.0, max: float = 1.0, step: float = 0.01, **kw: Any
) -> InputSpec:
    return InputSpec(name, "FLOAT", default=default, min=min, max=max, step=step, **kw)


def String(name: str, default: str = "", multiline: bool = False, **kw: Any) -> InputSpec:
    return InputSpec(name, "STRING", default=default, multiline=multiline, **kw)


def Boolean(name: str, default: bool = False, **kw: Any) -> InputSpec:
    return InputSpec(name, "BOOLEAN", default=default, **kw)


def Combo(name: str, choices: list[str] | ChoiceSource, default: str | None = None, **kw: Any) -> InputSpec:
    return InputSpec(name, "COMBO", choices=choices, default=default, **kw)


def Link(name: str, type: str, **kw: Any) -> InputSpec:
    return InputSpec(name, type, **kw)


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str | None = None
    is_list: bool = False


@dataclass(frozen=True)
class NodeSchema:
    class_type: str
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    category: str = ""
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    # Inputs ComfyUI passes implicitly: PROMPT (the API prompt), EXTRA_PNGINFO, UNIQUE_ID.
    hidden: tuple[str, ...] = ()
    # Whole-node check after the per-input ones (custom nodes' VALIDATE_INPUTS); its reason is
    # reported as `custom_validation_failed`.
    check: NodeValidator | None = None

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def required(self) -> tuple[InputSpec, ...]:
        return tuple(s for s in self.inputs if not s.optional)

    def object_info(self, env: NodeEnvironment | None = None) -> dict[str, Any]:
        """This node's entry in ComfyUI's GET /object_info."""
        required = {s.name: s.input_config(env) for s in self.inputs if not s.optional}
        optional = {s.name: s.input_config(env) for s in self.inputs if s.optional}
        hidden_names = {"PROMPT": "prompt", "EXTRA_PNGINFO": "extra_pnginfo", "UNIQUE_ID": "unique_id"}
        input_block: dict[str, Any] = {"required": required}
        if optional:
            input_block["optional"] = optional
        if self.hidden:
            input_block["hidden"] = {hidden_names.get(h, h.lower()): h for h in self.hidden}
        order: dict[str, list[str]] = {"required": list(required)}
        if optional:
            order["optional"] = list(optional)
        return {
            "input": input_block,
            "input_order": order,
            "output": [o.type for o in self.outputs],
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": [o.name or o.type for o in self.outputs],
            "name": self.class_type,
            "display_name": self.display_name or self.class_type,
            "description": self.description,
            "python_module": "comfyd.nodes",
            "category": self.category,
            "output_node": self.output_node,
        }


@dataclass
class NodeOutput:
    """What a node's `run` returns: the values for its output slots, and what the UI shows."""

    values: tuple[Any, ...] = ()
    ui: dict[str, Any] | None = None


class Node:
    """Base class for nodes. Subclasses set `schema` and implement `run`.

    `run(ctx, **inputs)` receives every input by name (links resolved to upstream values,
    literals converted to their declared type, optional inputs absent when not given) and
    returns a NodeOutput, or a plain tuple of output values.
    """

    schema: ClassVar[NodeSchema]
    # True where ComfyUI's node has IS_CHANGED: ComfyUI writes that value into the prompt as the
    # node's "is_changed" ([value]), so it shows in /history and in saved PNGs' "prompt" chunk.
    # The fingerprint then plays that role and is recorded the same way.
    fingerprint_is_comfyui_is_changed: ClassVar[bool] = False

    # A node whose output depends on more than its inputs (a file on disk that may change,
    # say) returns a fingerprint here; it becomes part of the cache key.
    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:  # pragma: no cover - default
        return None

    def run(self, ctx: NodeContext, **inputs: Any) -> NodeOutput | tuple[Any, ...]:
        raise NotImplementedError


class NodeRegistry:
    """class_type -> node class. The only global mutable state the engine has."""

    def __init__(self) -> None:
        self._nodes: dict[str, type[Node]] = {}

    def register(self, node_cls: type[Node]) -> type[Node]:
        name = node_cls.schema.class_type
        existing = self._nodes.get(name)
        if existing is not None and existing is not node_cls:
            raise ValueError(f"node class_type {name!r} registered twice ({existing} and {node_cls})")
        self._nodes[name] = node_cls
        return node_cls

    def get(self, class_type: str) -> type[Node] | None:
        return self._nodes.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._nodes

    def names(self) -> list[str]:
        return sorted(self._nodes)

    def items(self) -> Iterable[tuple[str, type[Node]]]:
        return sorted(self._nodes.items())

    def object_info(self, env: NodeEnvironment | None = None) -> dict[str, Any]:
        return {name: cls.schema.object_info(env) for name, cls in self.items()}

    def copy(self) -> NodeRegistry:
        """A registry holding the same nodes, to extend without touching this one (custom nodes
        are added to a runtime's copy, never to the global registry)."""
        other = NodeRegistry()
        other._nodes = dict(self._nodes)
        return other


REGISTRY = NodeRegistry()


def register_node(node_cls: type[Node]) -> type[Node]:
    """Class decorator: add a node class to the global registry."""
    return REGISTRY.register(node_cls)
