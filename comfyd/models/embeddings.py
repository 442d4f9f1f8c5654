"""Textual-inversion embeddings: the file formats in circulation, as vectors per text encoder.

- A1111 `.safetensors`: `{"emb_params": [n, width]}`; A1111 `.pt` (pickle, only when allowed):
  `{"string_to_param": {"*": [n, width]}, ...}`; diffusers: one tensor under the token's name.
- SDXL: `{"clip_l": [n, 768], "clip_g": [n, 1280]}` (and `clip_h` for SD2 exports).

The result maps an encoder name ("l", "h", "g") to its vectors `[n, width]`. A file with one
unnamed tensor gives `{"*": vectors}` (usable by any encoder of that width) and, for the real
widths, also the encoder it must belong to (768 -> "l", 1024 -> "h", 1280 -> "g").
"""

from __future__ import annotations

import torch

from comfyd.models.tensorfile import TensorFile

_NAMED_KEYS = {"clip_l": "l", "clip_h": "h", "clip_g": "g"}
_WIDTH_ENCODER = {768: "l", 1024: "h", 1280: "g"}


class EmbeddingFormatError(ValueError):
    """A file that is not a textual-inversion embedding."""


def _as_vectors(tensor: torch.Tensor, what: str) -> torch.Tensor:
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise EmbeddingFormatError(
            f"{what}: expected [vectors, width] floats, found {tuple(tensor.shape)} {tensor.dtype}"
        )
    return tensor.detach().to(torch.float32).clone()


def parse_embedding(tf: TensorFile) -> dict[str, torch.Tensor]:
    keys = tf.keys()
    named = {_NAMED_KEYS[k]: _as_vectors(tf.get(k), f"{tf.path.name}:{k}") for k in keys if k in _NAMED_KEYS}
    if named:
        return named
    if "emb_params" in keys:
        single = tf.get("emb_params")
    else:
        params = [k for k in keys if k.startswith("string_to_param.")]
        candidates = params or [k for k in keys if tf.get(k).is_floating_point()]
        if len(candidates) != 1:
            raise EmbeddingFormatError(
                f"{tf.path.name} is not an embedding comfyd knows (emb_params, string_to_param, clip_l/clip_g, "
                f"or one tensor); keys: {', '.join(keys[:6]) or 'none'}"
            )
        single = tf.get(candidates[0])
    vectors = _as_vectors(single, tf.path.name)
    out = {"*": vectors}
    encoder = _WIDTH_ENCODER.get(int(vectors.shape[1]))
    if encoder is not None:
        out[encoder] = vectors
    return out
