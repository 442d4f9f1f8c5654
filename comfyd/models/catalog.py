"""What one host holds in its models folders: names, sizes, families and SHA-256 hashes.

Workers publish this to the shared model catalog (comfyd.backends.aws.model_catalog) so that an
API host with an empty models folder validates and lists against the models the workers have.
Hashing a multi-GB checkpoint takes seconds, so hashes are cached in a small JSON file keyed by
name, size and modification time (a writable state folder: the models folder may be read-only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from comfyd.models.paths import MODEL_FOLDERS, ModelPaths, is_diffusers_folder

log = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelEntry:
    folder: str  # ComfyUI folder name: checkpoints, loras, vae, ...
    name: str  # '/'-separated name inside the folder, as validation sees it
    size: int
    sha256: str | None  # None for a diffusers folder (many files)
    family: str | None = None  # sd1, sd2, sdxl for checkpoints comfyd recognises

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _family(path: Path) -> str | None:
    """The checkpoint's family from its tensor names (header only), or None."""
    if path.suffix.lower() not in (".safetensors", ".sft"):
        return None
    try:
        from comfyd.models.detect import detect_checkpoint
        from comfyd.models.tensorfile import TensorFile

        with TensorFile(path) as tf:
            return detect_checkpoint(tf).family
    except Exception:  # not a checkpoint layout comfyd knows: listed without a family
        return None


class HashCache:
    """{"name|size|mtime_ns": sha256} in a JSON file; a missing or unwritable file only costs time."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.values: dict[str, str] = {}
        if path is not None and path.is_file():
            try:
                self.values = dict(json.loads(path.read_text()))
            except (OSError, ValueError):
                self.values = {}

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        found = self.values.get(key)
        if found is None:
            found = self.values[key] = sha256_file(path)
        return found

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.values, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("model hash cache %s not written: %s", self.path, exc)


def scan_models(paths: ModelPaths, hash_cache: Path | None = None) -> list[ModelEntry]:
    """Every model file this host holds, per folder, with size, hash and (checkpoints) family."""
    cache = HashCache(hash_cache)
    entries: list[ModelEntry] = []
    for folder in MODEL_FOLDERS:
        for name in paths.list_files(folder):
            path = paths.resolve(folder, name)
            if is_diffusers_folder(path):
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                entries.append(ModelEntry(folder, name, size, None, None))
                continue
            family = _family(path) if folder == "checkpoints" else None
            entries.append(ModelEntry(folder, name, path.stat().st_size, cache.sha256(path), family))
    cache.save()
    return entries
