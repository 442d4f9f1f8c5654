"""Dump the widget layouts of ComfyUI's built-in nodes for comfyd's UI-format converter.

    /work/cvenv/bin/python bench/comfyui_widget_layouts.py --comfyui PATH \
        --out comfyd/workflow_formats/data/comfyui_widget_layouts.json

ComfyUI is imported as a library (see comfyui_render.py); for every node class it registers
(base nodes and comfy_extras, no custom nodes) the script records, from the class's own
INPUT_TYPES declaration, which inputs the ComfyUI frontend shows as widgets, in order, and the
model folder a combo of file names reads from. Only these facts are stored, no ComfyUI code.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import json
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _load_render_helpers() -> Any:
    spec = importlib.util.spec_from_file_location("comfyui_render", Path(__file__).with_name("comfyui_render.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _folder_of(choices: list[Any], sentinel: str) -> str | None:
    """The model folder whose file list this combo shows (each folder holds one marker file)."""
    for choice in choices:
        if isinstance(choice, str) and choice.startswith(sentinel) and choice.endswith(".safetensors"):
            return choice[len(sentinel) : -len(".safetensors")]
    return None


def layout(cls: Any, sentinel: str) -> dict[str, Any]:
    declared = cls.INPUT_TYPES()
    widgets: list[list[Any]] = []
    links: list[list[str]] = []
    folders: dict[str, str] = {}
    for section in ("required", "optional"):
        for name, spec in (declared.get(section) or {}).items():
            kind = spec[0] if isinstance(spec, tuple | list) and spec else spec
            opts = spec[1] if isinstance(spec, tuple | list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            # Newer (v3) nodes declare a choice as ["COMBO", {"options": [...]}].
            choices = kind if isinstance(kind, list | tuple) else opts.get("options") if kind == "COMBO" else None
            if isinstance(choices, list | tuple):
                kind_name = "COMBO"
                folder = _folder_of(list(choices), sentinel)
                if folder:
                    folders[name] = folder
            else:
                kind_name = str(kind)
            if kind_name in WIDGET_TYPES and not opts.get("forceInput"):
                flags = []
                if opts.get("control_after_generate") or (kind_name == "INT" and name in ("seed", "noise_seed")):
                    flags.append("control")
                for upload in ("image_upload", "video_upload", "audio_upload", "animated_image_upload"):
                    if opts.get(upload):
                        flags.append("upload")
                widgets.append([name, kind_name, *flags])
            else:
                links.append([name, kind_name])
    entry: dict[str, Any] = {"widgets": widgets, "links": links, "outputs": [str(t) for t in cls.RETURN_TYPES]}
    if folders:
        entry["model_folders"] = folders
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    render = _load_render_helpers()
    sys.modules.pop("utils", None)
    with tempfile.TemporaryDirectory() as tmp:
        comfy = render.load_comfyui(args.comfyui.resolve(), Path(tmp), None, Path(tmp))
        folder_paths = comfy["folder_paths"]
        # Each model folder gets one marker file so a combo's file list tells which folder it reads.
        sentinel = "zz_comfyd_marker_"
        for folder in list(folder_paths.folder_names_and_paths):
            directory = Path(tmp) / "markers" / folder
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{sentinel}{folder}.safetensors").write_bytes(b"")
            folder_paths.add_model_folder_path(folder, str(directory))
        nodes = comfy["nodes"]
        if "torchvision.transforms.functional" not in sys.modules:
            stand_in = types.ModuleType("torchvision.transforms.functional")
            stand_in.__getattr__ = render._module_attribute  # type: ignore[method-assign]
            sys.modules["torchvision.transforms.functional"] = stand_in
        # Some module loaded earlier may be called `utils`; ComfyUI's own utils/ package must win.
        loaded = sys.modules.get("utils")
        if loaded is not None and not hasattr(loaded, "__path__"):
            print(f"note: replacing module utils from {getattr(loaded, '__file__', '?')}", file=sys.stderr)
            del sys.modules["utils"]
        # A few comfy_extras modules import ComfyUI's web server (for PromptServer only), which
        # needs packages that declaring nodes does not; an empty stand-in lets them load.
        if "server" not in sys.modules:
            server = types.ModuleType("server")
            server.PromptServer = type("PromptServer", (), {"instance": None})  # type: ignore[attr-defined]
            sys.modules["server"] = server
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        out: dict[str, Any] = {}
        for name in sorted(nodes.NODE_CLASS_MAPPINGS):
            try:
                out[name] = layout(nodes.NODE_CLASS_MAPPINGS[name], sentinel)
            except Exception as exc:  # a node whose declaration needs a missing dependency
                print(f"skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    # Marker names never reach the table: a file name ends in .safetensors, the marker prefix is ours.
    body = {"comfyui_version": comfy["version"], "nodes": out}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"wrote {len(out)} node layouts to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
