"""The unCLIP image-embedding vector against ComfyUI's own numbers (data/unclip_reference.json):
noise augmentation on the squared-cosine schedule, the level embedding, the reseeded generator
per embedding and the merge of several embeddings with the generator's next draw."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from comfyd.sampling.unclip import _schedule, noise_level, unclip_vector

REFERENCE = json.loads((Path(__file__).parent / "data" / "unclip_reference.json").read_text())
PICKS = (0, 1, 383, 767, 768, 769, 1200, 1535)
E1 = torch.linspace(-1, 1, 768)[None]
E2 = (torch.cos(torch.arange(768, dtype=torch.float32) / 7.0) * 2)[None]


def _output(embeds: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(image_embeds=embeds)


def _assert_matches(vector: torch.Tensor, expected: dict) -> None:
    assert list(vector.shape) == expected["shape"]
    v = vector.double()
    assert float(v.sum()) == pytest.approx(expected["sum"], rel=1e-6)
    assert float(v.abs().sum()) == pytest.approx(expected["abs_sum"], rel=1e-6)
    assert [float(v[0, i]) for i in PICKS] == pytest.approx(expected["picks"], rel=1e-5, abs=1e-6)


def test_the_schedule_is_comfyuis() -> None:
    keep, _ = _schedule()
    assert [float(keep[i]) for i in (0, 100, 500, 999)] == pytest.approx(REFERENCE["sqrt_ac"], rel=1e-6)
    assert noise_level(0.1) == 100 and noise_level(0.05) == 50 and noise_level(1.0) == 999


def test_one_image_embedding_matches_comfyui() -> None:
    item = {"unclip_conditioning": [{"clip_vision_output": _output(E1), "strength": 1.0,
                                     "noise_augmentation": 0.1}], "seed": 123}  # fmt: skip
    _assert_matches(unclip_vector(item, (8, 8), width=1536)["class_labels"], REFERENCE["one"])


def test_two_embeddings_merge_with_the_generators_next_draw_as_comfyui() -> None:
    item = {
        "unclip_conditioning": [
            {"clip_vision_output": _output(E1), "strength": 0.8, "noise_augmentation": 0.0},
            {"clip_vision_output": _output(E2), "strength": 0.6, "noise_augmentation": 0.3},
        ],
        "seed": 42,
    }
    _assert_matches(unclip_vector(item, (8, 8), width=1536)["class_labels"], REFERENCE["two"])


def test_the_seed_changes_the_noise_and_an_entry_without_images_gives_zeros() -> None:
    def vector(seed: int) -> torch.Tensor:
        item = {"unclip_conditioning": [{"clip_vision_output": _output(E1), "strength": 1.0,
                                         "noise_augmentation": 0.5}], "seed": seed}  # fmt: skip
        return unclip_vector(item, (8, 8), width=1536)["class_labels"]

    assert torch.equal(vector(1), vector(1))
    assert not torch.equal(vector(1), vector(2))
    zeros = unclip_vector({"pooled_output": None}, (8, 8), width=2048)["class_labels"]
    assert zeros.shape == (1, 2048) and not zeros.any()


def test_an_embedding_of_the_wrong_width_is_refused_with_a_reason() -> None:
    item = {"unclip_conditioning": [{"clip_vision_output": _output(torch.zeros(1, 1024)), "strength": 1.0,
                                     "noise_augmentation": 0.0}]}  # fmt: skip
    with pytest.raises(ValueError, match="768-wide image embeddings; the CLIP vision output has 1024"):
        unclip_vector(item, (8, 8), width=1536)
