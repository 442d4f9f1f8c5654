"""CLIP vision towers: recognising ViT-L/H/G as ComfyUI does, both stored layouts, ComfyUI's
clip_preprocess, and what CLIPVisionEncode hands on (on a small tower; the full-size ViT-L is
held to ComfyUI's renders in tests/fidelity/test_image_prompt_parity.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models import clip_vision
from comfyd.models.clip_vision import ClipVisionFormatError, ClipVisionHandle, preprocess, recognise
from comfyd.models.keymap import to_original
from comfyd.models.loader import materialize
from comfyd.models.tensorfile import TensorFile

MEAN = torch.tensor(clip_vision.CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(clip_vision.CLIP_STD).view(3, 1, 1)


def _header(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(shape, dtype=torch.float16) for k, shape in keys.items()}, str(path))
    return path


def _hf_layers(count: int, width: int = 4, positions: int = 257) -> dict[str, tuple[int, ...]]:
    keys = {clip_vision.HF_LAYER.format(i): (width,) for i in range(count)}
    keys["vision_model.embeddings.position_embedding.weight"] = (positions, width)
    return keys


@pytest.mark.parametrize(
    ("layers", "positions", "kind"),
    [(24, 257, "vit-l"), (24, 577, "vit-l-336"), (32, 257, "vit-h"), (48, 257, "vit-g")],
)
def test_the_tower_is_chosen_by_its_layer_count_as_comfyui_does(
    tmp_path: Path, layers: int, positions: int, kind: str
) -> None:
    with TensorFile(_header(tmp_path / "hf.safetensors", _hf_layers(layers, positions=positions))) as tf:
        assert recognise(tf)[0] == kind
    openclip = {f"visual.transformer.resblocks.{i}.ln_1.weight": (4,) for i in range(layers)}
    openclip |= {"visual.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
                 "visual.ln_pre.weight": (4,), "visual.positional_embedding": (positions, 4)}  # fmt: skip
    with TensorFile(_header(tmp_path / "oc.safetensors", openclip)) as tf:
        assert recognise(tf)[0] == kind


def test_unsupported_files_are_refused_with_what_they_are(tmp_path: Path) -> None:
    cases = {
        "siglip": (_hf_layers(27, width=1152), "SigLIP"),
        "llava": (_hf_layers(24) | {"multi_modal_projector.linear_1.bias": (4,)}, "LLaVA"),
        "small": (_hf_layers(12), "12 layers"),
        "dino": ({"encoder.layer.0.layer_scale1.lambda1": (4,)}, "DINOv2"),
        "text": ({"text_model.encoder.layers.0.layer_norm1.weight": (4,)}, "holds no CLIP vision model"),
    }
    for name, (keys, message) in cases.items():
        with TensorFile(_header(tmp_path / f"{name}.safetensors", keys)) as tf, pytest.raises(
            ClipVisionFormatError, match=message
        ):
            recognise(tf)
    # A checkpoint's tower is looked for under its prefix only.
    with TensorFile(_header(tmp_path / "hf.safetensors", _hf_layers(24))) as tf, pytest.raises(
        ClipVisionFormatError, match="under embedder.model.visual."
    ):
        recognise(tf, "embedder.model.visual.")


def test_preprocess_crops_the_centre_and_squashes_without_crop() -> None:
    image = torch.rand(2, 224, 448, 4)  # the alpha channel is dropped
    centre = preprocess(image, 224, crop=True)
    expected = (torch.clip(255 * image[..., :3].movedim(-1, 1)[:, :, :, 112:336], 0, 255).round() / 255 - MEAN) / STD
    assert centre.shape == (2, 3, 224, 224)
    assert torch.allclose(centre, expected, atol=1e-6)
    squashed = preprocess(image, 224, crop=False)
    resized = torch.nn.functional.interpolate(
        image[..., :3].movedim(-1, 1), size=(224, 224), mode="bicubic", antialias=True
    )
    assert torch.allclose(squashed, (torch.clip(255 * resized, 0, 255).round() / 255 - MEAN) / STD, atol=1e-6)
    # A small picture is enlarged so that its shorter side fills the square.
    assert preprocess(torch.rand(1, 66, 70, 3), 224).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="IMAGE"):
        preprocess(torch.rand(66, 70, 3), 224)


def _small_tower() -> torch.nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              projection_dim=16, image_size=28, patch_size=14, hidden_act="quick_gelu")  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


@pytest.mark.slow  # transformers' first import dominates when run alone
def test_openclip_names_load_into_the_same_tower_and_encode_as_comfyui_reads_it(tmp_path: Path) -> None:
    from accelerate import init_empty_weights

    reference = _small_tower()
    prefix = "embedder.model.visual."
    stored = to_original(reference.state_dict(), clip_vision._OpenClipVisualNames(prefix))
    assert f"{prefix}transformer.resblocks.2.attn.in_proj_weight" in stored and f"{prefix}proj" in stored
    save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp_path / "tower.safetensors"))
    with init_empty_weights():
        empty = type(reference)(reference.config)
    with TensorFile(tmp_path / "tower.safetensors") as tf:
        loaded = materialize(empty, clip_vision._OpenClipVisualNames(prefix), tf, torch.device("cpu"), torch.float32)
    clip_vision.VISION_CONFIGS["test-small"] = {"image_size": 28}
    try:
        handle = ClipVisionHandle("k", "test-small", loaded, torch.device("cpu"), torch.float32)
        image = torch.rand(2, 30, 40, 3)
        out = handle.encode_image(image, crop=True)
    finally:
        del clip_vision.VISION_CONFIGS["test-small"]
    with torch.no_grad():
        direct = reference(pixel_values=preprocess(image, 28), output_hidden_states=True)
        vm = reference.vision_model
        # ComfyUI's fields: the last layer before post_layernorm, the penultimate layer, and the
        # projection of the post-normed class token.
        embeds = reference.visual_projection(vm.post_layernorm(direct.last_hidden_state[:, 0]))
    assert torch.allclose(out.last_hidden_state, direct.last_hidden_state, atol=1e-5)
    assert torch.allclose(out.penultimate_hidden_states, direct.hidden_states[-2], atol=1e-5)
    assert torch.allclose(out.image_embeds, embeds, atol=1e-5)
    assert out["image_embeds"] is out.image_embeds
