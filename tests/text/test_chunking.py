"""Packing token groups into 77-slot chunks, padding per encoder, and embedding slots."""

from __future__ import annotations

import logging

import pytest
import torch

from comfyd.models.clip_tokens import (
    END_TOKEN,
    START_TOKEN,
    ChunkLayout,
    pack_chunks,
    prompt_token_groups,
    tokenize_prompt,
    tokenize_words,
)

SD1 = ChunkLayout(pad_token=END_TOKEN)
OPENCLIP = ChunkLayout(pad_token=0)


def group(n: int, token: int = 1000, weight: float = 1.0) -> list[tuple[int, float]]:
    return [(token + i, weight) for i in range(n)]


def ids(chunk: list) -> list:
    return [slot for slot, _ in chunk]


def test_every_chunk_is_77_slots_with_start_and_end() -> None:
    chunks = pack_chunks([group(200)], SD1)
    assert [len(c) for c in chunks] == [77, 77, 77]
    for chunk in chunks:
        assert chunk[0] == (START_TOKEN, 1.0)
        assert END_TOKEN in ids(chunk)


def test_long_group_is_split_75_per_chunk() -> None:
    chunks = pack_chunks([group(160)], SD1)
    assert ids(chunks[0])[1:76] == list(range(1000, 1075))
    assert ids(chunks[0])[76] == END_TOKEN
    assert ids(chunks[1])[1:76] == list(range(1075, 1150))
    assert ids(chunks[2])[1:11] == list(range(1150, 1160))
    assert ids(chunks[2])[11:] == [END_TOKEN] * 66


def test_short_group_that_does_not_fit_moves_whole_to_next_chunk() -> None:
    # 70 tokens, then a 7-token group: 70 + 7 > 75, and 7 < 8 so it is not split.
    chunks = pack_chunks([group(70), group(7, token=5000)], SD1)
    assert len(chunks) == 2
    assert ids(chunks[0])[71:] == [END_TOKEN] * 6  # end token, then padding
    assert ids(chunks[1])[1:8] == list(range(5000, 5007))


def test_group_of_eight_is_split_at_the_boundary() -> None:
    chunks = pack_chunks([group(70), group(8, token=5000)], SD1)
    assert ids(chunks[0])[71:76] == list(range(5000, 5005))
    assert ids(chunks[0])[76] == END_TOKEN
    assert ids(chunks[1])[1:4] == list(range(5005, 5008))


def test_exactly_75_tokens_fill_one_chunk() -> None:
    chunks = pack_chunks([group(75)], SD1)
    assert len(chunks) == 1
    assert ids(chunks[0])[-1] == END_TOKEN


def test_openclip_layout_pads_with_zero_after_the_end_token() -> None:
    chunk = tokenize_prompt("a cat", OPENCLIP, embedding_key="g")[0]
    body = tokenize_words("a cat")
    assert ids(chunk) == [START_TOKEN, *body, END_TOKEN] + [0] * (77 - 2 - len(body))
    assert OPENCLIP.empty_chunk() == [START_TOKEN, END_TOKEN] + [0] * 75
    assert SD1.empty_chunk() == [START_TOKEN] + [END_TOKEN] * 76


def test_weights_travel_with_their_tokens_across_a_split() -> None:
    prompt = "(" + " ".join(["cat"] * 80) + ":1.3) dog"
    chunks = tokenize_prompt(prompt, SD1, embedding_key="l")
    assert len(chunks) == 2
    cat, dog = tokenize_words("cat")[0], tokenize_words("dog")[0]
    assert chunks[0][1:76] == [(cat, 1.3)] * 75
    assert chunks[1][1:7] == [(cat, 1.3)] * 5 + [(dog, 1.0)]
    # start, end and padding always carry weight 1
    assert all(w == 1.0 for slot, w in chunks[1] if slot in (START_TOKEN, END_TOKEN))


def test_each_segment_is_tokenized_on_its_own() -> None:
    # "(blue)sky" gives two segments, so "blue" and "sky" never merge into one BPE word
    groups = prompt_token_groups("(blue)sky", embedding_key="l")
    assert [[t for t, _ in g] for g in groups] == [tokenize_words("blue"), tokenize_words("sky")]


class FakeEmbeddings:
    def __init__(self, table: dict[str, dict[str, torch.Tensor]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, name: str) -> dict[str, torch.Tensor] | None:
        self.asked.append(name)
        return self.table.get(name)


def test_embedding_vectors_take_one_slot_each_with_the_segment_weight() -> None:
    vectors = torch.randn(3, 32)
    lookup = FakeEmbeddings({"style": {"l": vectors}})
    chunk = tokenize_prompt("a (embedding:style:1.2) cat", SD1, "l", embeddings=lookup)[0]
    a, cat = tokenize_words("a")[0], tokenize_words("cat")[0]
    assert chunk[1] == (a, 1.0)
    for index in range(3):
        slot, weight = chunk[2 + index]
        assert torch.equal(slot, vectors[index]) and weight == 1.2
    assert chunk[5] == (cat, 1.0)
    assert chunk[6] == (END_TOKEN, 1.0)


def test_embedding_reference_needs_start_space_or_newline() -> None:
    lookup = FakeEmbeddings({"x": {"l": torch.ones(1, 32)}})
    for prompt in ("embedding:x", "a embedding:x", "a\nembedding:x"):
        groups = prompt_token_groups(prompt, "l", embeddings=lookup)
        assert any(isinstance(slot, torch.Tensor) for g in groups for slot, _ in g), prompt
    groups = prompt_token_groups("a,embedding:x", "l", embeddings=lookup)
    assert not any(isinstance(slot, torch.Tensor) for g in groups for slot, _ in g)


def test_text_after_the_embedding_name_is_still_tokenized() -> None:
    lookup = FakeEmbeddings({"x": {"l": torch.ones(2, 32)}})
    groups = prompt_token_groups("embedding:x red cat", "l", embeddings=lookup)
    assert len(groups) == 2 and len(groups[0]) == 2
    assert [t for t, _ in groups[1]] == tokenize_words("red cat")


def test_trailing_comma_is_stripped_from_the_name_and_kept_as_text() -> None:
    lookup = FakeEmbeddings({"x": {"l": torch.ones(1, 32)}})
    groups = prompt_token_groups("embedding:x, red", "l", embeddings=lookup)
    assert lookup.asked == ["x,", "x"]
    assert len(groups[0]) == 1 and isinstance(groups[0][0][0], torch.Tensor)
    assert [t for t, _ in groups[1]] == tokenize_words(", red")


def test_missing_embedding_is_logged_and_left_out(caplog: pytest.LogCaptureFixture) -> None:
    lookup = FakeEmbeddings({})
    with caplog.at_level(logging.WARNING):
        chunk = tokenize_prompt("a embedding:nothere cat", SD1, "l", embeddings=lookup)[0]
    assert "nothere" in caplog.text
    assert ids(chunk)[:4] == [START_TOKEN, *tokenize_words("a"), *tokenize_words("cat"), END_TOKEN]


def test_without_lookup_embedding_references_count_as_missing() -> None:
    chunk = tokenize_prompt("embedding:foo cat", SD1, "l", embeddings=None)[0]
    assert ids(chunk)[:3] == [START_TOKEN, *tokenize_words("cat"), END_TOKEN]


def test_lookup_errors_are_skipped_like_missing_files(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str) -> None:
        raise OSError("corrupt file")

    with caplog.at_level(logging.WARNING):
        chunk = tokenize_prompt("embedding:bad", SD1, "l", embeddings=broken)[0]
    assert "corrupt file" in caplog.text
    assert ids(chunk)[:2] == [START_TOKEN, END_TOKEN]


def test_bare_embedding_prefix_does_not_crash() -> None:
    chunk = tokenize_prompt("cat embedding:", SD1, "l", embeddings=FakeEmbeddings({}))[0]
    assert ids(chunk)[:3] == [START_TOKEN, *tokenize_words("cat"), END_TOKEN]


def test_encoder_key_selects_vectors_and_falls_back_to_the_first_tensor() -> None:
    l_vec, g_vec = torch.zeros(1, 32), torch.ones(1, 48)
    both = FakeEmbeddings({"x": {"l": l_vec, "g": g_vec}})
    assert torch.equal(prompt_token_groups("embedding:x", "g", embeddings=both)[0][0][0], g_vec[0])
    only_l = FakeEmbeddings({"x": {"l": l_vec}})
    assert torch.equal(prompt_token_groups("embedding:x", "g", embeddings=only_l)[0][0][0], l_vec[0])


def test_long_embedding_is_split_across_chunks_like_a_long_word() -> None:
    lookup = FakeEmbeddings({"big": {"l": torch.randn(10, 32)}})
    chunks = tokenize_prompt(" ".join(["cat"] * 70) + " embedding:big", SD1, "l", embeddings=lookup)
    in_first = sum(isinstance(slot, torch.Tensor) for slot, _ in chunks[0])
    in_second = sum(isinstance(slot, torch.Tensor) for slot, _ in chunks[1])
    assert (in_first, in_second) == (5, 5)
