"""Loading custom nodes: ComfyUI packs and comfyd plugins from folders, plugins from entry points.

Every entry of every folder in `COMFYD_CUSTOM_NODES_DIRS` is one pack: a package folder (with
`__init__.py`) or a single `.py` file, imported as ComfyUI imports it (the folder name is the
module name). A module with `NODE_CLASS_MAPPINGS` is a ComfyUI pack; one with `COMFYD_NODES`
is a comfyd plugin. Installed distributions add plugins through the `comfyd.nodes` entry-point
group (a module with `COMFYD_NODES`, or a callable returning node classes).

Nothing is installed: a pack's `requirements.txt` is read and the distributions it names that
are not installed are reported. A pack that fails to import is reported and skipped; a node that
cannot run here (see comfyd.compat.analysis) is registered as unavailable, with its reason, so
it shows in /object_info and a workflow using it gets a 400 naming the reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from comfyd.compat import aliases, state
from comfyd.compat.analysis import unavailable_reason
from comfyd.compat.pack_node import make_pack_node
from comfyd.engine.schema import Node, NodeRegistry

log = logging.getLogger("comfyd.custom_nodes")

ENTRY_POINT_GROUP = "comfyd.nodes"


@dataclass
class PackReport:
    """What loading one pack did."""

    name: str
    path: str
    kind: str = "comfyui"  # comfyui | plugin | entry_point
    loaded: bool = False
    error: str | None = None  # why the pack did not load (its import failed)
    nodes: list[str] = field(default_factory=list)  # registered and runnable
    unavailable: dict[str, str] = field(default_factory=dict)  # registered, cannot run: reason
    skipped: dict[str, str] = field(default_factory=dict)  # not registered: reason
    missing_requirements: list[str] = field(default_factory=list)
    web_directory: str | None = None
    import_seconds: float = 0.0
    # The node classes made for this pack (runnable and unavailable), registered into every
    # registry the pack is loaded into.
    node_classes: dict[str, type[Node]] = field(default_factory=dict, repr=False)

    @property
    def classes_found(self) -> int:
        return len(self.nodes) + len(self.unavailable) + len(self.skipped)


_lock = threading.Lock()
_reports: dict[str, PackReport] = {}


def reports() -> list[PackReport]:
    """Every pack loaded (or tried) in this process, in load order."""
    return list(_reports.values())


def unavailable_nodes() -> dict[str, str]:
    """class_type -> why it cannot run, for every custom node registered as unavailable and
    every class a pack declared that could not be registered. For `comfyd check` and the like."""
    out: dict[str, str] = {}
    for report in _reports.values():
        out.update(report.unavailable)
        out.update(report.skipped)
    return out


def web_directories(settings: Any = None) -> dict[str, Path]:
    """Pack name -> its WEB_DIRECTORY (served as static files under /extensions/<name>/), for
    the packs loaded from the folders `settings` names (every loaded pack without settings)."""
    folders = None
    if settings is not None:
        folders = {Path(d).resolve() for d in getattr(settings, "custom_nodes_dirs", []) or []}
    return {
        r.name: Path(r.web_directory)
        for r in _reports.values()
        if r.loaded and r.web_directory and (folders is None or Path(r.path).parent.resolve() in folders)
    }


def load_custom_nodes(settings: Any, registry: NodeRegistry, env: Any = None) -> list[PackReport]:
    """Load what the settings name (idempotent per folder entry); never raises for a pack."""
    state.set_settings(settings)
    if env is not None:
        state.set_environment(env)
    dirs = [Path(d) for d in getattr(settings, "custom_nodes_dirs", []) or []]
    done: list[PackReport] = []
    with _lock:
        if dirs:
            aliases.install()
        for directory in dirs:
            if not directory.is_dir():
                log.warning("custom nodes folder %s does not exist; skipped", directory)
                continue
            for entry in sorted(directory.iterdir(), key=lambda p: p.name):
                if not _is_pack(entry):
                    continue
                key = str(entry.resolve())
                if key not in _reports:
                    _reports[key] = _load_folder_pack(entry, registry)
                    _log_report(_reports[key])
                done.append(_reports[key])
        if getattr(settings, "load_plugins", True):
            for report in _load_entry_points(registry):
                _reports[report.path] = report
                _log_report(report)
            done.extend(r for r in _reports.values() if r.kind == "entry_point")
        for report in done:
            _install(report, registry)
    return done


def node_registry(settings: Any, env: Any = None) -> NodeRegistry:
    """comfyd's nodes plus the custom nodes the settings name, in a registry of their own: the
    global registry keeps the built-in nodes only."""
    import comfyd.nodes  # noqa: F401  (registers the built-in nodes this registry starts from)
    from comfyd.engine.schema import REGISTRY

    registry = REGISTRY.copy()
    load_custom_nodes(settings, registry, env)
    return registry


def _install(report: PackReport, registry: NodeRegistry) -> None:
    for name, node_cls in report.node_classes.items():
        if registry.get(name) is node_cls:
            continue
        if name in registry:
            report.skipped.setdefault(name, f"a node named {name} is already registered")
            continue
        registry.register(node_cls)


def _is_pack(entry: Path) -> bool:
    name = entry.name
    if name.startswith((".", "_")) or name.endswith(".disabled"):
        return False
    if entry.is_dir():
        return (entry / "__init__.py").is_file()
    return entry.suffix == ".py"


def _module_name(entry: Path) -> str:
    return (entry.stem if entry.is_file() else entry.name).replace(".", "_")


def _import_pack(entry: Path) -> ModuleType:
    name = _module_name(entry)
    existing = sys.modules.get(name)
    if existing is not None:
        raise ImportError(
            f"module name {name!r} is already taken by {getattr(existing, '__file__', existing)!r}"
        )
    if entry.is_dir():
        spec = importlib.util.spec_from_file_location(
            name, entry / "__init__.py", submodule_search_locations=[str(entry)]
        )
    else:
        spec = importlib.util.spec_from_file_location(name, entry)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {entry}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _load_folder_pack(entry: Path, registry: NodeRegistry) -> PackReport:
    report = PackReport(name=_module_name(entry), path=str(entry))
    report.missing_requirements = missing_requirements(entry / "requirements.txt") if entry.is_dir() else []
    started = time.perf_counter()
    touched_before = len(aliases.touched)
    try:
        module = _import_pack(entry)
    except (Exception, SystemExit) as exc:  # a pack's import error never stops comfyd
        report.import_seconds = time.perf_counter() - started
        report.error = _describe(exc)
        log.debug("pack %s import traceback:\n%s", entry.name, "".join(traceback.format_exception(exc)))
        return report
    report.import_seconds = time.perf_counter() - started
    report.loaded = True
    placeholders = sorted(set(aliases.touched[touched_before:]))
    if placeholders:
        log.debug("pack %s imported ComfyUI names comfyd lacks: %s", report.name, ", ".join(placeholders))
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if isinstance(mappings, dict):
        _register_comfyui_nodes(report, module, mappings, registry)
        web = getattr(module, "WEB_DIRECTORY", None)
        if isinstance(web, str) and entry.is_dir():
            web_path = (entry / web).resolve()
            if web_path.is_dir():
                report.web_directory = str(web_path)
    elif hasattr(module, "COMFYD_NODES"):
        report.kind = "plugin"
        _register_plugin_nodes(report, module.COMFYD_NODES, registry)
    elif entry.is_dir() and hasattr(module, "comfy_entrypoint"):
        report.error = "uses ComfyUI's V3 extension API (comfy_entrypoint), which comfyd does not load yet"
        report.loaded = False
    else:
        report.error = "defines neither NODE_CLASS_MAPPINGS (ComfyUI pack) nor COMFYD_NODES (comfyd plugin)"
        report.loaded = False
    return report


def _register_comfyui_nodes(
    report: PackReport, module: ModuleType, mappings: dict[str, Any], registry: NodeRegistry
) -> None:
    names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    for class_type, pack_cls in mappings.items():
        class_type = str(class_type)
        if class_type in registry:
            report.skipped[class_type] = f"a node named {class_type} is already registered"
            continue
        if not isinstance(pack_cls, type):
            report.skipped[class_type] = "its NODE_CLASS_MAPPINGS entry is not a class"
            continue
        missing_base = next((b for b in pack_cls.__mro__[1:] if aliases.is_missing(b)), None)
        if missing_base is not None or (hasattr(pack_cls, "define_schema") and "INPUT_TYPES" not in dir(pack_cls)):
            base = getattr(missing_base, "_qualname", "comfy_api io.ComfyNode")
            kind = "a V3 schema node" if "comfy_api" in base else "a node"
            report.skipped[class_type] = f"{kind} subclassing {base}, which comfyd does not provide yet"
            continue
        try:
            declared = pack_cls.INPUT_TYPES()
            reason = unavailable_reason(pack_cls, declared if isinstance(declared, dict) else {})
            node = make_pack_node(report.name, class_type, pack_cls, names.get(class_type), reason)
            report.node_classes[class_type] = node
        except Exception as exc:
            report.skipped[class_type] = f"its declaration cannot be read: {_describe(exc)}"
            continue
        if reason is None and node.schema.unavailable is None:  # type: ignore[attr-defined]
            report.nodes.append(class_type)
        else:
            report.unavailable[class_type] = node.schema.unavailable or reason or ""  # type: ignore[attr-defined]


def _register_plugin_nodes(report: PackReport, nodes: Any, registry: NodeRegistry) -> None:
    try:
        classes = list(nodes() if callable(nodes) and not isinstance(nodes, type) else nodes)
    except Exception as exc:
        report.error = f"listing its nodes failed: {_describe(exc)}"
        report.loaded = False
        return
    for node_cls in classes:
        name = getattr(getattr(node_cls, "schema", None), "class_type", None)
        if not (isinstance(node_cls, type) and issubclass(node_cls, Node) and isinstance(name, str)):
            report.skipped[repr(node_cls)] = "not a comfyd Node subclass with a schema"
            continue
        if name in registry or name in report.node_classes:
            report.skipped[name] = f"a node named {name} is already registered"
            continue
        node_cls.comfyd_pack = report.name  # type: ignore[attr-defined]
        report.node_classes[name] = node_cls
        report.nodes.append(name)


def _load_entry_points(registry: NodeRegistry) -> list[PackReport]:
    out: list[PackReport] = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        key = f"entry_point:{ep.name}={ep.value}"
        if key in _reports:
            continue
        report = PackReport(name=ep.name, path=key, kind="entry_point")
        started = time.perf_counter()
        try:
            target = ep.load()
        except (Exception, SystemExit) as exc:
            report.error = _describe(exc)
            out.append(report)
            continue
        report.import_seconds = time.perf_counter() - started
        report.loaded = True
        nodes = getattr(target, "COMFYD_NODES", target)
        _register_plugin_nodes(report, nodes, registry)
        out.append(report)
    return out


def missing_requirements(path: Path) -> list[str]:
    """Requirements in a pack's requirements.txt that no installed distribution satisfies by name."""
    if not path.is_file():
        return []
    from packaging.requirements import InvalidRequirement, Requirement

    missing: list[str] = []
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            missing.append(line)  # a URL or a form pip alone understands: report it as is
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(req))
    return missing


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _log_report(report: PackReport) -> None:
    if report.missing_requirements:
        log.warning(
            "custom nodes: %s requires %s (not installed; comfyd installs nothing)",
            report.name,
            ", ".join(report.missing_requirements),
        )
    if not report.loaded:
        log.warning("custom nodes: %s (%s) NOT loaded: %s", report.name, report.path, report.error)
        return
    log.info(
        "custom nodes: loaded %s %s from %s: %d node(s), %d unavailable, %d skipped (%.2f s)",
        report.kind,
        report.name,
        report.path,
        len(report.nodes),
        len(report.unavailable),
        len(report.skipped),
        report.import_seconds,
    )
    for name, reason in {**report.unavailable, **report.skipped}.items():
        log.info("custom nodes: %s/%s unavailable: %s", report.name, name, reason)
