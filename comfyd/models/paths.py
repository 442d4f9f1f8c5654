"""Model files in ComfyUI's folder layout, under one or more roots, named safely.

A root looks like ComfyUI's `models/` folder: `checkpoints/`, `loras/`, `vae/`, `embeddings/`,
`upscale_models/`, `hypernetworks/`, `controlnet/` (or `t2i_adapter/`), `clip/`, `unet/`, `clip_vision/`,
`style_models/`. Names are relative to a folder, '/'-separated, and never
leave it: `..`, absolute paths and symlinks that lead outside the folder are refused. A diffusers
checkpoint folder (one holding `model_index.json`) inside `checkpoints/` is listed as one name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from comfyd.safepath import UnsafePathError, safe_join

# ComfyUI's folder names; `clip` and `unet` also answer to their newer names.
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "loras": ("loras",),
    "vae": ("vae",),
    "embeddings": ("embeddings",),
    "upscale_models": ("upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "clip": ("clip", "text_encoders"),
    "unet": ("unet", "diffusion_models"),
    # The ComfyUI-GGUF pack's names for the same directories, listing only its .gguf files.
    "unet_gguf": ("unet", "diffusion_models"),
    "clip_gguf": ("clip", "text_encoders"),
}
# What ComfyUI lists (folder_paths.supported_pt_extensions). Only safetensors load by default;
# the pickle formats are listed so the user sees them, and refused at load time unless allowed.
SAFE_EXTENSIONS = frozenset({".safetensors", ".sft"})
PICKLE_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".pkl"})
MODEL_EXTENSIONS = SAFE_EXTENSIONS | PICKLE_EXTENSIONS
GGUF_EXTENSIONS = frozenset({".gguf"})
FOLDER_EXTENSIONS = {"unet_gguf": GGUF_EXTENSIONS, "clip_gguf": GGUF_EXTENSIONS}
DIFFUSERS_MARKER = "model_index.json"
RECENT_NS = 2_000_000_000


class ModelPathError(ValueError):
    """A model name that cannot be used: unknown folder, unsafe name, or no such file."""


class UnknownModelFolder(ModelPathError):
    def __init__(self, folder: str) -> None:
        super().__init__(f"unknown model folder {folder!r}; known folders: {', '.join(MODEL_FOLDERS)}")
        self.folder = folder


class UnsafeModelName(ModelPathError):
    def __init__(self, folder: str, name: str, reason: str) -> None:
        super().__init__(f"refusing model name {name!r} in {folder}/: {reason}")
        self.folder = folder
        self.name = name


class ModelNotFound(ModelPathError, FileNotFoundError):
    def __init__(self, folder: str, name: str, searched: list[Path]) -> None:
        where = ", ".join(str(p) for p in searched) or "(no model roots configured)"
        super().__init__(f"model {name!r} not found in {folder}/ (searched: {where})")
        self.folder = folder
        self.name = name


def is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / DIFFUSERS_MARKER).is_file()


@dataclass(frozen=True)
class ModelPaths:
    """The model roots, in search order (the first root holding a name wins)."""

    roots: tuple[Path, ...]
    # (base dir, lists diffusers folders) -> (names, {directory watched: its mtime_ns}). Every
    # workflow validation lists the model folders: a walk that resolves each file costs
    # milliseconds, a stat per directory microseconds. A directory's mtime changes whenever an
    # entry in it is added, removed or renamed, so a listing is reused only while none did.
    _listings: dict[tuple[str, bool, frozenset[str]], tuple[list[str], dict[str, int]]] = field(
        default_factory=dict, compare=False, hash=False, repr=False)

    def folder_dirs(self, folder: str) -> list[Path]:
        """Every existing directory for `folder` across the roots, in search order."""
        names = MODEL_FOLDERS.get(folder)
        if names is None:
            raise UnknownModelFolder(folder)
        found: list[Path] = []
        for root in self.roots:
            for name in names:
                path = Path(root) / name
                if path.is_dir():
                    found.append(path)
        return found

    def list_files(self, folder: str) -> list[str]:
        """Names of the model files in `folder` across all roots, sorted, '/'-separated.

        Recurses into subfolders; a diffusers folder is one entry (its directory name) and is
        not descended into; entries whose real location is outside their folder are skipped.
        """
        names: set[str] = set()
        extensions = FOLDER_EXTENSIONS.get(folder, MODEL_EXTENSIONS)
        for base in self.folder_dirs(folder):
            names.update(self._listing(base, folder == "checkpoints", extensions))
        return sorted(names)

    def _listing(self, base: Path, list_diffusers: bool, extensions: frozenset[str] = MODEL_EXTENSIONS) -> list[str]:
        key = (str(base), list_diffusers, extensions)
        cached = self._listings.get(key)
        if cached is not None and _unchanged(cached[1]):
            return cached[0]
        watched: dict[str, int] = {}
        names = _walk_models(base, list_diffusers, watched, extensions)
        self._listings[key] = (names, watched)
        return names

    def resolve(self, folder: str, name: str) -> Path:
        """The path of `name` in `folder`, from the first root that has it.

        Raises UnsafeModelName for '..', absolute paths, odd characters and symlinks leading out
        of the folder; ModelNotFound when no root has it.
        """
        if not isinstance(name, str) or not name.strip():
            raise UnsafeModelName(folder, str(name), "the name is empty")
        bases = self.folder_dirs(folder)
        for base in bases:
            try:
                candidate = safe_join(base, name)
            except UnsafePathError as exc:
                raise UnsafeModelName(folder, name, exc.reason) from None
            if candidate.exists():
                return candidate
        searched = bases or [Path(r) / MODEL_FOLDERS[folder][0] for r in self.roots]
        raise ModelNotFound(folder, name, searched)


def _unchanged(watched: dict[str, int]) -> bool:
    try:
        return all(os.stat(path).st_mtime_ns == mtime for path, mtime in watched.items())
    except OSError:
        return False


def _watch(watched: dict[str, int] | None, path: Path) -> None:
    if watched is None:
        return
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = -1  # gone meanwhile: never matches, so the next call walks again
    # Changed within the last seconds: an entry may have come after the walk read the directory
    # (or the file system's clock is coarse), so this directory is not trusted yet.
    watched[str(path)] = -1 if mtime > time.time_ns() - RECENT_NS else mtime


def _walk_models(
    base: Path, list_diffusers: bool, watched: dict[str, int] | None = None,
    extensions: frozenset[str] = MODEL_EXTENSIONS,
) -> list[str]:
    """The names under `base`; `watched` collects each directory the listing depends on."""
    real_base = base.resolve()
    found: list[str] = []
    seen_dirs: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        here = Path(dirpath)
        real_here = here.resolve()
        # A symlinked subfolder may lead outside the folder or back into itself.
        if not real_here.is_relative_to(real_base) or real_here in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real_here)
        _watch(watched, here)
        rel_dir = here.relative_to(base)
        if list_diffusers:
            keep = []
            for d in sorted(dirnames):
                if is_diffusers_folder(here / d):
                    _watch(watched, here / d)  # its model_index.json may go
                    if (here / d).resolve().is_relative_to(real_base):
                        found.append((rel_dir / d).as_posix())
                else:
                    keep.append(d)
            dirnames[:] = keep
        for filename in filenames:
            if Path(filename).suffix.lower() not in extensions:
                continue
            path = here / filename
            if not path.resolve().is_relative_to(real_base):
                continue
            found.append((rel_dir / filename).as_posix())
    return found
