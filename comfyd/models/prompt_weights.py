"""Prompt weight syntax, as ComfyUI reads it (comfy/sd1_clip.py: token_weights, parse_parentheses).

- `(text)` multiplies the enclosing weight by 1.1; nesting multiplies again: `((x))` -> 1.21.
- `(text:1.3)` sets the weight to 1.3 (the last ':' inside the parentheses). An explicit weight
  replaces the enclosing one instead of multiplying it: `(a (b:0.5) c:1.2)` -> a 1.2, b 0.5, c 1.2.
- `\\(` and `\\)` are literal parentheses. `[x]` has no meaning (kept as text).
- Unbalanced parentheses never fail: they follow ComfyUI's scanner, which keeps the text literally.

The result is a list of (text, weight) segments in prompt order; each segment is tokenized on its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PAREN_FACTOR = 1.1  # weight multiplier of one pair of parentheses

# Escaped parentheses are swapped for control sequences while the parentheses are parsed, so the
# scanner never sees them, and swapped back (as plain parentheses) in the final segments.
_ESCAPED_CLOSE = "\x00\x01"
_ESCAPED_OPEN = "\x00\x02"


@dataclass(frozen=True)
class WeightedSegment:
    text: str
    weight: float


def parse_prompt_weights(prompt: str) -> list[WeightedSegment]:
    """Split `prompt` into weighted segments, exactly as ComfyUI's CLIPTextEncode does."""
    protected = prompt.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)
    return [WeightedSegment(_unescape(text), weight) for text, weight in _weighted_pieces(protected, 1.0)]


def split_top_level_groups(text: str) -> list[str]:
    """Split text into literal runs and top-level `(...)` groups, following ComfyUI's scanner.

    The scanner counts depth without checking balance: a stray ')' drives the depth negative and
    the rest of the text then stays literal; an unclosed '(' leaves a trailing literal piece.
    """
    pieces: list[str] = []
    current = ""
    depth = 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = "("
            else:
                current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted_pieces(text: str, weight: float) -> Iterator[tuple[str, float]]:
    """Depth-first walk of the parenthesis groups, iterative so deep nesting cannot overflow."""
    stack: list[tuple[Iterator[str], float]] = [(iter(split_top_level_groups(text)), weight)]
    while stack:
        pieces, outer_weight = stack[-1]
        piece = next(pieces, None)
        if piece is None:
            stack.pop()
            continue
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, inner_weight = _group_weight(piece[1:-1], outer_weight)
            stack.append((iter(split_top_level_groups(inner)), inner_weight))
        else:
            yield piece, outer_weight


def _group_weight(inner: str, outer_weight: float) -> tuple[str, float]:
    """The text and weight of one `(...)` group: explicit `:w` if it parses, else outer * 1.1."""
    colon = inner.rfind(":")
    if colon > 0:  # a ':' in first position is text, as in ComfyUI
        try:
            explicit = float(inner[colon + 1 :])
        except ValueError:
            return inner, outer_weight * PAREN_FACTOR
        if not math.isfinite(explicit):
            # ComfyUI accepts it as well (the conditioning becomes NaN/inf); keep parity, but say so.
            logger.warning("prompt weight %r is not finite; the conditioning will not be usable", explicit)
        return inner[:colon], explicit
    return inner, outer_weight * PAREN_FACTOR


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")
