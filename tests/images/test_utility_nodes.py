"""Image, mask, latent and value nodes: rules and edge cases beside the ComfyUI renders in
tests/fidelity (which hold the pixels to ComfyUI's)."""

from __future__ import annotations

import pytest
import torch

import comfyd.nodes  # noqa: F401  (registers every node)
from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.graph import parse_workflow
from comfyd.engine.schema import REGISTRY
from comfyd.engine.validate import validate_workflow
from comfyd.models.vae_codec import vae_decode, vae_encode
from comfyd.models.vae_tiled import tiled_apply, vae_decode_tiled, vae_encode_tiled
from comfyd.nodes.image.batch import EmptyImage
from comfyd.nodes.image.canny import Canny
from comfyd.nodes.image.compositing import composite
from comfyd.nodes.image.geometry import GetImageSize, ImageCrop
from comfyd.nodes.image.outpaint import feather_weights
from comfyd.nodes.latent.transform import LatentBatch, LatentCrop
from comfyd.nodes.mask.composite import combine
from comfyd.nodes.mask.convert import ImageToMask
from comfyd.nodes.mask.morphology import feather, grow
from comfyd.nodes.utils.strings import StringConcatenate


def test_empty_image_colour_and_size(make_ctx) -> None:
    (image,) = EmptyImage().run(make_ctx(), width=5, height=3, batch_size=2, color=0xFF8000)
    assert image.shape == (2, 3, 5, 3)
    assert image[0, 0, 0].tolist() == [1.0, pytest.approx(128 / 255), 0.0]


def test_get_image_size_and_crop_keep_a_pixel(make_ctx) -> None:
    image = torch.rand(2, 6, 9, 3)
    assert GetImageSize().run(make_ctx(), image=image) == (9, 6, 2)
    (cropped,) = ImageCrop().run(make_ctx(), image=image, width=50, height=50, x=100, y=100)
    assert cropped.shape == (2, 1, 1, 3)  # the corner is clamped inside the picture


def test_composite_clips_the_source_at_the_border() -> None:
    destination = torch.zeros(1, 1, 4, 4)
    source = torch.ones(1, 1, 3, 3)
    out = composite(destination.clone(), source, 2, 3, multiplier=1)
    assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]


def test_outpaint_feathering_is_quadratic_toward_padded_sides() -> None:
    weights = feather_weights(10, 10, (4, 0, 0, 0), 4)  # padded on the left only
    assert weights[5, :5].tolist() == pytest.approx([1.0, (3 / 4) ** 2, (2 / 4) ** 2, (1 / 4) ** 2, 0.0])
    assert weights[:, 9].eq(0).all()
    assert feather_weights(6, 6, (8, 8, 8, 8), 4).eq(0).all()  # too small to feather: no ramp


def test_mask_composite_outside_the_destination_changes_nothing() -> None:
    destination = torch.full((1, 4, 4), 0.5)
    assert torch.equal(combine(destination, torch.ones(1, 2, 2), 10, 10, "add"), destination)
    with pytest.raises(ValueError, match="unknown operation"):
        combine(destination, torch.ones(1, 2, 2), 0, 0, "nand")


def test_grow_and_feather_masks() -> None:
    mask = torch.zeros(1, 5, 5)
    mask[0, 2, 2] = 1.0
    assert grow(mask, 1, tapered_corners=True).sum() == 5  # a cross
    assert grow(mask, 1, tapered_corners=False).sum() == 9  # a square
    assert grow(grow(mask, 1, False), -1, False).sum() == 1
    ramp = feather(torch.ones(1, 1, 4), left=4, top=0, right=0, bottom=0)
    assert ramp[0, 0].tolist() == [0.25, 0.5, 0.75, 1.0]


def test_image_to_mask_refuses_a_missing_channel(make_ctx) -> None:
    with pytest.raises(ValueError, match="no alpha channel"):
        ImageToMask().run(make_ctx(), image=torch.rand(1, 2, 2, 3), channel="alpha")


def test_canny_refuses_inverted_thresholds(make_ctx) -> None:
    with pytest.raises(ValueError, match="above high_threshold"):
        Canny().run(make_ctx(), image=torch.rand(1, 8, 8, 3), low_threshold=0.9, high_threshold=0.2)


def test_latent_crop_and_batch(make_ctx) -> None:
    latent = {"samples": torch.arange(2 * 4 * 6 * 6, dtype=torch.float32).reshape(2, 4, 6, 6)}
    (cropped,) = LatentCrop().run(make_ctx(), samples=latent, width=64, height=64, x=16, y=16)
    assert cropped["samples"].shape == (2, 4, 6, 6)  # smaller than 64 pixels: never a negative corner
    other = {"samples": torch.zeros(1, 4, 3, 3), "batch_index": [7]}
    (joined,) = LatentBatch().run(make_ctx(), samples1=latent, samples2=other)
    assert joined["samples"].shape == (3, 4, 6, 6)
    assert joined["batch_index"] == [0, 1, 7]


def test_string_concatenate(make_ctx) -> None:
    assert StringConcatenate().run(make_ctx(), string_a="a", string_b="b", delimiter=", ") == ("a, b",)


def test_tiles_need_room_beyond_the_overlap() -> None:
    with pytest.raises(ValueError, match="larger than the overlap"):
        tiled_apply(torch.zeros(1, 3, 16, 16), lambda x: x, (4, 8), 4, 1.0, 3)


def test_one_tile_equals_the_plain_vae(tiny_vae) -> None:
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(vae_decode_tiled(tiny_vae, latents, 64, 8), vae_decode(tiny_vae, latents))
    pixels = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(vae_encode_tiled(tiny_vae, pixels, 512, 64), vae_encode(tiny_vae, pixels))


def test_combo_with_options_declares_and_validates_like_comfyui(tmp_path) -> None:
    info = REGISTRY.object_info()["ImageBlend"]["input"]["required"]["blend_mode"]
    assert info == ["COMBO", {"multiselect": False, "options": [
        "normal", "multiply", "screen", "overlay", "soft_light", "difference"]}]
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlend", "inputs": {"image1": ["1", 0], "image2": ["1", 0], "blend_factor": 0.5,
                                                     "blend_mode": "burn"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(WorkflowValidationError) as info_:
        validate_workflow(parse_workflow(workflow), REGISTRY, None)
    [error] = info_.value.body["node_errors"]["2"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "blend_mode: 'burn' not in ['normal', 'multiply', 'screen', 'overlay', " \
        "'soft_light', 'difference']"
    assert error["extra_info"]["input_config"] == info
