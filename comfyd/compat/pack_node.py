"""A ComfyUI node class (a pack's NODE_CLASS_MAPPINGS entry) as a comfyd Node.

The adapter reads ComfyUI's declaration (INPUT_TYPES, RETURN_TYPES, RETURN_NAMES, FUNCTION,
OUTPUT_NODE, INPUT_IS_LIST, OUTPUT_IS_LIST, IS_CHANGED, VALIDATE_INPUTS) into a NodeSchema, and
runs the class the way ComfyUI does: hidden inputs (PROMPT, EXTRA_PNGINFO, UNIQUE_ID) filled
in, lists mapped over, `{"ui": ..., "result": ...}` returns split into outputs and UI.

Lists: a value that is a ComfyUI list (an OUTPUT_IS_LIST output, or the outputs of a node run
once per list element) travels on its link as one `PackList`; a list of one element travels as
the element itself, so values pass unchanged between pack nodes and comfyd's own nodes.
"""

from __future__ import annotations

import inspect
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfyd.compat import state
from comfyd.compat.aliases import NotProvided
from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import WIDGET_TYPES, InputSpec, Node, NodeOutput, NodeSchema, OutputSpec

HIDDEN_KINDS = (
    "PROMPT",
    "EXTRA_PNGINFO",
    "UNIQUE_ID",
    "DYNPROMPT",
    "AUTH_TOKEN_COMFY_ORG",
    "API_KEY_COMFY_ORG",
)
# Values whose Python objects are comfyd's own and differ from ComfyUI's (ModelPatcher, comfy.sd.VAE,
# comfy.sd.CLIP, ...): pack code that takes or makes them calls methods comfyd's objects lack.
OPAQUE_TYPES = {
    "MODEL": "ComfyUI's ModelPatcher",
    "CLIP": "ComfyUI's comfy.sd.CLIP",
    "VAE": "ComfyUI's comfy.sd.VAE",
    "CONTROL_NET": "ComfyUI's ControlNet objects",
    "CLIP_VISION": "ComfyUI's clip_vision model",
    "CLIP_VISION_OUTPUT": "ComfyUI's clip_vision outputs",
    "STYLE_MODEL": "ComfyUI's style models",
    "GLIGEN": "ComfyUI's GLIGEN model",
    "UPSCALE_MODEL": "ComfyUI's upscale-model loader (spandrel)",
    "SAMPLER": "ComfyUI's KSAMPLER objects",
    "GUIDER": "ComfyUI's CFGGuider",
    "NOISE": "ComfyUI's noise objects",
    "HOOKS": "ComfyUI's hooks",
    "LATENT_OPERATION": "ComfyUI's latent operations",
}


class PackList(list):  # type: ignore[type-arg]
    """A ComfyUI list value travelling on one link."""


@dataclass(frozen=True)
class PackNodeSchema(NodeSchema):
    """A pack node's schema: /object_info shows the pack's own INPUT_TYPES, its module, and, for
    a node that cannot run here, why (`comfyd_unavailable`)."""

    python_module: str = "custom_nodes"
    unavailable: str | None = None
    raw_inputs: Callable[[], dict[str, Any]] | None = None

    def object_info(self, env: NodeEnvironment | None = None) -> dict[str, Any]:
        info = NodeSchema.object_info(self, env)
        raw = None
        if self.raw_inputs is not None:
            try:
                raw = self.raw_inputs()
            except Exception:  # a pack's INPUT_TYPES failing now: keep the declaration from load time
                raw = None
        if isinstance(raw, dict):
            info["input"] = jsonable(raw)
            info["input_order"] = {
                section: list(raw[section])
                for section in ("required", "optional")
                if isinstance(raw.get(section), dict)
            }
        info["python_module"] = self.python_module
        if self.unavailable:
            info["comfyd_unavailable"] = self.unavailable
            info["description"] = f"Unavailable in comfyd: {self.unavailable}"
        return info


def jsonable(value: Any) -> Any:
    """A declaration made safe for JSON (tuples to lists, no NaN/inf, unknown objects as text)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# ---------------------------------------------------------------------------------------------
# Declaration -> schema


def _declaration(decl: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(decl, list | tuple) and decl:
        kind = decl[0]
        opts = decl[1] if len(decl) > 1 and isinstance(decl[1], dict) else {}
        return kind, opts
    return decl, {}


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _combo_source(
    read: Callable[[], dict[str, Any]], section: str, name: str, fallback: list[str]
) -> Callable[[Any], list[str]]:
    def choices(env: Any) -> list[str]:
        try:
            kind, opts = _declaration(read()[section][name])
            if isinstance(kind, list | tuple):
                return list(kind)  # as declared: ComfyUI compares choices as they are (ints stay ints)
            if kind == "COMBO":
                return list(opts.get("options", []))
        except Exception:
            pass
        return fallback

    return choices


def input_specs(
    declared: dict[str, Any], read: Callable[[], dict[str, Any]], self_checked: set[str]
) -> tuple[tuple[InputSpec, ...], dict[str, str]]:
    """The InputSpecs of a ComfyUI INPUT_TYPES dict, and its hidden inputs (name -> kind)."""
    specs: list[InputSpec] = []
    for section, optional in (("required", False), ("optional", True)):
        for name, decl in (declared.get(section) or {}).items():
            kind, opts = _declaration(decl)
            validator = (lambda env, value: None) if name in self_checked else None
            if isinstance(kind, list | tuple) or kind == "COMBO":
                static = list(kind if kind != "COMBO" else opts.get("options", []))
                specs.append(
                    InputSpec(
                        name,
                        "COMBO",
                        default=opts.get("default"),
                        choices=_combo_source(read, section, name, static),
                        optional=optional,
                        validator=validator,
                    )
                )
            elif kind in WIDGET_TYPES:
                specs.append(
                    InputSpec(
                        name,
                        kind,
                        default=opts.get("default"),
                        min=_number(opts.get("min")),
                        max=_number(opts.get("max")),
                        step=_number(opts.get("step")),
                        multiline=bool(opts.get("multiline", False)),
                        optional=optional,
                        validator=validator,
                    )
                )
            else:
                specs.append(InputSpec(name, str(kind), optional=optional, validator=validator))
    hidden = {str(k): str(v) for k, v in (declared.get("hidden") or {}).items()}
    return tuple(specs), hidden


def _flag_list(value: Any, length: int, default: bool = False) -> tuple[bool, ...]:
    if isinstance(value, list | tuple):
        flags = [bool(v) for v in value]
        return tuple((flags + [flags[-1] if flags else default] * length)[:length])
    return (bool(value),) * length if value is not None else (default,) * length


def output_specs(pack_cls: type) -> tuple[OutputSpec, ...]:
    types = [
        ("COMBO" if isinstance(t, list | tuple) else str(t))
        for t in (getattr(pack_cls, "RETURN_TYPES", ()) or ())
    ]
    names = list(getattr(pack_cls, "RETURN_NAMES", None) or [])
    is_list = _flag_list(getattr(pack_cls, "OUTPUT_IS_LIST", None), len(types))
    return tuple(
        OutputSpec(t, name=names[i] if i < len(names) else None, is_list=is_list[i])
        for i, t in enumerate(types)
    )


def _params(fn: Any) -> tuple[set[str], bool]:
    """The keyword names a callable takes, and whether it takes **kwargs."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    varkw = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return names - {"self", "s", "cls"}, varkw


def _filtered(fn: Any, values: dict[str, Any]) -> dict[str, Any]:
    names, varkw = _params(fn)
    return dict(values) if varkw else {k: v for k, v in values.items() if k in names}


# ---------------------------------------------------------------------------------------------
# Running


def _split(raw: Any, class_type: str) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    if isinstance(raw, dict):
        if "expand" in raw:
            raise NotProvided(
                f"{class_type} expands into a subgraph (ComfyUI's node expansion), which comfyd does not run"
            )
        ui = raw.get("ui")
        return tuple(raw.get("result", ()) or ()), ui if isinstance(ui, dict) else None
    if raw is None:
        return (), None
    if isinstance(raw, list | tuple):
        return tuple(raw), None
    raise TypeError(f"{class_type} returned {type(raw).__name__}; ComfyUI nodes return a tuple or a dict")


def call_pack_function(
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    input_is_list: bool,
    output_is_list: tuple[bool, ...],
    class_type: str,
) -> NodeOutput:
    """Call a ComfyUI node function once, or once per list element, and gather what it returns."""
    if input_is_list:
        calls = [{k: list(v) if isinstance(v, PackList) else [v] for k, v in kwargs.items()}]
    else:
        lists = [v for v in kwargs.values() if isinstance(v, PackList)]
        count = 0 if any(len(v) == 0 for v in lists) else max((len(v) for v in lists), default=1)
        calls = [
            {k: (v[min(i, len(v) - 1)] if isinstance(v, PackList) else v) for k, v in kwargs.items()}
            for i in range(count)
        ]
    slots: list[list[Any]] = [[] for _ in output_is_list]
    uis: list[dict[str, Any]] = []
    ctx = state.current_context()
    for call in calls:
        if ctx is not None:
            ctx.check_interrupted()
        values, ui = _split(fn(**call), class_type)
        if ui is not None:
            uis.append(ui)
        if len(values) < len(slots):  # ComfyUI tolerates this; a link to the absent output gets None
            values = values + (None,) * (len(slots) - len(values))
        for i, slot in enumerate(slots):
            if output_is_list[i] and isinstance(values[i], list | tuple):
                slot.extend(values[i])
            else:
                slot.append(values[i])
    outputs = tuple(slot[0] if len(slot) == 1 else PackList(slot) for slot in slots)
    merged: dict[str, Any] | None = None
    if uis:
        merged = {}
        for ui in uis:
            for key, value in ui.items():
                if isinstance(value, list | tuple):
                    merged.setdefault(key, []).extend(value)
                else:
                    merged[key] = value
    return NodeOutput(values=outputs, ui=merged)


def make_pack_node(
    pack: str, class_type: str, pack_cls: type, display_name: str | None, unavailable: str | None
) -> type[Node]:
    """The comfyd Node class that runs `pack_cls`; raises if the declaration cannot be read."""

    def read() -> dict[str, Any]:
        declared = pack_cls.INPUT_TYPES()
        if not isinstance(declared, dict):
            raise TypeError(f"INPUT_TYPES returned {type(declared).__name__}, not a dict")
        return declared

    declared = read()
    validate_fn = getattr(pack_cls, "VALIDATE_INPUTS", None)
    validate_names, validate_varkw = _params(validate_fn) if validate_fn is not None else (set(), False)
    specs, hidden = input_specs(declared, read, validate_names - {"input_types"})
    function = getattr(pack_cls, "FUNCTION", None)
    if unavailable is None and (
        not isinstance(function, str) or not callable(getattr(pack_cls, function, None))
    ):
        unavailable = f"FUNCTION {function!r} is not a method of the class"

    def check(env: Any, values: dict[str, Any]) -> str | None:
        if unavailable is not None:
            return unavailable
        if validate_fn is None:
            return None
        given = {k: v for k, v in values.items() if validate_varkw or k in validate_names}
        for name in validate_names:
            given.setdefault(name, {} if name == "input_types" else None)
        result = validate_fn(**given)
        return None if result is True else str(result)

    schema = PackNodeSchema(
        class_type=class_type,
        inputs=specs,
        outputs=output_specs(pack_cls),
        category=str(getattr(pack_cls, "CATEGORY", "") or ""),
        display_name=display_name,
        description=str(getattr(pack_cls, "DESCRIPTION", "") or ""),
        output_node=bool(getattr(pack_cls, "OUTPUT_NODE", False)),
        python_module=f"custom_nodes.{pack}",
        unavailable=unavailable,
        raw_inputs=read,
        check=check if (validate_fn is not None or unavailable is not None) else None,
    )
    input_is_list = bool(getattr(pack_cls, "INPUT_IS_LIST", False))
    output_flags = tuple(o.is_list for o in schema.outputs)
    is_changed = getattr(pack_cls, "IS_CHANGED", None)

    class PackNode(Node):
        comfyd_pack = pack
        comfyui_class = pack_cls

        def __init__(self) -> None:
            self._instance: Any = None

        def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
            if hidden:  # the node sees its id or the prompt: never share its result
                return uuid.uuid4().hex
            if is_changed is None:
                return None
            try:
                value = is_changed(**_filtered(is_changed, inputs))
            except Exception:
                return False  # ComfyUI treats a failing IS_CHANGED as "unchanged"
            if isinstance(value, float) and math.isnan(value):
                return uuid.uuid4().hex  # ComfyUI's "always run": NaN never equals itself
            return value if isinstance(value, str | int | float | bool) or value is None else repr(value)

        def run(self, ctx: NodeContext, **inputs: Any) -> NodeOutput:
            if unavailable is not None:
                raise NotProvided(f"{class_type} cannot run in comfyd: {unavailable}")
            hidden_values = {
                "PROMPT": ctx.prompt,
                "EXTRA_PNGINFO": ctx.extra_pnginfo,
                "UNIQUE_ID": ctx.node_id,
            }
            kwargs = dict(inputs)
            for name, kind in hidden.items():
                kwargs[name] = hidden_values.get(kind)
            with state.running(ctx):
                if self._instance is None:
                    self._instance = pack_cls()
                fn = getattr(self._instance, str(function))
                return call_pack_function(
                    fn,
                    kwargs,
                    input_is_list=input_is_list,
                    output_is_list=output_flags,
                    class_type=class_type,
                )

    PackNode.schema = schema
    PackNode.__name__ = PackNode.__qualname__ = f"Pack_{class_type}"
    return PackNode
