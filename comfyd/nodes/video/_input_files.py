"""Input-folder files of a kind (video, audio) for the loaders' choice lists and validation."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from comfyd.engine.context import NodeEnvironment
from comfyd.nodes.image.save_load import resolve_image_path
from comfyd.safepath import UnsafePathError

# Extensions whose MIME type not every system's table knows (the table decides what ComfyUI lists).
_KNOWN_KINDS = {
    "mp4": "video", "webm": "video", "mkv": "video", "mov": "video", "avi": "video", "m4v": "video",
    "gif": "image", "flac": "audio", "mp3": "audio", "opus": "audio", "ogg": "audio", "wav": "audio",
    "m4a": "audio", "aac": "audio",
}


def content_kind(name: str) -> str | None:
    """"image", "video", "audio", ... for a file name, as ComfyUI's filter_files_content_types
    guesses it (mimetypes, non-strict), with a fixed table for common media extensions."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in _KNOWN_KINDS:
        return _KNOWN_KINDS[ext]
    kind, _encoding = mimetypes.guess_type(name, strict=False)
    return kind.split("/", 1)[0] if kind else None


def list_input_files(env: NodeEnvironment | None, kinds: tuple[str, ...]) -> list[str]:
    """The files of these kinds directly in the input folder, sorted (subfolders not listed)."""
    if env is None or not env.input_dir.is_dir():
        return []
    return sorted(p.name for p in env.input_dir.iterdir() if p.is_file() and content_kind(p.name) in kinds)


def file_checker(label: str) -> Any:
    """A validator accepting any file the name reaches in the input/output/temp folders (with
    ComfyUI's " [output]" annotations), like ComfyUI's exists_annotated_filepath."""

    def check(env: NodeEnvironment | None, name: Any) -> str | None:
        invalid = f"Invalid {label} file: {name}"
        if env is None or not isinstance(name, str):
            return invalid
        try:
            path = resolve_image_path(env, name)
        except UnsafePathError as exc:
            return f"{invalid} ({exc.reason})"
        return None if path.is_file() else invalid

    return check


def resolve_input(env: NodeEnvironment, name: str, label: str) -> Path:
    path = resolve_image_path(env, name)
    if not path.is_file():
        raise FileNotFoundError(f"Invalid {label} file: {name} (no such file in {path.parent})")
    return path
