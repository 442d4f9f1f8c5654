"""The original <-> diffusers key tables agree with diffusers' own single-file converters."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders import single_file_utils

from comfyd.models import detect
from comfyd.models.loader import empty_text_encoder
from comfyd.models.tiny import original_state, random_weights, tiny_configs

from .conftest import FAMILIES


def _assert_same(converted: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(expected) <= set(converted)
    for key, tensor in expected.items():
        assert converted[key].shape == tensor.shape and torch.equal(converted[key], tensor), key


@pytest.mark.parametrize("family", FAMILIES)
def test_original_layout_round_trips_through_diffusers_converters(family: str) -> None:
    configs = tiny_configs(family)
    prediction = detect.family_manifest(family)["prediction"]
    weights = random_weights(configs, seed=5, prediction=prediction)
    original = original_state(configs, weights)
    # The original VAE attention is built from 1x1 convs: 4-D weights, 1-D biases.
    width = configs.vae["block_out_channels"][-1]
    assert original["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (width, width, 1, 1)
    assert original["first_stage_model.decoder.mid.attn_1.proj_out.bias"].shape == (width,)
    _assert_same(
        single_file_utils.convert_ldm_unet_checkpoint(dict(original), dict(configs.unet)), weights["unet"]
    )
    _assert_same(
        single_file_utils.convert_ldm_vae_checkpoint(dict(original), dict(configs.vae)), weights["vae"]
    )
    for name, config in configs.encoders.items():
        prefix = detect.ENCODER_PREFIXES[family][name]
        if name == "l":
            converted = {k[len(prefix) :]: v for k, v in original.items() if k.startswith(prefix)}
        else:
            model = empty_text_encoder(config)
            converted = single_file_utils.convert_open_clip_checkpoint(model, dict(original), prefix=prefix)
        expected = dict(weights[name])
        if family == "sd2":
            # diffusers drops SD2's text projection (its SD2 pipelines do not use it); OpenCLIP
            # stores it as [width, projection], the transpose of the Linear weight.
            projection = expected.pop("text_projection.weight")
            assert torch.equal(original[prefix + "text_projection"], projection.t())
        _assert_same(converted, expected)
