"""vae_decode / vae_encode and the VAE nodes on a tiny random AutoencoderKL."""

from __future__ import annotations

import pytest
import torch

from comfyd.models import vae_codec
from comfyd.models.handles import VaeHandle
from comfyd.models.vae_codec import crop_to_multiple, vae_decode, vae_encode
from comfyd.nodes.latent.vae import VAEDecode, VAEEncode, VAEEncodeForInpaint, grey_out_masked


def test_decode_shape_range_and_matches_diffusers(tiny_vae: VaeHandle) -> None:
    latents = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1)) * 0.3
    images = vae_decode(tiny_vae, latents)
    assert images.shape == (2, 24, 40, 3)
    assert images.dtype == torch.float32 and images.device.type == "cpu"
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    with torch.no_grad():
        raw = tiny_vae.vae.decode(latents).sample
    expected = torch.clamp((raw + 1) / 2, 0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(images, expected)


def test_decode_in_chunks_equals_one_batch(tiny_vae: VaeHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    latents = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(2))
    whole = vae_decode(tiny_vae, latents)
    calls: list[int] = []
    decoder = tiny_vae.vae.decoder
    original_forward = decoder.forward

    def counting_forward(z: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(z.shape[0])
        return original_forward(z, *args, **kwargs)

    monkeypatch.setattr(vae_codec, "_free_memory_bytes", lambda device: 1)
    monkeypatch.setattr(decoder, "forward", counting_forward)
    chunked = vae_decode(tiny_vae, latents)
    assert calls == [1, 1, 1]
    torch.testing.assert_close(chunked, whole)


def test_decode_refuses_wrong_channels(tiny_vae: VaeHandle) -> None:
    with pytest.raises(ValueError, match="4 latent channels, got 16"):
        vae_decode(tiny_vae, torch.zeros(1, 16, 2, 2))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        vae_decode(tiny_vae, torch.zeros(4, 2, 2))


def test_encode_is_the_posterior_mean_and_deterministic(tiny_vae: VaeHandle) -> None:
    pixels = torch.rand(2, 32, 24, 3, generator=torch.Generator().manual_seed(3))
    first = vae_encode(tiny_vae, pixels)
    second = vae_encode(tiny_vae, pixels)
    assert first.shape == (2, 4, 4, 3)
    assert torch.equal(first, second)
    with torch.no_grad():
        posterior = tiny_vae.vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist
        sampled = posterior.sample(generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, posterior.mean)
    assert not torch.allclose(first, sampled)


def test_encode_crops_centred_to_multiples_of_8(tiny_vae: VaeHandle) -> None:
    # 37 % 8 = 5 -> offset 2; 45 % 8 = 5 -> offset 2; 42 % 8 = 2 -> offset 1
    pixels = torch.rand(1, 37, 45, 3, generator=torch.Generator().manual_seed(4))
    latent = vae_encode(tiny_vae, pixels)
    assert latent.shape == (1, 4, 4, 5)
    torch.testing.assert_close(latent, vae_encode(tiny_vae, pixels[:, 2:34, 2:42]))
    assert not torch.allclose(latent, vae_encode(tiny_vae, pixels[:, 0:32, 0:40]))
    assert crop_to_multiple(torch.zeros(1, 42, 16, 3), 8).shape == (1, 40, 16, 3)
    cropped = crop_to_multiple(torch.arange(42.0).reshape(1, 42, 1, 1).expand(1, 42, 8, 1), 8)
    assert cropped[0, 0, 0, 0] == 1 and cropped[0, -1, 0, 0] == 40


def test_encode_ignores_alpha_and_refuses_tiny_images(tiny_vae: VaeHandle) -> None:
    rgb = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(5))
    rgba = torch.cat([rgb, torch.rand(1, 16, 16, 1)], dim=-1)
    torch.testing.assert_close(vae_encode(tiny_vae, rgba), vae_encode(tiny_vae, rgb))
    with pytest.raises(ValueError, match="smaller than"):
        vae_encode(tiny_vae, torch.rand(1, 7, 16, 3))


def test_vae_nodes_roundtrip(tiny_vae: VaeHandle, make_ctx) -> None:
    ctx = make_ctx("VAEEncode")
    pixels = torch.rand(1, 16, 24, 4, generator=torch.Generator().manual_seed(6))
    (latent,) = VAEEncode().run(ctx, pixels=pixels, vae=tiny_vae)
    assert set(latent) == {"samples"} and latent["samples"].shape == (1, 4, 2, 3)
    (image,) = VAEDecode().run(ctx, samples=latent, vae=tiny_vae)
    assert image.shape == (1, 16, 24, 3)
    with pytest.raises(ValueError, match="LATENT"):
        VAEDecode().run(ctx, samples=latent["samples"], vae=tiny_vae)


def test_vae_nodes_schemas_match_comfyui() -> None:
    assert VAEDecode.schema.category == "latent" and [i.name for i in VAEDecode.schema.inputs] == [
        "samples",
        "vae",
    ]
    assert [i.name for i in VAEEncode.schema.inputs] == ["pixels", "vae"]
    spec = VAEEncodeForInpaint.schema
    assert spec.category == "latent/inpaint"
    grow = spec.input("grow_mask_by")
    assert grow is not None and (grow.default, grow.min, grow.max) == (6, 0, 64)


def test_inpaint_greys_masked_pixels_and_grows_the_noise_mask() -> None:
    pixels = torch.rand(1, 37, 45, 3, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(1, 37, 45)
    mask[0, 12, 12] = 1.0  # (10, 10) after the centred crop by 2
    prepared, noise_mask = grey_out_masked(pixels, mask, 8, 6)
    assert prepared.shape == (1, 32, 40, 3) and noise_mask.shape == (1, 1, 32, 40)
    assert torch.all(prepared[0, 10, 10] == 0.5)
    unmasked = torch.ones(32, 40, dtype=torch.bool)
    unmasked[10, 10] = False
    torch.testing.assert_close(prepared[0][unmasked], pixels[0, 2:34, 2:42][unmasked])
    # A 6x6 box with padding 3 spreads one pixel over rows/cols 8..13.
    expected = torch.zeros(32, 40)
    expected[8:14, 8:14] = 1.0
    assert torch.equal(noise_mask[0, 0], expected)
    assert pixels[0, 12, 12, 0] != 0.5  # the input was not modified in place


def test_inpaint_without_growth_and_with_resized_mask() -> None:
    pixels = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(8))
    mask = torch.zeros(8, 8)
    mask[:4, :] = 1.0  # top half, at half resolution
    prepared, noise_mask = grey_out_masked(pixels, mask, 8, 0)
    assert noise_mask.shape == (1, 1, 16, 16)
    assert torch.all(noise_mask[0, 0, :7] == 1) and torch.all(noise_mask[0, 0, 9:] == 0)
    assert torch.all(prepared[:, :7] == 0.5)
    torch.testing.assert_close(prepared[:, 9:], pixels[:, 9:])


def test_inpaint_node_encodes_prepared_pixels(tiny_vae: VaeHandle, make_ctx) -> None:
    pixels = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:8, 4:8] = 1
    (latent,) = VAEEncodeForInpaint().run(
        make_ctx("VAEEncodeForInpaint"), pixels=pixels, vae=tiny_vae, mask=mask
    )
    prepared, noise_mask = grey_out_masked(pixels, mask, 8, 6)
    torch.testing.assert_close(latent["samples"], vae_encode(tiny_vae, prepared))
    assert torch.equal(latent["noise_mask"], noise_mask)
