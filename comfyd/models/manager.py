"""The model manager: finds model files, loads them once, shares them, and bounds their memory.

Every loaded thing (a checkpoint's modules, a VAE, a parsed LoRA, an embedding) sits in one LRU
keyed by its file's resolved path, size and modification time: a second workflow naming the same
file gets the very same handles, and a file that changed on disk is loaded afresh. Two jobs that
ask for the same file at once wait on a single load. Budgets bound the bytes held on the compute
device and in host memory (0 = 80 % of the device's memory / 50 % of RAM); past them the least
recently used entries are dropped. A dropped model is freed once no job (or node cache) still
holds its handles. `free()` drops everything.

Off the CPU, an idle CLIP that must make room (a text-encoder entry, or a checkpoint's CLIP where
that alone suffices) moves to host memory instead, if the host budget has room, and comes back,
making room by the same rule, when it encodes again (comfyd.models.clip_residency); a large one
moves there as soon as its encode ends (comfyd.models.text_encoder_offload's policies).
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

from comfyd.models import families, loader, standalone
from comfyd.models.auxiliary_models import AuxiliaryModels, file_fingerprint
from comfyd.models.clip_vision import ClipVisionHandle
from comfyd.models.device_gate import DeviceGate, gate_limit
from comfyd.models.devices import ComputePlan, settings_plan
from comfyd.models.handles import ClipHandle, LoraPatch, ModelHandle, VaeHandle
from comfyd.models.hypernetwork import Hypernetwork
from comfyd.models.lora import LoraPatcher, ParsedLora
from comfyd.models.paths import ModelPaths, is_diffusers_folder
from comfyd.models.style_model import StyleModelHandle
from comfyd.models.tensorfile import ModelFileError
from comfyd.models.text_encoder_offload import TextEncoderOffload
from comfyd.models.threads import cpu_threads_by_load
from comfyd.models.upscale import UpscaleModelHandle
from comfyd.sampling.step_batcher import StepBatcher, batch_limit

log = logging.getLogger(__name__)

T = TypeVar("T")

HOST = torch.device("cpu")


@dataclass
class _Entry:
    key: str
    kind: str  # checkpoint | vae | lora | embedding
    name: str
    value: Any
    device_bytes: int
    host_bytes: int
    load_seconds: float


def module_bytes(*modules: nn.Module, host: torch.device = HOST) -> tuple[int, int]:
    """(bytes on an accelerator, bytes in host memory) of the modules' parameters and buffers."""
    device = host_bytes = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            size = tensor.numel() * tensor.element_size()
            if tensor.device.type == host.type:
                host_bytes += size
            else:
                device += size
    return device, host_bytes


def _host_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 1024**3


class ModelManager(AuxiliaryModels, TextEncoderOffload):
    """Loads and shares models for every job of one process. Thread-safe."""

    def __init__(self, settings: Any, catalog: Any = None) -> None:
        self.settings = settings
        self.paths = ModelPaths(tuple(Path(p) for p in settings.model_roots()))
        # A shared model catalog (`names(folder)`): an API host lists (and so validates against)
        # what the workers hold besides its own files.
        self.catalog = catalog
        self.plan: ComputePlan = settings_plan(settings)
        self.gate = DeviceGate(gate_limit(int(getattr(settings, "device_concurrency", 0)), self.plan.device),
                               threads_for=cpu_threads_by_load(settings, self.plan.device))
        device_type = self.plan.device.type
        self.batcher = StepBatcher(
            batch_limit(int(getattr(settings, "batch_max", 0)), device_type),
            window_s=float(getattr(settings, "batch_window_ms", 0.0)) / 1000.0,
            exact=device_type == "cpu",  # bit-identical to a run alone; GPUs: within fp16 noise
        )
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, Future[Any]] = {}
        self._lora_files: dict[str, Path] = {}
        self._tokenizers: dict[tuple[tuple[str, Any], ...], Any] = {}
        self._counters: Counter[str] = Counter()
        # Where offloaded text encoders go; a seam for tests, which stand in another device.
        self.host_device = HOST

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

    def load_diffusion_model(self, name: str, weight_dtype: str = "default") -> ModelHandle:
        """MODEL of a denoising network alone in `unet/` (`diffusion_models/`): UNETLoader."""
        path = self.resolve("unet", name)
        key = f"unet:{weight_dtype}:" + file_fingerprint(path)
        return self._get_or_load(key, "unet", name, lambda: self._load_diffusion_model(path, key, weight_dtype))

    def load_clip(self, names: list[str], clip_type: str) -> ClipHandle:
        """CLIP of text-encoder files in `clip/` (`text_encoders/`): CLIPLoader, DualCLIPLoader."""
        family = standalone.family_for_clip_type(clip_type)
        paths = [self.resolve("clip", name) for name in names]
        key = f"clip:{family.name}:" + "+".join(file_fingerprint(p) for p in paths)
        return self._get_or_load(key, "clip", "+".join(names), lambda: self._load_clip(paths, key, family))

    def load_vae(self, name: str) -> VaeHandle:
        path = self.resolve("vae", name)
        key = "vae:" + file_fingerprint(path)
        return self._get_or_load(key, "vae", name, lambda: self._load_vae(path, key, name))

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

    def _value_bytes(self, value: Any) -> tuple[int, int]:
        host = self.host_device
        if isinstance(value, tuple) and value and isinstance(value[0], ModelHandle):
            model, clip, vae = value
            encoders = clip.text_encoders.values() if clip is not None else ()
            return module_bytes(model.unet, vae.vae, *encoders, host=host)
        if isinstance(value, VaeHandle):
            return module_bytes(value.vae, host=host)
        if isinstance(value, ClipVisionHandle):
            return module_bytes(value.model, host=host)
        if isinstance(value, StyleModelHandle):
            return module_bytes(value.model, host=host)
        if isinstance(value, ModelHandle):
            return module_bytes(value.unet, host=host)
        if isinstance(value, ClipHandle):
            return module_bytes(*value.text_encoders.values(), host=host)
        if isinstance(value, UpscaleModelHandle):
            return 0, module_bytes(value.module, host=host)[1]  # kept on the CPU between uses
        if isinstance(value, ParsedLora | Hypernetwork):
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
            if over_device and self._offload_clip(victim, device_used - device_budget, host_budget - host_used):
                evicted += 1
                continue
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
            "offloads": counters.get("offloads", 0),  # text encoders moved to host memory
            "offloads_after_encode": counters.get("offloads_after_encode", 0),  # of those, policy moves
            "returns": counters.get("returns", 0),  # ... and back to the device to encode
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
            split = standalone.load_split_family_checkpoint(path, self.plan, allow_pickle)
            if split is not None:
                return self._split_checkpoint_handles(key, *split)
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
            batcher=self.batcher,
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
            residency=self._clip_residency(key, loaded.text_encoders),
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

    def _load_diffusion_model(self, path: Path, key: str, weight_dtype: str) -> ModelHandle:
        allow_pickle = bool(self.settings.allow_pickle)
        family, network, sampling = standalone.load_diffusion_model(path, self.plan, allow_pickle, weight_dtype)
        log.info("diffusion model %s: %s, %s-prediction", path.name, family.name, sampling.prediction)
        return self._flow_model_handle(key, family, network, sampling)

    def _flow_model_handle(self, key: str, family: families.Family, network: Any, sampling: Any) -> ModelHandle:
        return ModelHandle(
            key=key, family=family.name, prediction=sampling.prediction, unet=network,
            latent_scale=family.latent.sampler_scale(), device=self.plan.device,
            # A family may run in another dtype than the plan's (Z-Image: never fp16).
            dtype=getattr(network, "compute_dtype", None) or self.plan.unet_dtype,
            patcher=self._network_patcher(family, network), gate=self.gate,
            latent_shift=family.latent.sampler_shift(),
            sampling=sampling,
        )  # fmt: skip

    def _network_patcher(self, family: families.Family, modules: Any) -> Any:
        # Flux LoRAs map through the BFL key map (fused q/k/v included); Wan's are not mapped yet.
        if family.network_loras:
            modules = modules if isinstance(modules, dict) else {"unet": modules}
            return LoraPatcher(family.name, modules, self.parsed_lora)
        return _NoLoras(family.name)

    def _split_checkpoint_handles(
        self, key: str, family: families.Family, network: Any, sampling: Any, encoders: dict[str, Any] | None,
        vae: Any,
    ) -> tuple[ModelHandle, ClipHandle | None, VaeHandle]:
        # A checkpoint without text encoders (LTX-Video's) gives no CLIP, as in ComfyUI.
        model = self._flow_model_handle(key, family, network, sampling)
        clip = self._clip_handle(key, family, encoders) if encoders is not None else None
        return model, clip, self._vae_handle(key, family.name, vae)

    def _load_clip(self, paths: list[Path], key: str, family: families.Family) -> ClipHandle:
        allow_pickle = bool(self.settings.allow_pickle)
        loaded = [standalone.load_text_encoder(p, self.plan, allow_pickle) for p in paths]
        family = standalone.clip_family(family, loaded)
        return self._clip_handle(key, family, standalone.assign_encoders(family, loaded))

    def _clip_handle(self, key: str, family: families.Family, encoders: dict[str, Any]) -> ClipHandle:
        return ClipHandle(
            key=key, family=family.name,
            tokenizers=standalone.encoder_tokenizers(family, encoders, self.tokenizer),
            text_encoders=encoders, device=self.plan.device, dtype=self.plan.clip_dtype,
            patcher=self._network_patcher(family, encoders), gate=self.gate,
            embedding_dirs=tuple(str(p) for p in self.paths.folder_dirs("embeddings")),
            residency=self._clip_residency(key, encoders),
        )  # fmt: skip

    def _vae_handle(self, key: str, family: str, vae: nn.Module) -> VaeHandle:
        config = vae.config
        # The video VAE (Wan) names its latent width z_dim and its levels dim_mult; LTX-Video's
        # says its downscale itself.
        channels = getattr(config, "latent_channels", None) or config.z_dim
        levels = getattr(config, "block_out_channels", None) or config.dim_mult
        downscale = getattr(config, "downscale", None) or 2 ** (len(levels) - 1)
        return VaeHandle(
            key=key,
            family=family,
            vae=vae,
            device=self.plan.device,
            dtype=self.plan.vae_dtype,
            latent_channels=int(channels),
            # A VAE that patchifies its latent says its pixels per cell: Wan 2.2's (16, scale_factor_spatial),
            # Flux.2's (latent_downscale); LTX-Video's says `downscale`.
            downscale=int(
                getattr(config, "scale_factor_spatial", None) or getattr(config, "latent_downscale", None) or downscale
            ),
            gate=self.gate,
        )

    def _load_vae(self, path: Path, key: str, name: str) -> VaeHandle:
        vae = loader.load_vae_file(path, self.plan, bool(self.settings.allow_pickle))
        # A standalone VAE does not say which model it was trained with: its latent width narrows
        # the families down, the name is a hint among those.
        channels = int(getattr(vae.config, "latent_channels", None) or vae.config.z_dim)
        family = families.vae_family_hint(name)
        if family.latent.channels != channels:
            family = next((f for f in families.all_families() if f.latent.channels == channels), family)
        return self._vae_handle(key, family.name, vae)


class _NoLoras:
    """The patcher of models whose LoRA keys comfyd cannot map yet: refuses LoRAs, loudly."""

    def __init__(self, family: str) -> None:
        self.family = family

    def apply(self, module: Any, patches: tuple[LoraPatch, ...]) -> None:
        if patches:
            raise ValueError(f"LoRAs for {self.family} models are not supported yet")

    def restore(self, module: Any) -> None:
        return None
