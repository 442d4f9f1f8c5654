"""Every entry of ComfyUI's tokenization reference, token for token and weight for weight.

data/tokenization_reference.json is a copy of ../shared/reference/tokenization_reference.json
(captured from ComfyUI), kept beside the test so the repository is self-contained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyd.models.clip_tokens import ChunkLayout, tokenize_prompt

REFERENCE = Path(__file__).parent / "data" / "tokenization_reference.json"
ENTRIES = json.loads(REFERENCE.read_text())


def test_reference_has_all_cases() -> None:
    assert {"default_pos", "default_neg", "empty", "weighted", "nested", "long_100_words"} <= set(ENTRIES)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_sd1_tokenization_matches_comfyui(name: str) -> None:
    entry = ENTRIES[name]
    chunks = tokenize_prompt(entry["text"], ChunkLayout(), embedding_key="l")
    got = [[[token, weight] for token, weight in chunk] for chunk in chunks]
    # list equality compares floats exactly: 1.1 * 1.1 must be 1.2100000000000002, as in ComfyUI.
    assert got == entry["chunks"]
