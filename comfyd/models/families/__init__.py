"""The model family registry: every module of this package that defines `FAMILY` is one family.

Adding a family is adding one module here (see docs/architecture.md, "Adding a model family");
nothing else lists the families. `discover(package)` walks any package the same way, and
`register` adds a family built elsewhere (a plugin, a test).
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from pathlib import Path
from types import ModuleType

from comfyd.models.families.base import (
    CONFIG_DIR,
    ConfigReader,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    LatentFormat,
    SamplingSpec,
)

__all__ = [
    "CONFIG_DIR",
    "ConfigReader",
    "EncoderRecipe",
    "EncoderSpec",
    "Family",
    "HeadRule",
    "LatentFormat",
    "SamplingSpec",
    "all_families",
    "discover",
    "get",
    "names",
    "near_miss",
    "recognise_diffusers",
    "recognise_single_file",
    "register",
    "unregister",
    "vae_family_hint",
]

DEFAULT_FAMILY = "sd1"  # what a file that says nothing about its family is taken for
_NOT_FAMILY_MODULES = {"base"}

_registry: dict[str, Family] = {}
_lock = threading.Lock()
_discovered = False


def register(family: Family) -> Family:
    """Add `family`; a second family under the same name is refused."""
    if not isinstance(family, Family):
        raise TypeError(f"a model family must be a Family, got {type(family).__name__}")
    with _lock:
        existing = _registry.get(family.name)
        if existing is not None and existing is not family:
            raise ValueError(f"model family {family.name!r} is registered twice")
        _registry[family.name] = family
    return family


def unregister(name: str) -> None:
    with _lock:
        _registry.pop(name, None)


def discover(package: ModuleType) -> list[Family]:
    """Import every module of `package` (not starting with `_`) and register its `FAMILY`."""
    found: list[Family] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_FAMILY_MODULES or info.ispkg:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        family = getattr(module, "FAMILY", None)
        if family is None:
            continue
        found.append(register(family))
    return found


def _ensure_discovered() -> None:
    global _discovered
    if _discovered:
        return
    import comfyd.models.families as this_package

    discover(this_package)
    _discovered = True


def all_families() -> tuple[Family, ...]:
    _ensure_discovered()
    with _lock:
        return tuple(_registry[name] for name in sorted(_registry))


def names() -> tuple[str, ...]:
    return tuple(f.name for f in all_families())


def get(name: str) -> Family:
    """The family called `name`; ValueError naming the known ones otherwise."""
    _ensure_discovered()
    family = _registry.get(name)
    if family is None:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(names())}")
    return family


def _most_specific(claims: list[Family]) -> list[Family]:
    """Drop every claiming family that another claiming family refines."""
    claimed = {f.name for f in claims}
    refined = {f.refines for f in claims if f.refines in claimed}
    return [f for f in claims if f.name not in refined]


def recognise_single_file(prefixes: set[str], keys: set[str]) -> tuple[Family, dict[str, str]] | None:
    """(family, encoder name -> stored prefix) of an original-layout checkpoint, or None."""
    found = {f.name: m for f in all_families() if (m := f.recognise(prefixes, keys)) is not None}
    claims = _most_specific([get(name) for name in found])
    if len(claims) > 1:
        raise ValueError("model families disagree about one file: " + ", ".join(f.name for f in claims))
    return (claims[0], found[claims[0].name]) if claims else None


def near_miss(prefixes: set[str], keys: set[str]) -> str | None:
    """The first family's message about an unsupported variant the file looks like."""
    for family in all_families():
        message = family.near_miss(prefixes, keys)
        if message:
            return message
    return None


def recognise_diffusers(folder: Path, read_config: ConfigReader) -> Family | None:
    claims = _most_specific([f for f in all_families() if f.recognise_diffusers(folder, read_config)])
    if len(claims) > 1:
        raise ValueError(
            f"model families disagree about {folder.name}: " + ", ".join(f.name for f in claims)
        )
    return claims[0] if claims else None


def vae_family_hint(file_name: str) -> Family:
    """A standalone VAE does not say which model it belongs to; its name may hint (else SD1)."""
    lowered = file_name.lower()
    for family in all_families():
        if any(hint in lowered for hint in family.vae_name_hints):
            return family
    return get(DEFAULT_FAMILY)
