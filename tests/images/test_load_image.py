"""LoadImage: ComfyUI's conversion (RGB float32, mask = 1 - alpha, EXIF, frames) and safe paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.engine.schema import REGISTRY
from comfyd.nodes.image.save_load import LoadImage, list_input_images, load_image_file
from comfyd.safepath import UnsafePathError


def rgba_array(height: int = 6, width: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)


def test_rgba_gives_rgb_image_and_inverted_alpha_mask(make_ctx, env) -> None:
    pixels = rgba_array()
    Image.fromarray(pixels, "RGBA").save(env.input_dir / "cut.png")
    image, mask = LoadImage().run(make_ctx("LoadImage"), image="cut.png")
    assert image.shape == (1, 6, 5, 3) and image.dtype == torch.float32
    assert mask.shape == (1, 6, 5) and mask.dtype == torch.float32
    torch.testing.assert_close(image[0], torch.from_numpy(pixels[..., :3].astype(np.float32) / 255.0))
    torch.testing.assert_close(mask[0], 1.0 - torch.from_numpy(pixels[..., 3].astype(np.float32) / 255.0))


def test_opaque_image_gets_empty_64x64_mask(make_ctx, env) -> None:
    Image.fromarray(rgba_array()[..., :3], "RGB").save(env.input_dir / "plain.png")
    image, mask = LoadImage().run(make_ctx("LoadImage"), image="plain.png")
    assert image.shape == (1, 6, 5, 3)
    assert mask.shape == (1, 64, 64) and torch.count_nonzero(mask) == 0


def test_greyscale_and_palette_are_converted_to_rgb(make_ctx, env) -> None:
    grey = np.arange(30, dtype=np.uint8).reshape(6, 5) * 8
    Image.fromarray(grey, "L").save(env.input_dir / "grey.png")
    image, _mask = LoadImage().run(make_ctx("LoadImage"), image="grey.png")
    assert image.shape == (1, 6, 5, 3)
    for channel in range(3):
        torch.testing.assert_close(image[0, ..., channel], torch.from_numpy(grey.astype(np.float32) / 255.0))

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.info["transparency"] = 0  # index 0 is transparent
    palette.save(env.input_dir / "pal.png", transparency=0)
    image, mask = LoadImage().run(make_ctx("LoadImage"), image="pal.png")
    assert image[0, 1, 1].tolist() == [0.0, 1.0, 0.0]
    assert mask.shape == (1, 4, 4)
    assert mask[0, 1, 1] == 0.0 and mask[0, 0, 0] == 1.0


def test_exif_orientation_is_applied(make_ctx, env) -> None:
    array = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high
    array[0, 0] = [255, 0, 0]  # top-left red
    img = Image.fromarray(array, "RGB")
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(env.input_dir / "rotated.png", exif=exif.tobytes())
    image, _mask = LoadImage().run(make_ctx("LoadImage"), image="rotated.png")
    assert image.shape == (1, 4, 2, 3)  # displayed upright: 2 wide, 4 high
    assert image[0, 0, 1].tolist() == [1.0, 0.0, 0.0]  # red is now at the top-right


def test_32bit_integer_images_are_scaled_by_1_over_255(tmp_path: Path) -> None:
    values = np.full((3, 3), 200 * 255, dtype=np.int32)
    Image.fromarray(values, "I").save(tmp_path / "deep.tif")
    image, _mask = load_image_file(tmp_path / "deep.tif")
    torch.testing.assert_close(image, torch.full((1, 3, 3, 3), 200 / 255.0))


def test_animation_frames_become_a_batch(env, make_ctx) -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(env.input_dir / "anim.gif", save_all=True, append_images=frames[1:], duration=10)
    image, mask = LoadImage().run(make_ctx("LoadImage"), image="anim.gif")
    assert image.shape == (3, 4, 4, 3) and mask.shape[0] == 3
    assert image[:, 0, 0].argmax(dim=-1).tolist() == [0, 1, 2]


def test_missing_file_and_traversal_are_clear_errors(make_ctx, env) -> None:
    with pytest.raises(FileNotFoundError, match="Invalid image file: nope.png"):
        LoadImage().run(make_ctx("LoadImage"), image="nope.png")
    (env.input_dir.parent / "secret.png").write_bytes(b"x")
    with pytest.raises(UnsafePathError, match="'..'"):
        LoadImage().run(make_ctx("LoadImage"), image="../secret.png")


def test_subfolder_and_annotated_names(make_ctx, env) -> None:
    (env.input_dir / "sub").mkdir()
    Image.new("RGB", (3, 2), (0, 0, 255)).save(env.input_dir / "sub" / "b.png")
    Image.new("RGB", (2, 2), (255, 255, 255)).save(env.output_dir / "made_00001_.png")
    image, _ = LoadImage().run(make_ctx("LoadImage"), image="sub/b.png")
    assert image.shape == (1, 2, 3, 3)
    image, _ = LoadImage().run(make_ctx("LoadImage"), image="made_00001_.png [output]")
    assert torch.all(image == 1.0)


def test_pixel_limit(env, make_ctx) -> None:
    Image.new("RGB", (20, 20)).save(env.input_dir / "big.png")
    env.settings.max_image_pixels = 399
    with pytest.raises(ValueError, match="20x20, more than the 399 pixels"):
        LoadImage().run(make_ctx("LoadImage"), image="big.png")


def test_choices_list_image_files_sorted(env) -> None:
    for name in ("b.png", "a.jpg", "c.webp"):
        Image.new("RGB", (2, 2)).save(env.input_dir / name)
    (env.input_dir / "notes.txt").write_text("not an image")
    (env.input_dir / "folder.png").mkdir()
    assert list_input_images(env) == ["a.jpg", "b.png", "c.webp"]
    info = REGISTRY.get("LoadImage").schema.object_info(env)
    assert info["input"]["required"]["image"] == [["a.jpg", "b.png", "c.webp"], {"image_upload": True}]
    assert info["output"] == ["IMAGE", "MASK"] and info["category"] == "image"


def test_fingerprint_follows_file_content(make_ctx, env) -> None:
    ctx = make_ctx("LoadImage")
    path = env.input_dir / "x.png"
    Image.new("RGB", (2, 2), (1, 2, 3)).save(path)
    first = LoadImage().fingerprint(ctx, image="x.png")
    assert first == LoadImage().fingerprint(ctx, image="x.png")
    Image.new("RGB", (2, 2), (3, 2, 1)).save(path)
    assert LoadImage().fingerprint(ctx, image="x.png") != first
    assert LoadImage().fingerprint(ctx, image="missing.png") is None
