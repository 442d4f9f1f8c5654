"""Prompt -> 77-token chunks of (token, weight) pairs, as ComfyUI's SDTokenizer builds them.

Steps (comfy/sd1_clip.py: SDTokenizer.tokenize_with_weights):
1. The prompt is split into weighted segments (prompt_weights.py).
2. Each segment is split before every `embedding:NAME` that starts the segment or follows a space
   or newline; text pieces are tokenized on their own with the tokenizer's start/end tokens
   stripped, an embedding becomes one slot per vector (a tensor in place of a token id). A missing
   embedding is logged and left out; text after the name in the same piece is still tokenized.
3. Token groups (one per piece) are packed into chunks [start] + <=75 slots + [end] + padding to 77.
   A group of >= 8 slots is split across chunks; a shorter group that does not fit moves whole to
   the next chunk, the current one being closed with the end token and padding.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from comfyd.models.prompt_weights import parse_prompt_weights

logger = logging.getLogger(__name__)

TOKENIZER_DIR = Path(__file__).parent / "configs" / "clip_tokenizer"

START_TOKEN = 49406  # <|startoftext|>
END_TOKEN = 49407  # <|endoftext|>
CHUNK_LENGTH = 77
SPLIT_MIN_GROUP = 8  # groups at least this long may be split across chunks
EMBEDDING_PREFIX = "embedding:"
_EMBEDDING_SPLIT = re.compile(r"[ \n]" + re.escape(EMBEDDING_PREFIX))

# One slot of a chunk: a vocabulary id, or an embedding vector [dim] standing in for a token.
TokenSlot = int | torch.Tensor
WeightedSlot = tuple[TokenSlot, float]
Chunk = list[WeightedSlot]
# name -> {"l": [n, 768], "g": [n, 1280], ...} or None when there is no such embedding.
EmbeddingLookup = Callable[[str], "Mapping[str, torch.Tensor] | None"]


@dataclass(frozen=True)
class ChunkLayout:
    """Special tokens and length of the chunks one text encoder takes."""

    pad_token: int = END_TOKEN  # SD1 and SDXL's CLIP-L pad with the end token, OpenCLIP with 0
    start_token: int = START_TOKEN
    end_token: int = END_TOKEN
    length: int = CHUNK_LENGTH

    def empty_chunk(self, length: int | None = None) -> list[int]:
        """The token ids of an empty prompt: [start, end, pad, ...]."""
        total = self.length if length is None else length
        return [self.start_token, self.end_token] + [self.pad_token] * (total - 2)


@lru_cache(maxsize=1)
def shipped_tokenizer() -> Any:
    """The CLIP BPE tokenizer shipped in the package (the one ComfyUI bundles); never downloads."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


# The fast tokenizer's Rust core is not safe to call from several threads at once.
_TOKENIZER_LOCK = threading.Lock()


def tokenize_words(text: str, tokenizer: Any = None) -> list[int]:
    """Token ids of `text` without the start and end tokens."""
    tok = tokenizer if tokenizer is not None else shipped_tokenizer()
    with _TOKENIZER_LOCK:
        ids = tok(text, verbose=False)["input_ids"]
    return list(ids[1:-1])


def tokenize_prompt(
    prompt: str,
    layout: ChunkLayout,
    embedding_key: str,
    embeddings: EmbeddingLookup | None = None,
    tokenizer: Any = None,
) -> list[Chunk]:
    """The chunks of (slot, weight) one text encoder receives for `prompt`.

    `embedding_key` picks the vectors for this encoder from what `embeddings(name)` returns
    ("l", "g", ...). Without an `embeddings` lookup every `embedding:NAME` counts as missing.
    """
    groups = prompt_token_groups(prompt, embedding_key, embeddings, tokenizer)
    return pack_chunks(groups, layout)


def prompt_token_groups(
    prompt: str,
    embedding_key: str,
    embeddings: EmbeddingLookup | None = None,
    tokenizer: Any = None,
) -> list[list[WeightedSlot]]:
    """The token groups of a prompt, in order, each slot carrying its segment's weight."""
    groups: list[list[WeightedSlot]] = []
    for segment in parse_prompt_weights(prompt):
        for piece in _split_embedding_references(segment.text):
            text = piece
            if piece.startswith(EMBEDDING_PREFIX):
                vectors, text = _resolve_embedding(piece, embedding_key, embeddings)
                if vectors is not None:
                    groups.append([(vector, segment.weight) for vector in vectors])
                if not text:
                    continue
            groups.append([(token, segment.weight) for token in tokenize_words(text, tokenizer)])
    return groups


def pack_chunks(groups: list[list[WeightedSlot]], layout: ChunkLayout) -> list[Chunk]:
    """Pack token groups into fixed-length chunks (start + content + end + padding)."""
    room_for_content = layout.length - 1  # a chunk always keeps one slot for its end token
    chunks: list[Chunk] = []
    current: Chunk = [(layout.start_token, 1.0)]
    for group in groups:
        splittable = len(group) >= SPLIT_MIN_GROUP
        remaining = group
        while remaining:
            if len(current) + len(remaining) <= room_for_content:
                current.extend(remaining)
                break
            free = room_for_content - len(current)
            if splittable:
                current.extend(remaining[:free])
                remaining = remaining[free:]
                current.append((layout.end_token, 1.0))
            else:
                current.append((layout.end_token, 1.0))
                current.extend([(layout.pad_token, 1.0)] * free)
            chunks.append(current)
            current = [(layout.start_token, 1.0)]
    current.append((layout.end_token, 1.0))
    current.extend([(layout.pad_token, 1.0)] * (layout.length - len(current)))
    chunks.append(current)
    return chunks


def _split_embedding_references(text: str) -> list[str]:
    """Split before each `embedding:` at the start or after a space/newline (which is dropped)."""
    parts = _EMBEDDING_SPLIT.split(text)
    pieces = [parts[0]] + [EMBEDDING_PREFIX + part for part in parts[1:]]
    return [piece for piece in pieces if piece]


def _resolve_embedding(
    piece: str, embedding_key: str, embeddings: EmbeddingLookup | None
) -> tuple[list[torch.Tensor] | None, str]:
    """The vectors named at the start of `piece` (None if missing) and the text left after the name.

    As ComfyUI: the name is the first whitespace-separated word; if it is not found and ends (or
    starts) with commas, the name without them is tried and the commas stay in the leftover text.
    """
    reference = piece[len(EMBEDDING_PREFIX) :].strip("\n")
    words = reference.split()
    if not words:
        logger.warning("prompt has 'embedding:' without a name; ignoring it")
        return None, ""
    name, leftover = words[0], " ".join(words[1:])
    vectors = _lookup_vectors(name, embedding_key, embeddings)
    if vectors is None:
        stripped = name.strip(",")
        if len(stripped) < len(name):
            vectors = _lookup_vectors(stripped, embedding_key, embeddings)
            leftover = f"{name[len(stripped) :]} {leftover}"
    if vectors is None:
        logger.warning("embedding:%s does not exist, ignoring it", reference)
    return vectors, leftover


def _lookup_vectors(
    name: str, embedding_key: str, embeddings: EmbeddingLookup | None
) -> list[torch.Tensor] | None:
    """The rows of embedding `name` for one encoder: its own key, else the file's first tensor.

    (ComfyUI's load_embed falls back to the first tensor of the file; a vector of the wrong width
    is then dropped when the chunk is encoded.)
    """
    if embeddings is None or not name:
        return None
    try:
        found = embeddings(name)
    except Exception as exc:  # a broken or refused file is skipped like a missing one, as ComfyUI does
        logger.warning("error loading embedding %r, skipping it: %s", name, exc)
        return None
    if not found:
        return None
    tensor = found.get(embedding_key)
    if tensor is None:
        tensor = next(iter(found.values()))
    if tensor.ndim == 0:
        logger.warning("embedding %r holds a scalar, skipping it", name)
        return None
    rows = tensor.reshape(-1, tensor.shape[-1]) if tensor.ndim > 1 else tensor.reshape(1, -1)
    return list(rows.unbind(0))
