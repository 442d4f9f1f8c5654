"""ImageScale, ImageScaleBy, ImageInvert and ComfyUI's common_upscale rules."""

from __future__ import annotations

import pytest
import torch

from comfyd.engine.schema import REGISTRY
from comfyd.nodes.image.transform import ImageInvert, ImageScale, ImageScaleBy, common_upscale


def column_image(height: int = 8, width: int = 16) -> torch.Tensor:
    """NHWC image whose red channel holds the column index / 255 (to see which columns survive)."""
    cols = torch.arange(width, dtype=torch.float32).expand(height, width) / 255.0
    return torch.stack([cols, cols.flip(-1), torch.zeros_like(cols)], dim=-1)[None]


def test_invert(make_ctx) -> None:
    image = torch.rand(2, 3, 4, 3, generator=torch.Generator().manual_seed(0))
    (inverted,) = ImageInvert().run(make_ctx("ImageInvert"), image=image)
    torch.testing.assert_close(inverted, 1.0 - image)


def test_scale_zero_side_keeps_aspect(make_ctx) -> None:
    image = column_image(8, 16)
    (out,) = ImageScale().run(
        make_ctx(), image=image, upscale_method="bilinear", width=0, height=4, crop="disabled"
    )
    assert out.shape == (1, 4, 8, 3)
    (out,) = ImageScale().run(
        make_ctx(), image=image, upscale_method="bilinear", width=32, height=0, crop="disabled"
    )
    assert out.shape == (1, 16, 32, 3)
    (same,) = ImageScale().run(
        make_ctx(), image=image, upscale_method="bilinear", width=0, height=0, crop="disabled"
    )
    assert same is image


def test_center_crop_keeps_middle_columns(make_ctx) -> None:
    image = column_image(8, 16)
    (out,) = ImageScale().run(
        make_ctx(), image=image, upscale_method="nearest-exact", width=8, height=8, crop="center"
    )
    assert out.shape == (1, 8, 8, 3)
    torch.testing.assert_close(out, image[:, :, 4:12])
    (plain,) = ImageScale().run(
        make_ctx(), image=image, upscale_method="nearest-exact", width=8, height=8, crop="disabled"
    )
    assert not torch.equal(plain, out)


def test_area_downscale_is_block_mean() -> None:
    samples = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = common_upscale(samples, 4, 4, "area", "disabled")
    expected = samples.reshape(1, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out, expected)


def test_lanczos_goes_through_8_bit() -> None:
    samples = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    out = common_upscale(samples, 9, 12, "lanczos", "disabled")
    assert out.shape == (2, 3, 12, 9) and out.dtype == torch.float32
    torch.testing.assert_close(out * 255, (out * 255).round(), atol=1e-4, rtol=0)


def test_scale_by(make_ctx) -> None:
    image = torch.rand(1, 10, 6, 3, generator=torch.Generator().manual_seed(3))
    (out,) = ImageScaleBy().run(make_ctx(), image=image, upscale_method="bicubic", scale_by=1.5)
    assert out.shape == (1, 15, 9, 3)
    (out,) = ImageScaleBy().run(make_ctx(), image=image, upscale_method="nearest-exact", scale_by=1.0)
    torch.testing.assert_close(out, image)


def test_unknown_method_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown upscale_method 'bislerp'"):
        common_upscale(torch.zeros(1, 3, 4, 4), 2, 2, "bislerp", "disabled")
    with pytest.raises(ValueError, match="unknown crop"):
        common_upscale(torch.zeros(1, 3, 4, 4), 2, 2, "area", "edges")


def test_schemas_match_comfyui() -> None:
    scale = REGISTRY.get("ImageScale").schema.object_info()
    required = scale["input"]["required"]
    assert list(required) == ["image", "upscale_method", "width", "height", "crop"]
    assert required["upscale_method"][0] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert required["crop"][0] == ["disabled", "center"]
    assert required["width"][1] == {"default": 512, "min": 0, "max": 16384, "step": 1}
    assert scale["category"] == "image/upscaling"
    by = REGISTRY.get("ImageScaleBy").schema.object_info()["input"]["required"]["scale_by"][1]
    assert by == {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}
    assert REGISTRY.get("ImageInvert").schema.category == "image"
