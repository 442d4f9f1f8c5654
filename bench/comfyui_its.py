"""ComfyUI's sampler speed on a device: the workflow of bench/gpu_throughput.py, rendered by ComfyUI.

    python bench/comfyui_its.py --comfyui DIR --checkpoint FILE [--device cuda|cpu]
                                [--size 512] [--steps 20] [--batch 1] [--repeats 3]

ComfyUI (a source checkout, e.g. the one scripts/comfyui_tarball.sh packs) is driven as a library
in this process, as bench/comfyui_render.py drives it, but on the device asked for: ComfyUI's
default graph with gpu_throughput's prompt, negative prompt, cfg 8, euler + normal, the size,
steps and batch given. After one untimed run, each run gets a new seed (ComfyUI's cache keeps the
model and the text encodings, as comfyd's side keeps its models). Sampler it/s = (steps - 1) /
time between the first and the last step of ComfyUI's own progress hook, after a device
synchronize at each (what gpu_throughput measures for comfyd).

A lent GPU host has none of ComfyUI's server-side packages (aiohttp, av, sqlalchemy, the
frontend, ...) and a render never calls them: any of `STAND_INS` that cannot be imported is
replaced by an empty module (as comfyui_render.py does for torchvision), and the script says so.

Last lines: `RESULT comfyui_its=<median>`, `RESULT comfyui_e2e_s=<median seconds of a run>`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import json
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Imported by ComfyUI's server, API and video modules; a text-to-image render runs none of them.
STAND_INS = ("aiohttp", "yarl", "av", "sqlalchemy", "alembic", "spandrel", "comfyui_frontend_package",
             "comfyui_workflow_templates", "comfyui_embedded_docs", "sentencepiece", "kornia", "torchvision",
             "torchaudio", "scipy")


class _Anything:
    """Whatever a module-level use of a stood-in package builds (classes, decorators, constants)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # As a decorator (`@web.middleware`), hand the function back unchanged.
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return _Anything()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything()

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)  # `class X(web.View)` at module level


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves empty packages for `roots` and everything under them."""

    def __init__(self, roots: set[str]) -> None:
        self.roots = roots

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return _Anything()

        module.__getattr__ = attribute  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install_stand_ins() -> list[str]:
    """Empty modules for the STAND_INS that cannot be imported here; returns their names."""
    missing = []
    for name in STAND_INS:
        try:
            importlib.import_module(name)
        except Exception:  # a wheel built for another torch raises RuntimeError, not ImportError
            missing.append(name)
            for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
                del sys.modules[loaded]
    if missing:
        sys.meta_path.insert(0, _StandInFinder(set(missing)))
        print(f"note: empty stand-ins for {', '.join(missing)} (not importable here; a render does not use them)")
    return missing


def workflow(ckpt_name: str, size: int, steps: int, seed: int, batch: int) -> dict[str, Any]:
    """gpu_throughput's job (comfyd_workflow) in ComfyUI's default graph, saving its image."""
    sys.path.insert(0, str(BENCH))
    from gpu_throughput import CFG, NEGATIVE, PROMPT

    graph = json.loads((REPO / "comfyd" / "workflows" / "default_api.json").read_text())
    graph["4"]["inputs"]["ckpt_name"] = ckpt_name
    graph["6"]["inputs"]["text"] = PROMPT
    graph["7"]["inputs"]["text"] = NEGATIVE
    graph["5"]["inputs"].update(width=size, height=size, batch_size=batch)
    graph["3"]["inputs"].update(seed=seed, steps=steps, cfg=CFG, sampler_name="euler", scheduler="normal", denoise=1.0)
    return graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI source tree")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint file ComfyUI recognises")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (it/s is measured between steps)")
    install_stand_ins()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device (pass --device cpu)", file=sys.stderr)
        return 2
    from comfyui_render import load_comfyui, render

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="comfyui-its-") as tmp:
        out = Path(tmp)
        comfy = load_comfyui(args.comfyui.resolve(), args.checkpoint.resolve().parent.parent, None, out,
                             cpu=args.device == "cpu")
        utils = importlib.import_module("comfy.utils")
        stamps: list[float] = []

        def on_step(value: int, total: int, preview: Any, node_id: Any = None) -> None:
            sync()
            stamps.append(time.perf_counter())

        utils.set_progress_bar_global_hook(on_step)
        its: list[float] = []
        seconds: list[float] = []
        for i in range(args.repeats + 1):
            stamps.clear()
            started = time.perf_counter()
            render(comfy, workflow(args.checkpoint.name, args.size, args.steps, i, args.batch), out)
            sync()
            if i == 0:
                continue  # warm-up: loading, first calls
            seconds.append(time.perf_counter() - started)
            if len(stamps) != args.steps or stamps[-1] <= stamps[0]:
                raise SystemExit(f"ComfyUI reported {len(stamps)} steps for {args.steps}")
            its.append((args.steps - 1) / (stamps[-1] - stamps[0]))
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(f"ComfyUI {comfy['version']} on {name}: {args.size}x{args.size} x{args.batch}, {args.steps} steps euler; "
          f"it/s per run: {' '.join(f'{v:.2f}' for v in its)}")
    print(f"RESULT comfyui_its={statistics.median(its):.4f}")
    print(f"RESULT comfyui_e2e_s={statistics.median(seconds):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
