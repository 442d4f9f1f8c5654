"""Why a pack's node cannot run in comfyd, found before it runs.

Two reasons are recognised: the node takes or returns a value whose Python object differs
between ComfyUI and comfyd (MODEL is a ModelPatcher there; see pack_node.OPAQUE_TYPES), and the
node's own code uses a ComfyUI name comfyd does not provide (`comfy.sd...`, a placeholder
module, a function the compatibility modules lack). The code check reads the class's source,
so a missing name used only by a helper function elsewhere is found when the node runs (the
error then names it).
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from typing import Any

from comfyd.compat.aliases import PROVIDED, is_missing
from comfyd.compat.pack_node import OPAQUE_TYPES, _declaration

_DOTTED = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_PROVIDED_MODULES = frozenset(PROVIDED.values())


def _types(pack_cls: type, declared: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for section in ("required", "optional"):
        for decl in (declared.get(section) or {}).values():
            kind, _ = _declaration(decl)
            if isinstance(kind, str):
                found.append(kind)
    found.extend(t for t in (getattr(pack_cls, "RETURN_TYPES", ()) or ()) if isinstance(t, str))
    return found


def opaque_type_reason(pack_cls: type, declared: dict[str, Any]) -> str | None:
    for kind in _types(pack_cls, declared):
        for part in kind.split(","):
            if part in OPAQUE_TYPES:
                return f"uses {part} values, which need {OPAQUE_TYPES[part]}; comfyd's {part} objects differ"
    return None


def _resolve(root: Any, attrs: list[str]) -> tuple[Any, str | None]:
    """Follow `root.a.b...`; returns (value, the first missing dotted name or None)."""
    value = root
    path = getattr(root, "__name__", "")
    for attr in attrs:
        if is_missing(value):
            return value, path
        module_name = getattr(value, "__name__", None)
        if (
            not isinstance(value, types.ModuleType)
            or module_name not in _PROVIDED_MODULES
            and not is_missing(value)
        ):
            return value, None  # not a ComfyUI module: nothing to check
        path = f"{_public_name(module_name)}.{attr}"
        try:
            value = getattr(value, attr)
        except AttributeError:
            return None, path
    return value, (path if is_missing(value) else None)


def _public_name(module_name: str | None) -> str:
    for public, target in PROVIDED.items():
        if target == module_name:
            return public
    return module_name or "?"


def missing_name_reason(pack_cls: type) -> str | None:
    try:
        source = inspect.getsource(pack_cls)
    except (OSError, TypeError):
        return None
    module = sys.modules.get(pack_cls.__module__)
    if module is None:
        return None
    namespace = vars(module)
    for match in _DOTTED.finditer(source):
        head, rest = match.group(1), match.group(2).split(".")[1:]
        if head not in namespace:
            continue
        root = namespace[head]
        if is_missing(root) and not isinstance(root, types.ModuleType):
            return f"uses {root._qualname}, which comfyd does not provide"  # type: ignore[attr-defined]
        if isinstance(root, types.ModuleType) and (root.__name__ in _PROVIDED_MODULES or is_missing(root)):
            _, missing_path = _resolve(root, rest)
            if missing_path is not None:
                return f"uses {missing_path}, which comfyd does not provide"
    for name, value in namespace.items():
        if (
            is_missing(value)
            and not isinstance(value, types.ModuleType)
            and re.search(rf"\b{re.escape(name)}\b", source)
        ):
            return f"uses {value._qualname}, which comfyd does not provide"  # type: ignore[attr-defined]
    return None


def unavailable_reason(pack_cls: type, declared: dict[str, Any]) -> str | None:
    return opaque_type_reason(pack_cls, declared) or missing_name_reason(pack_cls)
