"""Convert a checkpoint's tensors on a background thread while the modules are being built.

Loading a single-file checkpoint is two kinds of work: Python work (importing diffusers and
transformers, building the empty modules, mapping keys), which holds the GIL, and tensor work
(reading the mapped file, moving to the device, casting to the compute dtype), which mostly
does not. Done one after the other, the first job waits for their sum. A `TensorPrefetch` starts
the tensor work at once, in the order the loader will ask for the tensors, so that by the time a
module asks for its weights they are (mostly) converted already.

The results are exactly what `loader.convert_tensor` makes of each stored tensor (every key op of
`keymap.apply_op` is a view, and a cast commutes with a view), so the loaded weights are
bit-identical to a sequential load; like them they never alias the mapped file. Only floating
tensors under the prefixes named are converted; anything else is left to the caller, as are
GGUF tensors that may stay quantized (`gguf_layers`: converting them here would be wasted).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from comfyd.models.tensorfile import TensorFile


@dataclass(frozen=True)
class Target:
    """Where the tensors under one key prefix go."""

    prefix: str
    device: torch.device
    dtype: torch.dtype
    rounding: torch.dtype | None = None


Convert = Callable[[torch.Tensor, torch.device, torch.dtype, "torch.dtype | None"], torch.Tensor]


class TensorPrefetch:
    """Converted tensors of `tf`, keyed by stored key, made on a daemon thread in `targets` order.

    `take(key)` waits for the key's tensor (None when the key is not one this converts).
    `close()` stops the thread and drops what was not taken; use it as a context manager.
    """

    def __init__(self, tf: TensorFile, targets: Sequence[Target], convert: Convert) -> None:
        self._tf, self._convert = tf, convert
        self._plan: dict[str, Target] = {}
        for target in targets:
            for key in tf.keys():
                if key.startswith(target.prefix) and key not in self._plan and tf.dtype(key).is_floating_point:
                    if not tf.may_stay_quantized(key):
                        self._plan[key] = target
        self._done: dict[str, torch.Tensor] = {}
        self._error: BaseException | None = None
        self._finished = False
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="comfyd-tensor-prefetch", daemon=True)
        self._thread.start()

    def __enter__(self) -> TensorPrefetch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _work(self) -> None:
        try:
            for key, target in self._plan.items():
                if self._stop.is_set():
                    break
                tensor = self._convert(self._tf.get(key), target.device, target.dtype, target.rounding)
                with self._changed:
                    self._done[key] = tensor
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the taker: a bad file fails the load, not a thread
            self._error = exc
        finally:
            with self._changed:
                self._finished = True
                self._changed.notify_all()

    def planned(self, key: str) -> bool:
        return key in self._plan

    def take(self, key: str) -> torch.Tensor | None:
        """The converted tensor of `key` (the same object each time it is asked for)."""
        if key not in self._plan:
            return None
        with self._changed:
            while key not in self._done and not self._finished:
                self._changed.wait()
            if key in self._done:
                return self._done[key]
        if self._error is not None:
            raise self._error
        return None  # stopped before this key: the caller converts it itself

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with self._changed:
            self._done.clear()
