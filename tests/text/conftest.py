"""Tiny random CLIP text encoders (transformers) wrapped in ClipHandles, built once per session."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from comfyd.models.handles import ClipHandle

VOCAB = 49408
POSITIONS = 77


def tiny_text_model(
    seed: int, hidden: int = 32, layers: int = 3, act: str = "quick_gelu", projection: int | None = None
) -> torch.nn.Module:
    config = CLIPTextConfig(
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        hidden_size=hidden,
        intermediate_size=hidden * 2 + 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        hidden_act=act,
        projection_dim=projection or hidden,
        eos_token_id=49407,
        bos_token_id=49406,
        pad_token_id=1,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    # transformers' init leaves layer norms at identity and biases at 0: randomise them so a
    # missing or misplaced norm/bias shows up in the comparisons.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn_like(param))
    return model.eval()


def make_handle(
    family: str, encoders: dict[str, torch.nn.Module], layer_idx: int | None = None
) -> ClipHandle:
    return ClipHandle(
        key=f"tiny-{family}",
        family=family,
        tokenizers={},
        text_encoders=encoders,
        device=torch.device("cpu"),
        dtype=torch.float32,
        layer_idx=layer_idx,
    )


@pytest.fixture(scope="session")
def sd1_model() -> torch.nn.Module:
    return tiny_text_model(seed=1)


@pytest.fixture(scope="session")
def sd1_clip(sd1_model: torch.nn.Module) -> ClipHandle:
    return make_handle("sd1", {"l": sd1_model})


@pytest.fixture(scope="session")
def sd2_clip() -> ClipHandle:
    return make_handle("sd2", {"h": tiny_text_model(seed=2, hidden=40, layers=3, act="gelu")})


@pytest.fixture(scope="session")
def sdxl_clip() -> ClipHandle:
    clip_l = tiny_text_model(seed=3, hidden=32, layers=3)
    clip_g = tiny_text_model(seed=4, hidden=48, layers=3, act="gelu", projection=40)
    return make_handle("sdxl", {"l": clip_l, "g": clip_g})


@pytest.fixture(scope="session")
def clip_factory() -> object:
    """make_handle, for tests that wrap their own encoders."""
    return make_handle
