"""ComfyUI's `folder_paths`, answered from comfyd's settings.

Model folders are looked up under every model root (COMFYD_MODELS_DIR, then
COMFYD_EXTRA_MODEL_DIRS); packs may add folders with `add_model_folder_path`. Names never leave
their folder: a name with `..` or an absolute path is not found.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from comfyd.compat import state

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
# ComfyUI's folder aliases (the newer names of clip/unet).
_ALIASES = {"text_encoders": "clip", "diffusion_models": "unet"}
_EXTRA_SUBDIRS = {"clip": ("clip", "text_encoders"), "unet": ("unet", "diffusion_models")}
# folder name -> ([extra paths added by packs], extensions)
_added: dict[str, tuple[list[str], set[str]]] = {}


def _models_roots() -> list[Path]:
    return state.settings().model_roots()


def _resolved(path: Path) -> str:
    return str(path.absolute())


base_path = os.getcwd()


def __getattr__(name: str) -> object:
    # Module-level values that must follow the settings (read lazily, like properties).
    if name == "models_dir":
        return _resolved(_models_roots()[0])
    if name == "output_directory":
        return get_output_directory()
    if name == "input_directory":
        return get_input_directory()
    if name == "temp_directory":
        return get_temp_directory()
    if name == "user_directory":
        return get_user_directory()
    if name.startswith("__"):
        raise AttributeError(name)
    from comfyd.compat.aliases import missing

    return missing(f"folder_paths.{name}")


def get_output_directory() -> str:
    return _resolved(Path(state.settings().output_dir))


def get_input_directory() -> str:
    return _resolved(Path(state.settings().input_dir))


def get_temp_directory() -> str:
    return _resolved(Path(state.settings().temp_dir))


def get_user_directory() -> str:
    return _resolved(Path(state.settings().output_dir).parent / "user")


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": get_output_directory, "input": get_input_directory, "temp": get_temp_directory}.get(
        type_name, lambda: None
    )()


def map_legacy(folder_name: str) -> str:
    return _ALIASES.get(folder_name, folder_name)


def get_folder_paths(folder_name: str) -> list[str]:
    folder_name = map_legacy(folder_name)
    paths = [
        _resolved(root / sub)
        for root in _models_roots()
        for sub in _EXTRA_SUBDIRS.get(folder_name, (folder_name,))
    ]
    extra = _added.get(folder_name)
    if extra is not None:
        paths.extend(p for p in extra[0] if p not in paths)
    return paths


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    paths, _ = _added.setdefault(map_legacy(folder_name), ([], set(supported_pt_extensions)))
    if full_folder_path not in paths:
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)


def _extensions(folder_name: str) -> set[str]:
    extra = _added.get(map_legacy(folder_name))
    return extra[1] if extra is not None and extra[1] else supported_pt_extensions


def filter_files_extensions(files: list[str], extensions: set[str] | list[str]) -> list[str]:
    exts = {e.lower() for e in extensions}
    return sorted(f for f in files if not exts or os.path.splitext(f)[1].lower() in exts)


def recursive_search(
    directory: str, excluded_dir_names: list[str] | None = None
) -> tuple[list[str], dict[str, float]]:
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or [])
    found: list[str] = []
    dirs: dict[str, float] = {directory: os.path.getmtime(directory)}
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d not in excluded and not d.startswith(".")]
        for sub in subdirs:
            full = os.path.join(dirpath, sub)
            dirs[full] = os.path.getmtime(full)
        for filename in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, filename), directory).replace(os.sep, "/"))
    return found, dirs


def get_filename_list(folder_name: str) -> list[str]:
    names: set[str] = set()
    for directory in get_folder_paths(folder_name):
        files, _ = recursive_search(directory, excluded_dir_names=[".git"])
        names.update(filter_files_extensions(files, _extensions(folder_name)))
    return sorted(names)


def get_full_path(folder_name: str, filename: str) -> str | None:
    if not filename or os.path.isabs(filename) or ".." in Path(filename.replace("\\", "/")).parts:
        return None
    for directory in get_folder_paths(folder_name):
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def annotated_filepath(name: str) -> tuple[str, str | None]:
    for suffix, getter in (
        (" [output]", get_output_directory),
        (" [input]", get_input_directory),
        (" [temp]", get_temp_directory),
    ):
        if name.endswith(suffix):
            return name[: -len(suffix)], getter()
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base_dir = annotated_filepath(name)
    return os.path.join(base_dir or default_dir or get_input_directory(), name)


def exists_annotated_filepath(name: str) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def filter_files_content_types(files: list[str], content_types: list[str]) -> list[str]:
    import mimetypes

    kept = []
    for name in files:
        kind = (mimetypes.guess_type(name)[0] or "").split("/")[0]
        if kind in content_types or ("model" in content_types and name.endswith((".safetensors", ".sft"))):
            kept.append(name)
    return kept


def _expand(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, value)
    return prefix


def get_save_image_path(
    filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0
) -> tuple[str, str, int, str, str]:
    """(folder, file stem, next counter, subfolder, prefix) as ComfyUI computes them; a prefix
    that leads outside `output_dir` is refused."""
    if "%" in filename_prefix:
        filename_prefix = _expand(filename_prefix, image_width, image_height)
    normal = os.path.normpath(filename_prefix)
    subfolder, filename = os.path.dirname(normal), os.path.basename(normal)
    root = os.path.abspath(output_dir)
    folder = os.path.abspath(os.path.join(root, subfolder))
    if os.path.commonpath((root, folder)) != root:
        raise ValueError(f"Saving outside the output folder is not allowed: {filename_prefix!r}")
    counter = 0
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            stem = entry[: len(filename) + 1]
            if os.path.normcase(stem[:-1]) != os.path.normcase(filename) or stem[-1:] != "_":
                continue
            try:
                counter = max(counter, int(entry[len(filename) + 1 :].split("_")[0]))
            except ValueError:
                continue
    return folder, filename, counter + 1, subfolder, filename_prefix


class _FolderTable(dict):  # type: ignore[type-arg]
    """ComfyUI's `folder_names_and_paths` (folder -> ([paths], extensions)), computed from the
    model roots on read; what a pack assigns is kept as that folder's added paths."""

    def __getitem__(self, key: str) -> tuple[list[str], set[str]]:
        return get_folder_paths(key), _extensions(key)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return self[key]

    def __setitem__(self, key: str, value: tuple[list[str], set[str]]) -> None:
        paths, exts = value
        _added[map_legacy(key)] = (list(paths), set(exts))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)


folder_names_and_paths = _FolderTable()
