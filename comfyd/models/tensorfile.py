"""Read a weights file key by key, without loading it whole.

`.safetensors` is memory mapped: keys, shapes and dtypes come from its header, and each tensor
handed out is a view of the mapped file (private copy-on-write pages, so writing to it never
touches the file). Pickle files (`.ckpt`, `.pt`, ...) can run code when unpickled, so they are
refused unless the operator allows them, and even then only `torch.load(weights_only=True)`
reads them. `.gguf` files (quantized or not) are read through `gguf_weights`, each tensor
dequantized to float32 when asked for by `get`; `quantized` hands a block-quantized one out as its
raw blocks instead (unless `gguf_quantized` is off: then everything is dequantized at load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from comfyd.models.gguf_layers import QuantizedTensor
from comfyd.models.gguf_weights import GGUFError, GGUFWeights
from comfyd.models.paths import GGUF_EXTENSIONS, PICKLE_EXTENSIONS

_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# The fp8 storage dtypes: weights kept in them are cast up to the compute dtype as they run.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class ModelFileError(ValueError):
    """A weights file that cannot be read (corrupt, wrong format, refused)."""


class PickleRefused(ModelFileError):
    def __init__(self, path: Path) -> None:
        super().__init__(
            f"refusing to load {path.name}: it is a pickle file ({path.suffix}), and unpickling can run "
            "arbitrary code. Convert it to .safetensors, or let the operator set allow_pickle "
            "(COMFYD_ALLOW_PICKLE=1) to load it with torch.load(weights_only=True)."
        )
        self.path = path


class TensorFile:
    """Keys, shapes and lazily read tensors of one weights file. Use as a context manager."""

    def __init__(self, path: Path, allow_pickle: bool = False, gguf_quantized: bool = True) -> None:
        self.path = Path(path)
        self.gguf_quantized = gguf_quantized
        self._handle: Any = None
        self._tensors: dict[str, torch.Tensor] | None = None
        self._gguf: GGUFWeights | None = None
        self.metadata: dict[str, str] = {}
        suffix = self.path.suffix.lower()
        if suffix in GGUF_EXTENSIONS:
            try:
                self._gguf = GGUFWeights(self.path)
            except GGUFError as exc:
                raise ModelFileError(str(exc)) from exc
            self._keys = self._gguf.keys()
        elif suffix in PICKLE_EXTENSIONS:
            if not allow_pickle:
                raise PickleRefused(self.path)
            self._tensors = _load_pickle_weights_only(self.path)
            self._keys = list(self._tensors)
        else:
            try:
                self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types for bad headers
                raise ModelFileError(f"cannot read {self.path.name} as safetensors: {exc}") from exc
            self._keys = list(self._handle.keys())
            self.metadata = dict(self._handle.metadata() or {})
        self._key_set = frozenset(self._keys)

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Tensors already handed out keep their own reference to the mapping.
        self._handle = None
        self._tensors = None
        self._gguf = None

    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._key_set

    def shape(self, key: str) -> tuple[int, ...]:
        if self._gguf is not None:
            return self._gguf.shape(key)
        if self._tensors is not None:
            return tuple(self._tensors[key].shape)
        return tuple(self._handle.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if self._gguf is not None:
            return self._gguf.dtype(key)
        if self._tensors is not None:
            return self._tensors[key].dtype
        name = self._handle.get_slice(key).get_dtype()
        return _SAFETENSORS_DTYPES.get(name, torch.float32)

    def get(self, key: str) -> torch.Tensor:
        """The tensor stored under `key` (a view of the mapped file for safetensors)."""
        if self._gguf is not None:
            try:
                return self._gguf.get(key)
            except GGUFError as exc:
                raise ModelFileError(str(exc)) from exc
        if self._tensors is not None:
            return self._tensors[key]
        if self._handle is None:
            raise ModelFileError(f"{self.path.name} is closed")
        return self._handle.get_tensor(key)

    def quantized(self, key: str) -> QuantizedTensor | None:
        """GGUF only: the raw blocks of a block-quantized tensor, to be kept quantized; None for
        every other tensor (read those with `get`)."""
        if self._gguf is None or not self.gguf_quantized:
            return None
        return self._gguf.quantized(key)

    def may_stay_quantized(self, key: str) -> bool:
        """Whether `quantized(key)` may hand the tensor out as blocks (cheap: its type only)."""
        return self._gguf is not None and self.gguf_quantized and self._gguf.has_torch_blocks(key)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self._keys}


def _load_pickle_weights_only(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            # mmap needs the zip-based format; the legacy format is read without it.
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(
            f"cannot load {path.name} with torch.load(weights_only=True): {type(exc).__name__}: {exc}"
        ) from exc
    # Lightning checkpoints wrap the weights: {"state_dict": {...}, "global_step": ...}.
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path.name} does not hold a dict of tensors (found {type(obj).__name__})")
    return _flatten_tensors(obj)


def _flatten_tensors(obj: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a (possibly nested) dict, nested keys joined with '.'; other values dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, dict):
            out.update(_flatten_tensors(value, f"{name}."))
    return out
