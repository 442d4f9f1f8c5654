"""Render API-format workflows with a local ComfyUI checkout, to make fidelity references.

    python bench/comfyui_render.py --comfyui PATH --models-dir D --out DIR [--input-dir D]
                                   WORKFLOW.json [WORKFLOW.json ...]
    python bench/comfyui_render.py --comfyui PATH --input-types OUT.json --only A,B,...
    (either form: --custom-node PACK_DIR loads a custom node pack, e.g. VideoHelperSuite)

ComfyUI is driven as a library, in this process, on CPU: each workflow is checked with ComfyUI's
own `validate_prompt` and run by its `PromptExecutor`, exactly as its server would run it. The
first file each workflow saves is copied to `DIR/<workflow stem>.png` (`.webp` for SaveAnimatedWEBP,
the video's or audio's own extension for SaveVideo, SaveWEBM and SaveAudio*), and `DIR/renders.json`
records ComfyUI's version, the SHA-256 of every model file under the models folder, and per
workflow the SHA-256 of its JSON (as parsed and re-serialised) and of the PNG; a test can then
tell a stale reference from a real difference.

The second form writes what ComfyUI's /object_info says of the named nodes' inputs and outputs
(its `INPUT_TYPES()`, `RETURN_TYPES`, `RETURN_NAMES`, `CATEGORY`), for tests/fidelity to hold
comfyd's schemas against.

Nothing of ComfyUI is imported by comfyd or its tests; this script only makes the reference PNGs
that `tests/fidelity` and `bench/parity.py` compare against. ComfyUI needs its own requirements
(einops, aiohttp, alembic, sqlalchemy, av, ... on PYTHONPATH). torchvision and torchaudio are
imported by ComfyUI model families this script never loads: if they cannot be imported (a
torchvision wheel built for another torch fails at import), empty stand-ins are put in their
place, and the script says so.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib
import importlib.machinery
import json
import shutil
import sys
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any


class _Placeholder:
    """Anything a module-level `torchvision.transforms.X(...)` reference might build."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder()

    def __getattr__(self, name: str) -> _Placeholder:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


def _module_attribute(name: str) -> type[_Placeholder]:
    if name.startswith("__"):  # inspect and importlib probe __file__, __path__, ...
        raise AttributeError(name)
    return _Placeholder


def _stand_in_for(name: str) -> None:
    try:
        importlib.import_module(name)
        return
    except Exception as exc:  # a wheel built for another torch raises RuntimeError, not ImportError
        print(f"note: {name} cannot be imported ({type(exc).__name__}); using an empty stand-in")
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]
    # spandrel (the upscale models) imports torchvision.transforms.functional at module level.
    parts = (name, f"{name}.transforms", f"{name}.transforms.functional")
    for full in parts:
        module = types.ModuleType(full)
        module.__spec__ = importlib.machinery.ModuleSpec(full, None, is_package=True)
        module.__path__ = []  # a package, so `import a.b.c` finds the children below
        module.__getattr__ = _module_attribute  # type: ignore[method-assign]
        sys.modules[full] = module
    for parent, child in zip(parts[:-1], parts[1:], strict=True):
        setattr(sys.modules[parent], child.rsplit(".", 1)[-1], sys.modules[child])


class _SilentServer:
    """What PromptExecutor needs of ComfyUI's server: a client id and a sink for its messages."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        pass

    def send_progress_text(self, text: str, node_id: Any, sid: Any = None) -> None:
        pass


def load_comfyui(root: Path, models_dir: Path, input_dir: Path | None, output_dir: Path,
                 custom_nodes: list[Path] | None = None, cpu: bool = True) -> dict[str, Any]:
    """Import ComfyUI from `root`, on CPU (`cpu=False`: on its default device, for
    bench/comfyui_its.py), with its folders pointed at ours; returns its modules.
    `custom_nodes`: pack folders to load as ComfyUI loads custom nodes (VideoHelperSuite, say)."""
    sys.path.insert(0, str(root))
    sys.argv = [sys.argv[0], *(["--cpu"] if cpu else []), "--disable-all-custom-nodes"]
    for name in ("torchvision", "torchaudio"):
        _stand_in_for(name)
    options = importlib.import_module("comfy.options")
    options.enable_args_parsing()
    folder_paths = importlib.import_module("folder_paths")
    # nodes.py puts ComfyUI's comfy/ folder on sys.path, where comfy/utils.py would then shadow
    # the top-level utils package that server.py (imported by some comfy_extras) needs; ComfyUI's
    # main.py imports that package first, and so does this.
    importlib.import_module("utils.install_util")
    for kind in ("checkpoints", "loras", "vae", "embeddings", "upscale_models", "hypernetworks", "controlnet",
                 "clip_vision", "style_models"):
        if (models_dir / kind).is_dir():
            folder_paths.add_model_folder_path(kind, str(models_dir / kind), is_default=True)
    folder_paths.set_output_directory(str(output_dir))
    if input_dir is not None:
        folder_paths.set_input_directory(str(input_dir))
    nodes = importlib.import_module("nodes")
    # The comfy_extras nodes (masks, post-processing, primitives, ...) register only through this
    # call, as ComfyUI's main.py makes it; no custom nodes, no API nodes.
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    # Nodes such as GetImageSize report to the running server; there is none, so a silent one.
    silent = _SilentServer()
    importlib.import_module("server").PromptServer.instance = silent
    if custom_nodes:
        # Packs declare HTTP routes on the server when imported; these are never served.
        silent.routes = importlib.import_module("aiohttp.web").RouteTableDef()  # type: ignore[attr-defined]
        silent.prompt_queue = types.SimpleNamespace(currently_running={})  # type: ignore[attr-defined]
        silent.number = 0  # type: ignore[attr-defined]
    for pack in custom_nodes or []:
        if not asyncio.run(nodes.load_custom_node(str(pack))):
            raise RuntimeError(f"ComfyUI could not load the custom node pack {pack}")
    execution = importlib.import_module("execution")
    version = importlib.import_module("comfyui_version").__version__
    return {"nodes": nodes, "execution": execution, "folder_paths": folder_paths, "version": version}


def first_output_image(history: dict[str, Any], output_dir: Path) -> Path:
    """The first saved image of a run, in node-id order (as bench/parity.py picks comfyd's)."""
    outputs = history.get("outputs", {})
    for node_id in sorted(outputs, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)):
        # Pictures and videos ("images"), audio, VideoHelperSuite's videos ("gifs").
        for image in [f for key in ("images", "audio", "gifs") for f in outputs[node_id].get(key, [])]:
            if image.get("type", "output") == "output":
                return output_dir / image.get("subfolder", "") / image["filename"]
    raise RuntimeError("the workflow saved no image")


def render(comfy: dict[str, Any], workflow: dict[str, Any], output_dir: Path) -> Path:
    execution = comfy["execution"]
    prompt_id = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(prompt_id, workflow, None))
    if not valid[0]:
        raise RuntimeError(f"ComfyUI rejected the workflow: {json.dumps(valid[1])} {json.dumps(valid[3])}")
    executor = execution.PromptExecutor(_SilentServer(), cache_type=execution.CacheType.CLASSIC)
    executor.execute(workflow, prompt_id, {}, valid[2])
    if not executor.success:
        errors = [m for m in executor.status_messages if m[0] == "execution_error"]
        raise RuntimeError(f"ComfyUI failed: {json.dumps(errors, default=str)[:2000]}")
    return first_output_image(executor.history_result, output_dir)


def input_types(comfy: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """ComfyUI's input/output declarations of `names` (base and comfy_extras nodes)."""
    classes = dict(comfy["nodes"].NODE_CLASS_MAPPINGS)
    out: dict[str, Any] = {}
    for name in names:
        cls = classes.get(name)
        if cls is None:
            continue
        declared = cls.INPUT_TYPES()
        out[name] = {
            "input": {k: v for k, v in declared.items() if k in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "category": getattr(cls, "CATEGORY", None),
        }
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def workflow_digest(workflow: dict[str, Any]) -> str:
    """A digest of the workflow's content, independent of its file's formatting."""
    return hashlib.sha256(json.dumps(workflow, sort_keys=True).encode()).hexdigest()


def model_digests(models_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(models_dir)): sha256_file(p)
        for p in sorted(models_dir.rglob("*"))
        if p.is_file() and p.suffix in (".safetensors", ".pt", ".ckpt", ".json")
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflows", nargs="*", type=Path)
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout")
    parser.add_argument("--models-dir", type=Path, help="ComfyUI-layout models folder")
    parser.add_argument("--input-dir", type=Path, default=None, help="folder LoadImage reads from")
    parser.add_argument("--out", type=Path, help="where the reference PNGs go")
    parser.add_argument("--input-types", type=Path, help="write node declarations here instead")
    parser.add_argument("--only", default="", help="comma-separated node names for --input-types")
    parser.add_argument("--no-model-digests", action="store_true", help="skip hashing the model files")
    parser.add_argument("--custom-node", type=Path, action="append", default=[],
                        help="a custom node pack folder to load (repeatable)")
    args = parser.parse_args(argv)

    if args.input_types is not None:
        with tempfile.TemporaryDirectory() as tmp:
            comfy = load_comfyui(args.comfyui.resolve(), Path(tmp), None, Path(tmp), args.custom_node)
            declared = input_types(comfy, [n for n in args.only.split(",") if n])
        declared = {"comfyui_version": comfy["version"], "nodes": declared}
        args.input_types.write_text(json.dumps(declared, indent=1, default=str) + "\n")
        return 0
    if not args.workflows or args.models_dir is None or args.out is None:
        parser.error("rendering needs --models-dir, --out and at least one workflow")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.out / ".comfyui-output"
    comfy = load_comfyui(args.comfyui.resolve(), args.models_dir.resolve(),
                         args.input_dir.resolve() if args.input_dir else None, scratch.resolve(), args.custom_node)
    manifest_path = args.out / "renders.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest["comfyui_version"] = comfy["version"]
    if not args.no_model_digests:
        manifest["models"] = model_digests(args.models_dir)
    renders = manifest.setdefault("renders", {})
    failed = []
    for path in args.workflows:
        workflow = json.loads(path.read_text())
        workflow = workflow.get("prompt", workflow)
        digest = workflow_digest(workflow)  # before ComfyUI runs it: its executor edits inputs in place
        try:
            image = render(comfy, workflow, scratch)
        except RuntimeError as exc:
            print(f"{path.name}: FAILED: {exc}", file=sys.stderr)
            failed.append(path.name)
            continue
        # An animated WEBP keeps its extension; everything else is a PNG.
        target = args.out / f"{path.stem}{image.suffix}"
        shutil.copyfile(image, target)
        renders[path.stem] = {"workflow": digest, "png": sha256_file(target)}
        print(f"{path.name}: {target}")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    if failed:
        print(f"{len(failed)} of {len(args.workflows)} workflows failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
