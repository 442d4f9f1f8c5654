"""The model manager: finds model files, loads them once, shares them, and bounds their memory.

Every loaded thing (a checkpoint's modules, a VAE, a parsed LoRA, an embedding) sits in one LRU
keyed by its file's resolved path, size and modification time: a second workflow naming the same
file gets the very same handles, and a file that changed on disk is loaded afresh. Two jobs that
ask for the same file at once wait on a single load. Budgets bound the bytes held on the compute
device and in host memory (0 = 80 % of the device's memory / 50 % of RAM); past them the least
recently used entries are dropped. A dropped model is freed once no job (or node cache) still
holds its handles. `free()` drops everything.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from comfyd.models import families, loader
from comfyd.models.device_gate import DeviceGate, gate_limit
from comfyd.models.devices import ComputePlan, compute_plan
from comfyd.models.embeddings import EmbeddingFormatError, parse_embedding
from comfyd.models.handles import ClipHandle, LoraPatch, ModelHandle, VaeHandle
from comfyd.models.lora import LoraPatcher, ParsedLora, parse_lora
from comfyd.models.paths import ModelNotFound, ModelPathError, ModelPaths, is_diffusers_folder
from comfyd.models.tensorfile import ModelFileError, TensorFile
from comfyd.models.threads import cpu_threads_by_load
from comfyd.models.upscale import UpscaleModelHandle, load_upscale_model

log = logging.getLogger(__name__)

T = TypeVar("T")
EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")


@dataclass
class _Entry:
    key: str
    kind: str  # checkpoint | vae | lora | embedding
    name: str
    value: Any
    device_bytes: int
    host_bytes: int
    load_seconds: float


def module_bytes(*modules: nn.Module) -> tuple[int, int]:
    """(bytes on an accelerator, bytes in host memory) of the modules' parameters and buffers."""
    device = host = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            size = tensor.numel() * tensor.element_size()
            if tensor.device.type == "cpu":
                host += size
            else:
                device += size
    return device, host


def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 1024**3


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


class ModelManager:
    """Loads and shares models for every job of one process. Thread-safe."""

    def __init__(self, settings: Any, catalog: Any = None) -> None:
        self.settings = settings
        self.paths = ModelPaths(tuple(Path(p) for p in settings.model_roots()))
        # A shared model catalog (`names(folder)`): an API host lists (and so validates against)
        # what the workers hold besides its own files.
        self.catalog = catalog
        self.plan: ComputePlan = compute_plan(settings.device, settings.dtype)
        self.gate = DeviceGate(gate_limit(int(getattr(settings, "device_concurrency", 0)), self.plan.device),
                               threads_for=cpu_threads_by_load(settings, self.plan.device))
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, Future[Any]] = {}
        self._lora_files: dict[str, Path] = {}
        self._tokenizers: dict[tuple[tuple[str, Any], ...], Any] = {}
        self._counters: Counter[str] = Counter()

    # --- files ---------------------------------------------------------------------------
    def list_files(self, folder: str) -> list[str]:
        local = self.paths.list_files(folder)
        if self.catalog is None:
            return local
        return sorted(set(local) | set(self.catalog.names(folder)))

    def resolve(self, folder: str, name: str) -> Path:
        return self.paths.resolve(folder, name)

    def fingerprint(self, folder: str, name: str) -> str:
        """Changes whenever the named file (or diffusers folder) changes; for node caches."""
        return file_fingerprint(self.resolve(folder, name))

    # --- budgets -------------------------------------------------------------------------
    @property
    def device_budget(self) -> int:
        configured = int(self.settings.model_cache_device_bytes)
        if configured > 0:
            return configured
        device = self.plan.device
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
        return 0  # no accelerator: nothing is held there

    @property
    def host_budget(self) -> int:
        configured = int(self.settings.model_cache_host_bytes)
        return configured if configured > 0 else _host_memory_bytes() // 2

    # --- loading -------------------------------------------------------------------------
    def load_checkpoint(self, name: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        """MODEL, CLIP and VAE of a checkpoint in `checkpoints/` (single file or diffusers folder)."""
        path = self.resolve("checkpoints", name)
        key = "checkpoint:" + file_fingerprint(path)
        return self._get_or_load(key, "checkpoint", name, lambda: self._load_checkpoint(path, key))

    def load_vae(self, name: str) -> VaeHandle:
        path = self.resolve("vae", name)
        key = "vae:" + file_fingerprint(path)
        return self._get_or_load(key, "vae", name, lambda: self._load_vae(path, key, name))

    def load_upscale_model(self, name: str) -> UpscaleModelHandle:
        path = self.resolve("upscale_models", name)
        key = "upscale:" + file_fingerprint(path)
        return self._get_or_load(key, "upscale", name, lambda: load_upscale_model(
            path, key, name, self.plan.device, bool(self.settings.allow_pickle), self.gate))

    def lora_patch(self, name: str, strength: float) -> LoraPatch:
        """A LoRA of `loras/` at `strength`; parses (and caches) the file now, so errors show here."""
        path = self.resolve("loras", name)
        key = file_fingerprint(path)
        with self._lock:
            self._lora_files[key] = path
        self.parsed_lora(key)
        return LoraPatch(key=key, strength=float(strength))

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
    def _get_or_load(self, key: str, kind: str, name: str, load: Callable[[], T]) -> T:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._counters["hits"] += 1
                return entry.value
            future = self._inflight.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._inflight[key] = future
        assert future is not None
        if not owner:
            self._counters["waits"] += 1
            return future.result()
        started = time.perf_counter()
        try:
            value = load()
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(key, None)
            future.set_exception(exc)
            raise
        seconds = time.perf_counter() - started
        device_bytes, host_bytes = self._value_bytes(value)
        with self._lock:
            self._entries[key] = _Entry(key, kind, name, value, device_bytes, host_bytes, seconds)
            self._inflight.pop(key, None)
            self._counters["loads"] += 1
            self._counters[f"loads_{kind}"] += 1
            evicted = self._evict_over_budget(protect=key)
        future.set_result(value)
        if evicted:
            self._release_memory()
        log.info("loaded %s %s in %.2fs", kind, name, seconds)
        return value

    @staticmethod
    def _value_bytes(value: Any) -> tuple[int, int]:
        if isinstance(value, tuple) and value and isinstance(value[0], ModelHandle):
            model, clip, vae = value
            return module_bytes(model.unet, vae.vae, *clip.text_encoders.values())
        if isinstance(value, VaeHandle):
            return module_bytes(value.vae)
        if isinstance(value, UpscaleModelHandle):
            return 0, module_bytes(value.module)[1]  # kept on the CPU between uses
        if isinstance(value, ParsedLora):
            return 0, value.nbytes
        if isinstance(value, dict):
            return 0, sum(t.numel() * t.element_size() for t in value.values())
        return 0, 0

    def _evict_over_budget(self, protect: str) -> int:
        evicted = 0
        device_budget, host_budget = self.device_budget, self.host_budget
        while True:
            device_used = sum(e.device_bytes for e in self._entries.values())
            host_used = sum(e.host_bytes for e in self._entries.values())
            over_device = device_used > device_budget and device_used > 0
            over_host = host_used > host_budget
            if not (over_device or over_host):
                return evicted
            victim = next(
                (
                    e
                    for e in self._entries.values()
                    if e.key != protect and ((over_device and e.device_bytes) or (over_host and e.host_bytes))
                ),
                None,
            )
            if victim is None:
                log.warning("model cache over budget with only %s loaded; keeping it", protect)
                return evicted
            del self._entries[victim.key]
            self._counters["evictions"] += 1
            evicted += 1
            log.info("evicted %s %s from the model cache", victim.kind, victim.name)

    def _release_memory(self) -> None:
        gc.collect()
        if self.plan.device.type == "cuda":
            torch.cuda.empty_cache()

    def free(self) -> None:
        """Drop every loaded model (memory returns once no job holds their handles)."""
        with self._lock:
            self._counters["evictions"] += len(self._entries)
            self._entries.clear()
        self._release_memory()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            entries = list(self._entries.values())
            counters = dict(self._counters)
        return {
            **self.plan.describe(),
            "device_bytes": sum(e.device_bytes for e in entries),
            "host_bytes": sum(e.host_bytes for e in entries),
            "device_budget": self.device_budget,
            "host_budget": self.host_budget,
            "loads": counters.get("loads", 0),
            "hits": counters.get("hits", 0),
            "waits": counters.get("waits", 0),
            "evictions": counters.get("evictions", 0),
            "loaded": [
                {
                    "kind": e.kind,
                    "name": e.name,
                    "device_bytes": e.device_bytes,
                    "host_bytes": e.host_bytes,
                    "load_seconds": round(e.load_seconds, 3),
                }
                for e in entries
            ],
        }

    # --- building handles ------------------------------------------------------------------
    def tokenizer(self, options: dict[str, Any]) -> Any:
        key = tuple(sorted(options.items()))
        with self._lock:
            tokenizer = self._tokenizers.get(key)
            if tokenizer is None:
                tokenizer = loader.load_clip_tokenizer(options)
                self._tokenizers[key] = tokenizer
            return tokenizer

    def _load_checkpoint(self, path: Path, key: str) -> tuple[ModelHandle, ClipHandle, VaeHandle]:
        allow_pickle = bool(self.settings.allow_pickle)
        if is_diffusers_folder(path):
            loaded = loader.load_diffusers_folder(path, self.plan, allow_pickle)
        elif path.is_dir():
            raise ModelFileError(
                f"{path.name} is a folder but not a diffusers checkpoint (no model_index.json)"
            )
        else:
            loaded = loader.load_single_file(path, self.plan, allow_pickle)
        if self.plan.device.type == "cuda":
            # NHWC convolutions are the fast path for fp16/bf16 on tensor cores.
            loaded.unet.to(memory_format=torch.channels_last)
        if self.settings.torch_compile:
            # Compiles lazily on the first call; LoRA patches change weights in place, which
            # torch.compile tolerates (parameters are inputs of the compiled graph).
            loaded.unet.compile()
        family = families.get(loaded.family)
        patcher = LoraPatcher(loaded.family, {"unet": loaded.unet, **loaded.text_encoders}, self.parsed_lora)
        device = self.plan.device
        model = ModelHandle(
            key=key,
            family=loaded.family,
            prediction=loaded.prediction,
            unet=loaded.unet,
            latent_scale=loaded.latent_scale,
            device=device,
            dtype=self.plan.unet_dtype,
            patcher=patcher,
            gate=self.gate,
            latent_shift=family.latent.shift,
            beta_start=family.sampling.beta_start,
            beta_end=family.sampling.beta_end,
            num_train_timesteps=family.sampling.timesteps,
        )
        clip = ClipHandle(
            key=key,
            family=loaded.family,
            tokenizers={n: self.tokenizer(opts) for n, opts in loaded.tokenizer_options.items()},
            text_encoders=loaded.text_encoders,
            device=device,
            dtype=self.plan.clip_dtype,
            patcher=patcher,
            gate=self.gate,
            embedding_dirs=tuple(str(p) for p in self.paths.folder_dirs("embeddings")),
        )
        vae = self._vae_handle(key, loaded.family, loaded.vae)
        log.info(
            "checkpoint %s: %s, %s-prediction (%s)",
            path.name,
            loaded.family,
            loaded.prediction,
            loaded.notes.get("prediction_rule", ""),
        )
        return model, clip, vae

    def _vae_handle(self, key: str, family: str, vae: nn.Module) -> VaeHandle:
        config = vae.config
        return VaeHandle(
            key=key,
            family=family,
            vae=vae,
            device=self.plan.device,
            dtype=self.plan.vae_dtype,
            latent_channels=int(config.latent_channels),
            downscale=2 ** (len(config.block_out_channels) - 1),
            gate=self.gate,
        )

    def _load_vae(self, path: Path, key: str, name: str) -> VaeHandle:
        vae = loader.load_vae_file(path, self.plan, bool(self.settings.allow_pickle))
        # A standalone VAE does not say which model it was trained with; the name is a hint only.
        return self._vae_handle(key, families.vae_family_hint(name).name, vae)
