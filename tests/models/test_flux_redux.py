"""Flux Redux: SigLIP towers recognised and encoded as ComfyUI reads them, the Redux encoder's
tokens, and StyleModelApply appending them to a Flux prompt. The whole path (full-size random
SigLIP-384 + Redux + a cut Flux transformer) is held to ComfyUI by
`bench/flux_comfyui_parity.py --variant redux` (tests/fidelity/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models import clip_vision
from comfyd.models.clip_vision import ClipVisionHandle, ClipVisionOutput, preprocess, recognise
from comfyd.models.style_model import ReduxEncoder, StyleModelFormatError, StyleModelHandle, load_style_model
from comfyd.models.tensorfile import TensorFile
from comfyd.nodes.conditioning.style_model import StyleModelApply


def _header(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in keys.items()}, str(path))
    return path


@pytest.mark.parametrize(("positions", "kind"), [(729, "siglip-384"), (1024, "siglip-512")])
def test_siglip_towers_are_told_apart_by_their_position_table(tmp_path: Path, positions: int, kind: str) -> None:
    keys = {clip_vision.HF_LAYER.format(i): (1152,) for i in range(27)}
    keys["vision_model.embeddings.position_embedding.weight"] = (positions, 4)
    with TensorFile(_header(tmp_path / "siglip.safetensors", keys)) as tf:
        assert recognise(tf)[0] == kind


@pytest.mark.slow  # transformers' first import dominates when run alone
def test_a_small_siglip_tower_loads_and_encodes_as_comfyui_reads_it(tmp_path: Path) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = dict(clip_vision.VISION_CONFIGS["siglip-384"], hidden_size=32, intermediate_size=64,
                  num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=14)  # fmt: skip
    torch.manual_seed(0)
    tower = SiglipVisionModel(SiglipVisionConfig(**config)).eval()
    # Stored as ComfyUI's files store it: transformers names under `vision_model.`.
    save_file({"vision_model." + k: v.contiguous() for k, v in tower.state_dict().items()},
              str(tmp_path / "siglip.safetensors"))  # fmt: skip
    clip_vision.VISION_CONFIGS["siglip-test"] = config
    try:
        with TensorFile(tmp_path / "siglip.safetensors") as tf:
            loaded = clip_vision.build(tf, "siglip-test", clip_vision._HfNames("vision_model."), torch.device("cpu"),
                                       torch.float32, None)  # fmt: skip
        handle = ClipVisionHandle("k", "siglip-test", loaded, torch.device("cpu"), torch.float32)
        image = torch.rand(1, 30, 40, 3)
        out = handle.encode_image(image, crop=True)
    finally:
        del clip_vision.VISION_CONFIGS["siglip-test"]
    pixels = preprocess(image, 28, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        direct = tower(pixel_values=pixels, output_hidden_states=True)
    # ComfyUI: no class token; the last layer after post_layernorm; image_embeds the same sequence.
    assert out.last_hidden_state.shape == (1, 4, 32)
    assert torch.allclose(out.last_hidden_state, direct.last_hidden_state, atol=1e-6)
    assert torch.allclose(out.penultimate_hidden_states, direct.hidden_states[-2], atol=1e-6)
    assert torch.equal(out.image_embeds, out.last_hidden_state)
    assert tower.post_layernorm.eps == 1e-5  # ComfyUI's LayerNorm default, not SigLIP's 1e-6


def test_redux_tokens_extend_a_flux_prompt(tmp_path: Path) -> None:
    # A narrow context keeps it cheap (the real 4096-wide encoder is loaded by the Redux bench).
    torch.manual_seed(1)
    encoder = ReduxEncoder(context=16).eval()
    redux = StyleModelHandle("k", encoder)
    hidden = torch.randn(1, 5, 1152)
    output = ClipVisionOutput(hidden, hidden, hidden)
    with torch.no_grad():
        expected = encoder.redux_down(torch.nn.functional.silu(encoder.redux_up(hidden)))
    assert torch.allclose(redux.tokens(output), expected, atol=1e-6)
    text = torch.randn(1, 256, 16)
    (out,) = StyleModelApply().run(None, [[text, {"pooled_output": torch.zeros(1, 768)}]], redux, output, 0.5,
                                   "multiply")  # type: ignore[arg-type]  # fmt: skip
    assert out[0][0].shape == (1, 261, 16) and torch.equal(out[0][0][:, :256], text)
    assert torch.allclose(out[0][0][:, 256:], 0.5 * expected, atol=1e-6)
    with pytest.raises(ValueError, match="SigLIP vision output"):
        redux.tokens(ClipVisionOutput(torch.zeros(1, 257, 1024), torch.zeros(1), torch.zeros(1)))
    save_file({"redux_down.weight": torch.zeros(2, 2)}, str(tmp_path / "partial.safetensors"))
    with TensorFile(tmp_path / "partial.safetensors") as tf, pytest.raises(StyleModelFormatError, match="Flux Redux"):
        load_style_model(tf, "k")
