"""Node-output cache shared by every job of a process.

An entry is keyed by what determines a node's output, never by its id in a workflow: the class,
its literal inputs, the keys of the upstream entries it reads (and which output of each), its
hidden inputs and the node's own `fingerprint`. So rerunning the default workflow with only the
seed changed finds the checkpoint loader and both text encoders already computed.

The cache is an LRU bounded by an estimate of the bytes its values hold. Tensors count their
storage; MODEL/CLIP/VAE handles count next to nothing because the model manager owns (and
budgets) the weights they point at.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What an object we cannot measure is assumed to take (a handle, a small Python object).
UNKNOWN_OBJECT_BYTES = 64


@dataclass(frozen=True)
class CacheEntry:
    values: tuple[Any, ...]
    ui: dict[str, Any] | None
    size: int


def estimate_size(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by `value`: tensor/array storage, recursively through tuples, lists, dicts."""
    seen = _seen if _seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if value is None or isinstance(value, bool | int | float):
        return 8
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    nbytes = getattr(value, "nbytes", None)  # torch.Tensor (>= 2.1) and numpy arrays
    if isinstance(nbytes, int):
        return nbytes
    if isinstance(value, Mapping):
        return sum(estimate_size(k, seen) + estimate_size(v, seen) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(estimate_size(v, seen) for v in value)
    return UNKNOWN_OBJECT_BYTES


def canonical_json(value: Any) -> str:
    """Stable text of a JSON-like value; objects that are not JSON fall back to repr()."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def make_cache_key(
    class_type: str,
    literals: Mapping[str, Any],
    upstream: Mapping[str, tuple[str, int]],
    extra: Any = None,
) -> str:
    """sha256 of a node's identity: class, literal inputs, (upstream key, output) per link, extra.

    `extra` holds the node's fingerprint and hidden inputs.
    """
    payload = canonical_json(
        {
            "class_type": class_type,
            "literals": dict(literals),
            "links": {name: [key, index] for name, (key, index) in upstream.items()},
            "extra": extra,
        }
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class NodeCache:
    """Thread-safe LRU of node outputs bounded by `max_bytes` (0 disables caching)."""

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, values: tuple[Any, ...], ui: dict[str, Any] | None = None) -> bool:
        """Store an entry; False when it alone exceeds the bound (then nothing is kept)."""
        size = estimate_size(values) + (estimate_size(ui) if ui else 0)
        if size > self.max_bytes:
            return False
        entry = CacheEntry(values=tuple(values), ui=ui, size=size)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.size
                self.evictions += 1
        return True

    def discard(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
