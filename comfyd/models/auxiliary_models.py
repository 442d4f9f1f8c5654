"""The model manager's loaders of the models that serve a checkpoint: upscale models, ControlNets
and T2I-Adapters, CLIP vision towers, style models, LoRA and hypernetwork patches, embeddings.

A mixin of `manager.ModelManager`: each loader resolves its file, keys it by the file's
fingerprint and hands the load to the manager's shared LRU (`_get_or_load`), so these share the
checkpoints' memory budgets and single-flight loading.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from comfyd.models import families
from comfyd.models.clip_vision import ClipVisionHandle, load_clip_vision
from comfyd.models.control_model import ControlModelHandle, control_is_difference, load_control_model
from comfyd.models.embeddings import EmbeddingFormatError, parse_embedding
from comfyd.models.handles import HypernetworkPatch, LoraPatch, ModelHandle
from comfyd.models.hypernetwork import load_hypernetwork
from comfyd.models.lora import ParsedLora, parse_lora
from comfyd.models.paths import ModelNotFound, ModelPathError
from comfyd.models.style_model import StyleModelHandle, load_style_model
from comfyd.models.tensorfile import ModelFileError, TensorFile
from comfyd.models.upscale import UpscaleModelHandle, load_upscale_model

if TYPE_CHECKING:
    from comfyd.models.manager import ModelManager as _Base
else:
    _Base = object

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")


def file_fingerprint(path: Path) -> str:
    """Resolved path, size and modification time; for a folder, of every file in it."""
    resolved = path.resolve()
    if resolved.is_dir():
        size = 0
        latest = 0
        for dirpath, _, filenames in os.walk(resolved):
            for filename in filenames:
                stat = os.stat(os.path.join(dirpath, filename))
                size += stat.st_size
                latest = max(latest, stat.st_mtime_ns)
        return f"{resolved}|{size}|{latest}"
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


class AuxiliaryModels(_Base):
    """Loaders of the side models; `ModelManager` provides settings, paths and the LRU."""

    def load_upscale_model(self, name: str) -> UpscaleModelHandle:
        path = self.resolve("upscale_models", name)
        key = "upscale:" + file_fingerprint(path)
        return self._get_or_load(key, "upscale", name, lambda: load_upscale_model(
            path, key, name, self.plan.device, bool(self.settings.allow_pickle), self.gate))

    def load_control_model(self, name: str, model: ModelHandle | None = None) -> ControlModelHandle:
        """A ControlNet / T2I-Adapter of `controlnet/`; `model` completes a diff ControlNet."""
        path = self.resolve("controlnet", name)
        key = "controlnet:" + file_fingerprint(path)
        base = None
        if model is not None and control_is_difference(path, bool(self.settings.allow_pickle)):
            key += "+" + model.key
            base = model.unet
        return self._get_or_load(key, "controlnet", name, lambda: load_control_model(
            path, key, name, self.plan, bool(self.settings.allow_pickle), self.gate, base))
    def load_clip_vision(self, name: str) -> ClipVisionHandle:
        """A CLIP vision tower of `clip_vision/` (transformers or OpenCLIP names)."""
        path = self.resolve("clip_vision", name)
        key = "clip_vision:" + file_fingerprint(path)
        return self._get_or_load(key, "clip_vision", name, lambda: self._read_clip_vision(path, key, None))

    def checkpoint_clip_vision(self, name: str, family: str) -> ClipVisionHandle | None:
        """The image tower a checkpoint of `family` carries (unCLIP), or None, as in ComfyUI."""
        prefix = families.get(family).clip_vision_prefix
        if prefix is None:
            return None
        path = self.resolve("checkpoints", name)
        if path.is_dir():
            return None  # diffusers folders keep theirs in image_encoder/, not read yet
        with TensorFile(path, allow_pickle=self.settings.allow_pickle) as tf:
            if not any(k.startswith(prefix) for k in tf.keys()):
                return None  # ComfyUI also hands out None for a file without the tower
        key = "checkpoint_clip_vision:" + file_fingerprint(path)
        return self._get_or_load(key, "clip_vision", name, lambda: self._read_clip_vision(path, key, prefix))

    def _read_clip_vision(self, path: Path, key: str, prefix: str | None) -> ClipVisionHandle:
        with TensorFile(path, allow_pickle=self.settings.allow_pickle) as tf:
            return load_clip_vision(tf, key, self.plan, prefix, self.gate)

    def load_style_model(self, name: str) -> StyleModelHandle:
        path = self.resolve("style_models", name)
        key = "style_model:" + file_fingerprint(path)

        def read() -> StyleModelHandle:
            with TensorFile(path, allow_pickle=self.settings.allow_pickle) as tf:
                return load_style_model(tf, key)

        return self._get_or_load(key, "style_model", name, read)

    def lora_patch(self, name: str, strength: float) -> LoraPatch:
        """A LoRA of `loras/` at `strength`; parses (and caches) the file now, so errors show here."""
        path = self.resolve("loras", name)
        key = file_fingerprint(path)
        with self._lock:
            self._lora_files[key] = path
        self.parsed_lora(key)
        return LoraPatch(key=key, strength=float(strength))

    def hypernetwork_patch(self, name: str, strength: float) -> HypernetworkPatch | None:
        """A hypernetwork of `hypernetworks/` at `strength` (the file parsed and cached now); None
        when ComfyUI would leave the model unchanged (an activation it does not know)."""
        path = self.resolve("hypernetworks", name)
        key = "hypernetwork:" + file_fingerprint(path)
        layers = self._get_or_load(
            key, "hypernetwork", path.name, lambda: load_hypernetwork(path, bool(self.settings.allow_pickle))
        )
        return HypernetworkPatch(key=key, strength=float(strength), layers=layers) if layers is not None else None

    def parsed_lora(self, key: str) -> ParsedLora:
        """The parsed LoRA behind a LoraPatch key (reparsed if it was evicted)."""
        with self._lock:
            path = self._lora_files.get(key)
        if path is None:
            raise KeyError(f"unknown LoRA key {key!r}; get patches from ModelManager.lora_patch")

        def parse() -> ParsedLora:
            with TensorFile(path, allow_pickle=self.settings.allow_pickle) as tf:
                return parse_lora(tf)

        return self._get_or_load("lora:" + key, "lora", path.name, parse)

    def load_embedding(self, name: str) -> dict[str, torch.Tensor] | None:
        """Textual-inversion vectors per encoder ("l" / "h" / "g", "*" for unnamed), or None.

        `name` may omit the extension (`embedding:foo` finds foo.safetensors, foo.pt, foo.bin).
        A missing or unusable embedding gives None and a warning, as in ComfyUI.
        """
        try:
            path = self._find_embedding(name)
        except ModelPathError as exc:
            log.warning("embedding %r ignored: %s", name, exc)
            return None
        key = "embedding:" + file_fingerprint(path)

        def parse() -> dict[str, torch.Tensor]:
            with TensorFile(path, allow_pickle=self.settings.allow_pickle) as tf:
                return parse_embedding(tf)

        try:
            return self._get_or_load(key, "embedding", name, parse)
        except (ModelFileError, EmbeddingFormatError) as exc:
            log.warning("embedding %r ignored: %s", name, exc)
            return None

    def _find_embedding(self, name: str) -> Path:
        try:
            return self.resolve("embeddings", name)
        except ModelNotFound:
            pass
        for extension in EMBEDDING_EXTENSIONS:
            try:
                return self.resolve("embeddings", name + extension)
            except ModelNotFound:
                continue
        return self.resolve("embeddings", name)  # raises ModelNotFound naming the folders

    # --- cache ---------------------------------------------------------------------------
