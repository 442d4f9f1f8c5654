"""Upscale models (ESRGAN, RealESRGAN, SwinIR, ... whatever spandrel reads), loaded and run as
ComfyUI's UpscaleModelLoader / ImageUpscaleWithModel do.

Loading: the whole state dict, a SwinIR saved from DataParallel loses its "module." prefix, and
spandrel picks the architecture from the keys and shapes. Only single-image models are accepted.
Running: tiles of 512 input pixels overlapping by 32, blended with ComfyUI's feathered mask
(vae_tiled.tiled_apply); a tile that runs the device out of memory is halved and the whole
picture redone, down to 128.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from comfyd.models.device_gate import DeviceGate
from comfyd.models.handles import held
from comfyd.models.tensorfile import ModelFileError, TensorFile
from comfyd.models.vae_tiled import tiled_apply

TILE = 512
OVERLAP = 32
MIN_TILE = 128
# A SwinIR trained with DataParallel names every key "module.…"; ComfyUI strips it when it sees this.
_DATAPARALLEL_SWINIR_KEY = "module.layers.0.residual_group.blocks.0.norm1.weight"


class UpscaleModelError(ModelFileError):
    """A file in upscale_models/ that is not a single-image upscale model spandrel knows."""


@dataclass
class UpscaleModelHandle:
    """A loaded upscale model: spandrel's descriptor, and where it computes."""

    key: str
    name: str
    descriptor: Any  # spandrel.ImageModelDescriptor
    device: torch.device
    gate: DeviceGate | None = field(default=None, repr=False)

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def module(self) -> torch.nn.Module:
        return self.descriptor.model


def _unavailable(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("this upscale architecture needs torchvision, which cannot be imported here")


def import_spandrel() -> Any:
    """spandrel, importable even where torchvision is absent or built for another torch.

    Two of spandrel's architectures (LaMa, RestoreFormer) import torchvision at module level. If
    it does not import, they get a stand-in for the import only (calling them raises); the
    stand-in is taken out of sys.modules again so nothing else sees a fake torchvision.
    """
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:  # a torchvision built for another torch raises RuntimeError at import
        pass
    else:
        return importlib.import_module("spandrel")
    saved = {m: sys.modules.pop(m) for m in list(sys.modules) if m == "torchvision" or m.startswith("torchvision.")}
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    for name in names:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
    functional = sys.modules["torchvision.transforms.functional"]
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")  # type: ignore[attr-defined]
    functional.rotate = _unavailable  # type: ignore[attr-defined]
    functional.normalize = _unavailable  # type: ignore[attr-defined]
    sys.modules["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def read_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        state = {key: tf.get(key) for key in tf.keys()}
    if _DATAPARALLEL_SWINIR_KEY in state:
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    return state


def load_upscale_model(path: Path, key: str, name: str, device: torch.device, allow_pickle: bool,
                       gate: DeviceGate | None = None) -> UpscaleModelHandle:
    try:
        spandrel = import_spandrel()
    except ImportError:
        raise UpscaleModelError("upscale models need the spandrel package: pip install 'comfyd[upscale]' "
                                "(after the torchvision build that matches this torch)") from None
    state = read_state_dict(path, allow_pickle)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state).eval()
    except spandrel.UnsupportedModelError:
        raise UpscaleModelError(f"{name}: not an upscale model architecture spandrel knows") from None
    except (KeyError, ValueError, RuntimeError) as exc:  # a known layout with wrong shapes or keys
        raise UpscaleModelError(f"{name}: cannot build the upscale model: {exc}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscaleModelError(f"{name}: an upscale model must be a single-image model "
                                f"(this is a {type(descriptor).__name__})")
    return UpscaleModelHandle(key=key, name=name, descriptor=descriptor, device=device, gate=gate)


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


ProgressFn = Callable[[int, int], None]


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles tiled_apply runs on one picture (one when it fits a tile)."""
    if height <= tile and width <= tile:
        return 1
    rows = len(range(0, height - overlap, tile - overlap)) if height > tile else 1
    cols = len(range(0, width - overlap, tile - overlap)) if width > tile else 1
    return rows * cols


def _counting(function: Callable[[torch.Tensor], torch.Tensor], total: int,
              progress: ProgressFn) -> Callable[[torch.Tensor], torch.Tensor]:
    done = 0

    def step(part: torch.Tensor) -> torch.Tensor:
        nonlocal done
        out = function(part)
        done += 1
        progress(done, total)
        return out

    return step


def tiled_upscale(pixels: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor], scale: float,
                  tile: int = TILE, overlap: int = OVERLAP, progress: ProgressFn | None = None) -> torch.Tensor:
    """NCHW `pixels` through `function` in tiles, halving the tile while the device runs out of
    memory (ComfyUI's retry; below MIN_TILE the error is raised). `progress(done, total)` is
    called after every tile (and may raise to stop)."""
    while True:
        total = pixels.shape[0] * tile_count(pixels.shape[2], pixels.shape[3], tile, overlap)
        step = function if progress is None else _counting(function, total, progress)
        try:
            return tiled_apply(pixels, step, (tile, tile), overlap, scale, out_channels=3)
        except Exception as exc:
            if not _is_out_of_memory(exc):
                raise
            tile //= 2
            if tile < MIN_TILE:
                raise


def upscale_image(model: UpscaleModelHandle, image: torch.Tensor, progress: ProgressFn | None = None) -> torch.Tensor:
    """An NHWC picture in 0..1 upscaled by the model; the result is clamped to 0..1 on the CPU."""
    with held(model.gate), torch.inference_mode():
        model.descriptor.to(model.device)
        try:
            pixels = image.movedim(-1, -3).to(model.device)
            out = tiled_upscale(pixels, model.descriptor, model.scale, progress=progress)
        finally:
            model.descriptor.to("cpu")
    return torch.clamp(out.movedim(-3, -1), min=0.0, max=1.0)
