"""Small random hypernetwork files in A1111's pickled layout (tests and fidelity cases).

Per width a pair of stacks `Linear(w, w) -> activation -> LayerNorm -> Linear(w, w) -> (activation,
as ComfyUI counts the norms as layers) -> LayerNorm`, the keys in the order ComfyUI reads them (`linear.0`, `linear.1`, ...), saved with
torch.save as A1111 saves them: a dict of widths plus the option entries.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import torch

from comfyd.models.tiny import _generator


def _stack(width: int, g: torch.Generator, scale: float, layer_norm: bool) -> dict[str, torch.Tensor]:
    sizes = [width, width, width]
    state: dict[str, torch.Tensor] = {}
    index = 0
    for fan_in, fan_out in zip(sizes, sizes[1:], strict=False):
        state[f"linear.{index}.weight"] = torch.randn((fan_out, fan_in), generator=g) * scale / math.sqrt(fan_in)
        state[f"linear.{index}.bias"] = torch.randn((fan_out,), generator=g) * 0.02
        index += 1
        if layer_norm:
            state[f"linear.{index}.weight"] = 1.0 + 0.1 * torch.randn((fan_out,), generator=g)
            state[f"linear.{index}.bias"] = 0.05 * torch.randn((fan_out,), generator=g)
            index += 1
    return state


def make_tiny_hypernetwork(path: Path | str, widths: tuple[int, ...] = (320, 640, 768), *, seed: int = 0,
                           activation: str = "relu", layer_norm: bool = True, scale: float = 0.5) -> Path:
    """A random hypernetwork for these feature widths (the UNet's channels and its context width)."""
    g = _generator(seed, "hypernetwork")
    data: dict[object, object] = {w: [_stack(w, g, scale, layer_norm), _stack(w, g, scale, layer_norm)] for w in widths}
    data.update(activation_func=activation, is_layer_norm=layer_norm, use_dropout=False, activate_output=False,
                last_layer_dropout=False, layer_structure=[1, 1, 1], name=Path(path).stem)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    _make_reproducible(path)
    return path


def _make_reproducible(path: Path) -> None:
    """torch.save writes a random serialization id; replace it with one derived from the contents
    (and fix the entry times) so that the same seed gives the same bytes (the fidelity digests)."""
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    content = hashlib.sha256(b"".join(data for name, data in entries if not name.endswith("serialization_id")))
    serial = str(int(content.hexdigest(), 16) % 10**40).zfill(40).encode()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)),
                             serial if name.endswith(".data/serialization_id") else data)
