"""Tokenizer options on a CLIP (T5TokenizerOptions), read as ComfyUI's SDTokenizer reads them.

ComfyUI keeps a dict of options on the CLIP object (`CLIP.set_tokenizer_option`, copied by
`clone`) and hands it to every tokenizer of that CLIP. A tokenizer reads only the options named
after its own embedding key: `<key>_min_padding` (pad tokens appended after the end token of the
last chunk) and `<key>_min_length` (the sequence padded up to that many tokens), each replacing
the tokenizer's own value when set, so `min_length` 0 switches Flux's 256-token padding off.

comfyd's T5-layout encoders and ComfyUI's embedding keys: kind "t5" is `t5xxl` (Flux, SD3,
Chroma, HiDream, LTX-Video); kind "umt5" is `umt5xxl` (Wan), or `pile_t5xl` when the family gives
its own sequence tokens (AuraFlow's Pile-T5).

The added pads are ordinary pad tokens after the end token: encoders that mask the padding
(Wan, AuraFlow, HiDream's and LTX-Video's T5) mask them too; Flux, SD3 and Chroma encode them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The embedding keys T5TokenizerOptions sets, in ComfyUI's order.
T5_TYPES = ("t5xxl", "pile_t5xl", "t5base", "mt5xl", "umt5xxl")


@dataclass(frozen=True)
class Padding:
    """Pads after the end token (`min_padding`), then pads up to `min_length` tokens."""

    min_padding: int = 0
    min_length: int = 0


def t5_option_settings(min_padding: int, min_length: int) -> dict[str, int]:
    """The options T5TokenizerOptions sets: both values for every T5 type."""
    options: dict[str, int] = {}
    for t5_type in T5_TYPES:
        options[f"{t5_type}_min_padding"] = int(min_padding)
        options[f"{t5_type}_min_length"] = int(min_length)
    return options


def embedding_key(spec: Any) -> str | None:
    """ComfyUI's embedding key of a T5-layout encoder spec; None for other encoders."""
    if spec.kind == "t5":
        return "t5xxl"
    if spec.kind == "umt5":
        return "pile_t5xl" if spec.sequence is not None else "umt5xxl"
    return None


def padding(options: tuple[tuple[str, int], ...], spec: Any, default_min_length: int) -> Padding:
    """The padding encoder `spec` tokenizes with under a CLIP's `options`."""
    key = embedding_key(spec)
    found = dict(options)
    if key is None:
        return Padding(0, default_min_length)
    return Padding(
        int(found.get(f"{key}_min_padding", 0)),
        int(found.get(f"{key}_min_length", default_min_length)),
    )


def pad(tokens: list[tuple[int, float]], pad_token: int, padding: Padding) -> list[tuple[int, float]]:
    """`tokens` (ending with the end token) with `padding` applied, in ComfyUI's order."""
    out = [*tokens, *[(pad_token, 1.0)] * max(0, padding.min_padding)]
    if len(out) < padding.min_length:
        out.extend([(pad_token, 1.0)] * (padding.min_length - len(out)))
    return out
