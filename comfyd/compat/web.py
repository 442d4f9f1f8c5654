"""Packs' WEB_DIRECTORY files: listed and served as static files, as ComfyUI serves them under
`/extensions/<pack>/`. comfyd never runs them; a browser running ComfyUI's front end does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfyd.compat.loader import web_directories
from comfyd.safepath import safe_join


def extension_scripts(settings: Any) -> list[str]:
    """URLs of every `.js` file in the web folders of the packs `settings` load, sorted."""
    urls: list[str] = []
    for pack, folder in sorted(web_directories(settings).items()):
        for path in sorted(folder.rglob("*.js")):
            if path.is_file():
                urls.append(f"/extensions/{pack}/{path.relative_to(folder).as_posix()}")
    return urls


def extension_file(settings: Any, pack: str, path: str) -> Path | None:
    """The file `path` of pack `pack`'s web folder, or None; UnsafePathError for a path that
    would leave the folder."""
    folder = web_directories(settings).get(pack)
    if folder is None:
        return None
    file = safe_join(folder, path)
    return file if file.is_file() else None
