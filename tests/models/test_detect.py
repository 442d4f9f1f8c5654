"""Architecture detection from keys and shapes, for real full-size layouts and the tiny ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models import detect
from comfyd.models.detect import UnknownCheckpointLayout, detect_checkpoint
from comfyd.models.keymap import to_original, unet_translator, vae_translator
from comfyd.models.loader import empty_text_encoder, empty_unet, empty_vae
from comfyd.models.tensorfile import TensorFile
from comfyd.models.tiny import (
    encoder_translators,
    full_configs,
    make_tiny_checkpoint,
    original_state,
    random_weights,
    tiny_configs,
)

from .conftest import FAMILIES, single_name

ARCHITECTURE_KEYS = (
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "cross_attention_dim",
    "attention_head_dim",
    "use_linear_projection",
    "in_channels",
    "out_channels",
)


def _detect(path: Path) -> detect.CheckpointInfo:
    with TensorFile(path) as tf:
        return detect_checkpoint(tf)


def _full_size_shapes(family: str) -> dict[str, tuple[int, ...]]:
    """Original-layout key -> shape of the real architecture, built on the meta device (no memory)."""
    configs = full_configs(family)
    shapes: dict[str, tuple[int, ...]] = {}
    parts = [
        (empty_unet(configs.unet).state_dict(), unet_translator(configs.unet)),
        (empty_vae(configs.vae).state_dict(), vae_translator(configs.vae)),
    ]
    translators = encoder_translators(family, configs.encoders)
    for name, config in configs.encoders.items():
        parts.append((empty_text_encoder(config).state_dict(), translators[name]))
    for state, translator in parts:
        shapes.update({k: tuple(v.shape) for k, v in to_original(state, translator).items()})
    return shapes


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_layout_detects_back_to_the_shipped_configs(family: str) -> None:
    shapes = _full_size_shapes(family)
    configs = full_configs(family)
    encoders = {}
    for name, spec in detect.family_manifest(family)["encoders"].items():
        prefix = detect.ENCODER_PREFIXES[family][name]
        base = detect.shipped_config(family, spec["config"])
        if spec["layout"] == "hf":
            encoders[name] = detect.infer_hf_clip_config(shapes, prefix + "text_model.", base)
        else:
            encoders[name] = detect.infer_openclip_config(shapes, prefix, base)
    pooled = encoders["g"]["projection_dim"] if family == "sdxl" else None
    unet = detect.infer_unet_config(shapes, "model.diffusion_model.", family, configs.unet, pooled)
    for key in ARCHITECTURE_KEYS:
        expected = configs.unet[key]
        got = unet[key]
        if isinstance(expected, int) and isinstance(got, list):
            expected = [expected] * len(got)
        assert got == expected, key
    # SDXL's depths [1, 2, 10] and its 2816-wide size/crop embedding come back from the shapes.
    if family == "sdxl":
        assert unet["transformer_layers_per_block"] == [1, 2, 10]
        assert (
            unet["addition_time_embed_dim"] == 256 and unet["projection_class_embeddings_input_dim"] == 2816
        )
    vae = detect.infer_vae_config(shapes, "first_stage_model.", configs.vae)
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["layers_per_block"] == 2
    for name, config in encoders.items():
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        ):
            assert config[key] == configs.encoders[name][key], (name, key)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoints_detect_family_prediction_and_configs(models_root: Path, family: str) -> None:
    info = _detect(models_root / "checkpoints" / single_name(family))
    expected = tiny_configs(family)
    assert info.family == family
    assert info.prediction == ("v" if family == "sd2" else "eps")
    assert info.latent_scale == (0.13025 if family == "sdxl" else 0.18215)
    assert set(info.encoders) == set(expected.encoders)
    for key in ARCHITECTURE_KEYS:
        assert info.unet_config[key] == expected.unet[key], key
    assert info.vae_config["block_out_channels"] == expected.vae["block_out_channels"]


def test_sd2_prediction_follows_comfyuis_statistic(tmp_path: Path) -> None:
    eps = make_tiny_checkpoint(tmp_path, "sd2", "single", seed=3, prediction="eps")
    info = _detect(eps)
    assert info.prediction == "eps" and "<= 0.09" in info.prediction_rule


def test_v_pred_marker_key_means_v_prediction(tmp_path: Path) -> None:
    configs = tiny_configs("sdxl")
    state = original_state(configs, random_weights(configs, 0, "eps"))
    state["v_pred"] = torch.tensor([])
    save_file(state, str(tmp_path / "vpred.safetensors"))
    assert _detect(tmp_path / "vpred.safetensors").prediction == "v"


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    save_file(tensors, str(path))
    return path


def test_unknown_layout_error_lists_what_was_found(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "odd.safetensors", {"blocks.0.weight": torch.zeros(2), "blocks.1.weight": torch.zeros(2)}
    )
    with pytest.raises(UnknownCheckpointLayout) as info:
        _detect(path)
    message = str(info.value)
    assert (
        "odd.safetensors" in message and "blocks.0 (1 keys)" in message and "model.diffusion_model" in message
    )


def test_lora_given_as_checkpoint_gets_a_pointed_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "style.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(2, 2)})
    with pytest.raises(UnknownCheckpointLayout, match="looks like a LoRA"):
        _detect(path)


def test_unet_without_text_encoder_is_refused(tmp_path: Path) -> None:
    configs = tiny_configs("sd1")
    state = original_state(configs, random_weights(configs, 0, "eps"))
    state = {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}
    with pytest.raises(UnknownCheckpointLayout, match="no text encoder"):
        _detect(_write(tmp_path / "unet_only.safetensors", state))


def test_sdxl_refiner_is_named_and_refused(tmp_path: Path) -> None:
    configs = tiny_configs("sdxl")
    state = original_state(configs, random_weights(configs, 0, "eps"))
    state = {
        k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
        for k, v in state.items()
        if not k.startswith("conditioner.embedders.0.")
    }
    with pytest.raises(UnknownCheckpointLayout, match="refiner"):
        _detect(_write(tmp_path / "refiner.safetensors", state))
