"""ComfyUI's `comfy.model_management`: device queries, cache release and interrupts.

comfyd's model manager owns loading and memory budgets; packs get the answers they ask for
(which device, how much memory) and `throw_exception_if_processing_interrupted` honours the
job's cancel flag.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch

from comfyd.compat import state


class VRAMState(Enum):
    DISABLED = 0
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(Enum):
    GPU = 0
    CPU = 1
    MPS = 2


class InterruptProcessingException(Exception):
    pass


class OOM_EXCEPTION(torch.cuda.OutOfMemoryError if hasattr(torch.cuda, "OutOfMemoryError") else MemoryError):  # type: ignore[misc]  # noqa: N801
    pass


def get_torch_device() -> torch.device:
    setting = (state.settings().device or "auto").lower()
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_torch_device_name(device: Any) -> str:
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)}"
    return str(device.type)


vram_state = VRAMState.NORMAL_VRAM if torch.cuda.is_available() else VRAMState.DISABLED
cpu_state = CPUState.GPU if torch.cuda.is_available() else CPUState.CPU


def is_device_cpu(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cpu"


def is_device_mps(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "mps"


def is_device_cuda(device: Any) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def cpu_mode() -> bool:
    return get_torch_device().type == "cpu"


def mps_mode() -> bool:
    return get_torch_device().type == "mps"


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return torch.device("cpu")


def vae_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    return get_torch_device()


def vae_device() -> torch.device:
    return get_torch_device()


def unet_inital_load_device(*_: Any, **__: Any) -> torch.device:
    return get_torch_device()


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> Any:
    device = torch.device(dev) if dev is not None else get_torch_device()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return (free, free) if torch_free_too else free
    import psutil

    free = psutil.virtual_memory().available
    return (free, free) if torch_free_too else free


def get_total_memory(dev: Any = None, torch_total_too: bool = False) -> Any:
    device = torch.device(dev) if dev is not None else get_torch_device()
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
    else:
        import psutil

        total = psutil.virtual_memory().total
    return (total, total) if torch_total_too else total


def should_use_fp16(device: Any = None, *_: Any, **__: Any) -> bool:
    device = torch.device(device) if device is not None else get_torch_device()
    return device.type == "cuda"


def should_use_bf16(device: Any = None, *_: Any, **__: Any) -> bool:
    device = torch.device(device) if device is not None else get_torch_device()
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def unet_dtype(*_: Any, **__: Any) -> torch.dtype:
    return torch.float16 if should_use_fp16() else torch.float32


def vae_dtype(*_: Any, **__: Any) -> torch.dtype:
    return torch.bfloat16 if should_use_bf16() else torch.float32


def text_encoder_dtype(*_: Any, **__: Any) -> torch.dtype:
    return unet_dtype()


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def soft_empty_cache(force: bool = False) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def unload_all_models() -> None:
    """comfyd's model manager keeps its own budget; the request only releases cached blocks."""
    soft_empty_cache()


def free_memory(memory_required: int, device: Any, keep_loaded: Any = ()) -> None:
    soft_empty_cache()


def load_models_gpu(models: Any, *_: Any, **__: Any) -> None:
    """Pack-owned modules are moved by the packs themselves; nothing to do for comfyd."""


def cast_to_device(tensor: torch.Tensor, device: Any, dtype: Any, copy: bool = False) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype, copy=copy)


def processing_interrupted() -> bool:
    ctx = state.current_context()
    return bool(ctx is not None and ctx.interrupt.is_set())


def throw_exception_if_processing_interrupted() -> None:
    ctx = state.current_context()
    if ctx is not None:
        ctx.check_interrupted()


def interrupt_current_processing(value: bool = True) -> None:
    ctx = state.current_context()
    if ctx is not None and value:
        ctx.interrupt.set()


def __getattr__(name: str) -> Any:
    # A name ComfyUI has and comfyd lacks: a placeholder that fails when used (aliases.missing).
    if name.startswith("__"):
        raise AttributeError(name)
    from comfyd.compat.aliases import missing

    return missing(f"comfy.model_management.{name}")
