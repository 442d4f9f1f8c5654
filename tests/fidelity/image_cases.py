"""Fidelity cases for the image, mask, latent, value and animated-output nodes.

Most are pure pixel graphs (LoadImage -> operations -> a save node): no model, so they cost
milliseconds. The latent ones reuse the base graph's sampler output (the runner's cache computes
it once for all of them); the VAE ones run the parity checkpoint's VAE on small pictures.
make_cases.py adds these to its cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

INPUT_IMAGE = "parity-input.png"


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _pixels(*ops: tuple[str, dict[str, Any]], save: str = "SaveImage") -> dict[str, Any]:
    """LoadImage as node 1, then `ops` in a chain (each op's first link input is the previous
    node's output 0 unless it names its links), then the save node as the last one."""
    w: dict[str, Any] = {"1": node("LoadImage", image=INPUT_IMAGE)}
    previous = "1"
    for index, (class_type, inputs) in enumerate(ops, start=2):
        w[str(index)] = node(class_type, **inputs)
        previous = str(index)
    w["90"] = _save_node(save, previous)
    return w


def _save_node(save: str, source: str) -> dict[str, Any]:
    if save == "SaveAnimatedWEBP":
        return node(save, images=[source, 0], filename_prefix="parity", fps=8.0, lossless=True, quality=80,
                    method="default")
    if save == "SaveAnimatedPNG":
        return node(save, images=[source, 0], filename_prefix="parity", fps=8.0, compress_level=4)
    return node(save, images=[source, 0], filename_prefix="parity")


def pixel_cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    # Compositing: the flipped picture pasted at an offset through the LoadImage alpha mask.
    out["image_composite_masked"] = _pixels(
        ("ImageFlip", {"image": ["1", 0], "flip_method": "y-axis: horizontally"}),
        ("ImageCrop", {"image": ["2", 0], "width": 40, "height": 36, "x": 12, "y": 6}),
        ("ImageCompositeMasked", {"destination": ["1", 0], "source": ["3", 0], "x": 25, "y": 37,
                                  "resize_source": False, "mask": ["1", 1]}),
    )
    out["image_composite_resize_source"] = _pixels(
        ("ImageRotate", {"image": ["1", 0], "rotation": "180 degrees"}),
        ("ImageCrop", {"image": ["2", 0], "width": 30, "height": 20, "x": 5, "y": 5}),
        ("ImageCompositeMasked", {"destination": ["1", 0], "source": ["3", 0], "x": 0, "y": 0,
                                  "resize_source": True, "mask": ["1", 1]}),
    )
    # Outpainting: the padded picture and its feathered mask, shown together by compositing the
    # picture onto a coloured canvas through the mask.
    w = _pixels(
        ("ImagePadForOutpaint", {"image": ["1", 0], "left": 16, "top": 8, "right": 0, "bottom": 24,
                                 "feathering": 12}),
        ("EmptyImage", {"width": 86, "height": 98, "batch_size": 1, "color": 0x3366CC}),
        ("ImageCompositeMasked", {"destination": ["2", 0], "source": ["3", 0], "x": 0, "y": 0,
                                  "resize_source": False, "mask": ["2", 1]}),
    )
    out["image_pad_for_outpaint"] = w
    for mode in ("normal", "multiply", "screen", "overlay", "soft_light", "difference"):
        out[f"image_blend_{mode}"] = _pixels(
            ("ImageRotate", {"image": ["1", 0], "rotation": "180 degrees"}),
            ("ImageBlend", {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 0.65, "blend_mode": mode}),
        )
    out["image_blend_resized"] = _pixels(
        ("ImageCrop", {"image": ["1", 0], "width": 33, "height": 47, "x": 20, "y": 3}),
        ("ImageBlend", {"image1": ["1", 0], "image2": ["2", 0], "blend_factor": 0.5, "blend_mode": "overlay"}),
    )
    out["image_blur"] = _pixels(("ImageBlur", {"image": ["1", 0], "blur_radius": 4, "sigma": 1.7}))
    out["image_sharpen"] = _pixels(
        ("ImageSharpen", {"image": ["1", 0], "sharpen_radius": 2, "sigma": 0.8, "alpha": 0.6})
    )
    for dither in ("none", "floyd-steinberg", "bayer-4"):
        out[f"image_quantize_{dither.replace('-', '_')}"] = _pixels(
            ("ImageQuantize", {"image": ["1", 0], "colors": 12, "dither": dither})
        )
    out["image_crop_rotate_flip"] = _pixels(
        ("ImageCrop", {"image": ["1", 0], "width": 50, "height": 30, "x": 9, "y": 21}),
        ("ImageRotate", {"image": ["2", 0], "rotation": "90 degrees"}),
        ("ImageFlip", {"image": ["3", 0], "flip_method": "x-axis: vertically"}),
        ("ImageRotate", {"image": ["4", 0], "rotation": "270 degrees"}),
    )
    out["canny"] = _pixels(
        ("ImageBlur", {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}),
        ("Canny", {"image": ["2", 0], "low_threshold": 0.1, "high_threshold": 0.3}),
    )
    # Batches: every frame is compared (animated saves), so the resized second image counts.
    out["image_batch_animated_png"] = _pixels(
        ("ImageCrop", {"image": ["1", 0], "width": 40, "height": 50, "x": 10, "y": 10}),
        ("EmptyImage", {"width": 70, "height": 66, "batch_size": 2, "color": 0xFF8000}),
        ("ImageBatch", {"image1": ["1", 0], "image2": ["2", 0]}),
        ("ImageBatch", {"image1": ["4", 0], "image2": ["3", 0]}),
        save="SaveAnimatedPNG",
    )
    out["image_batch_animated_webp"] = _pixels(
        ("ImageFlip", {"image": ["1", 0], "flip_method": "x-axis: vertically"}),
        ("ImageBatch", {"image1": ["2", 0], "image2": ["1", 0]}),
        save="SaveAnimatedWEBP",
    )
    # Values: sizes, factors, flags and the file name from the Primitive and string nodes.
    w = {
        "1": node("LoadImage", image=INPUT_IMAGE),
        "2": node("GetImageSize", image=["1", 0]),
        "3": node("PrimitiveInt", value=0x20A0F0),
        "4": node("EmptyImage", width=["2", 0], height=["2", 1], batch_size=1, color=["3", 0]),
    }
    w["5"] = node("PrimitiveFloat", value=0.4)
    w["6"] = node("PrimitiveBoolean", value=True)
    w["7"] = node("ImageCrop", image=["1", 0], width=20, height=20, x=30, y=30)
    w["8"] = node("ImageCompositeMasked", destination=["4", 0], source=["7", 0], x=0, y=0,
                  resize_source=["6", 0], mask=["1", 1])
    w["9"] = node("ImageBlend", image1=["8", 0], image2=["1", 0], blend_factor=["5", 0], blend_mode="screen")
    w["10"] = node("PrimitiveString", value="parity")
    w["11"] = node("PrimitiveStringMultiline", value="values")
    w["12"] = node("StringConcatenate", string_a=["10", 0], string_b=["11", 0], delimiter="_")
    w["90"] = node("SaveImage", images=["9", 0], filename_prefix=["12", 0])
    out["values_primitives"] = w
    return out


def mask_cases() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    w = {
        "1": node("LoadImage", image=INPUT_IMAGE),
        "2": node("LoadImageMask", image=INPUT_IMAGE, channel="red"),
        "3": node("GrowMask", mask=["2", 0], expand=3, tapered_corners=True),
        "4": node("FeatherMask", mask=["3", 0], left=5, top=0, right=7, bottom=3),
        "5": node("MaskComposite", destination=["1", 1], source=["4", 0], x=4, y=6, operation="add"),
        "6": node("MaskToImage", mask=["5", 0]),
        "90": node("SaveImage", images=["6", 0], filename_prefix="parity"),
    }
    out["mask_load_grow_feather_composite"] = w
    w = {
        "1": node("LoadImage", image=INPUT_IMAGE),
        "2": node("ImageToMask", image=["1", 0], channel="green"),
        "3": node("GrowMask", mask=["2", 0], expand=-2, tapered_corners=False),
        "4": node("ThresholdMask", mask=["3", 0], value=0.45),
        "5": node("SolidMask", value=0.7, width=50, height=40),
        "6": node("CropMask", mask=["2", 0], x=10, y=12, width=30, height=25),
        "7": node("MaskComposite", destination=["5", 0], source=["6", 0], x=15, y=8, operation="multiply"),
        "8": node("MaskComposite", destination=["4", 0], source=["7", 0], x=3, y=9, operation="xor"),
        "9": node("InvertMask", mask=["8", 0]),
        "10": node("MaskToImage", mask=["9", 0]),
        "90": node("SaveImage", images=["10", 0], filename_prefix="parity"),
    }
    out["mask_threshold_solid_crop_invert"] = w
    for operation in ("subtract", "and", "or"):
        out[f"mask_composite_{operation}"] = {
            "2": node("LoadImageMask", image=INPUT_IMAGE, channel="blue"),
            "3": node("LoadImageMask", image=INPUT_IMAGE, channel="alpha"),
            "4": node("MaskComposite", destination=["2", 0], source=["3", 0], x=7, y=2, operation=operation),
            "5": node("MaskToImage", mask=["4", 0]),
            "90": node("SaveImage", images=["5", 0], filename_prefix="parity"),
        }
    return out


def latent_cases(base: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cases on the base graph's sampled latent (node 3) and on the parity VAE (node 4)."""
    out: dict[str, dict[str, Any]] = {}

    def decoded(w: dict[str, Any], latent: str) -> dict[str, Any]:
        w["8"]["inputs"]["samples"] = [latent, 0]
        return w

    w = base()
    w["10"] = node("LatentFlip", samples=["3", 0], flip_method="y-axis: horizontally")
    w["11"] = node("LatentComposite", samples_to=["3", 0], samples_from=["10", 0], x=16, y=8, feather=16)
    out["latent_composite_feather"] = decoded(w, "11")
    w = base()
    w["20"] = node("LoadImage", image=INPUT_IMAGE)
    w["10"] = node("LatentRotate", samples=["3", 0], rotation="90 degrees")
    w["11"] = node("LatentCompositeMasked", destination=["3", 0], source=["10", 0], x=8, y=16,
                   resize_source=False, mask=["20", 1])
    out["latent_composite_masked"] = decoded(w, "11")
    w = base()
    w["10"] = node("LatentMultiply", samples=["3", 0], multiplier=-0.5)
    w["11"] = node("LatentBlend", samples1=["3", 0], samples2=["10", 0], blend_factor=0.3)
    w["12"] = node("LatentCrop", samples=["3", 0], width=64, height=64, x=0, y=0)
    w["13"] = node("LatentRotate", samples=["3", 0], rotation="270 degrees")
    w["14"] = node("LatentAdd", samples1=["11", 0], samples2=["13", 0])
    w["15"] = node("LatentSubtract", samples1=["14", 0], samples2=["12", 0])
    out["latent_arithmetic"] = decoded(w, "15")
    w = base()
    w["5"]["inputs"].update(width=96, height=80)
    w["10"] = node("LatentCrop", samples=["3", 0], width=64, height=64, x=16, y=8)
    w["11"] = node("LatentFlip", samples=["10", 0], flip_method="x-axis: vertically")
    w["12"] = node("LatentBatch", samples1=["3", 0], samples2=["11", 0])
    w["9"] = _save_node("SaveAnimatedWEBP", "8")
    out["latent_crop_batch_webp"] = decoded(w, "12")

    # Tiled VAE both ways, on a picture large enough for the three tilings to overlap.
    out["vae_tiled_encode_decode"] = {
        "4": node("CheckpointLoaderSimple", ckpt_name=base()["4"]["inputs"]["ckpt_name"]),
        "20": node("LoadImage", image=INPUT_IMAGE),
        "21": node("ImageScale", image=["20", 0], upscale_method="bilinear", width=128, height=96, crop="disabled"),
        "22": node("VAEEncodeTiled", pixels=["21", 0], vae=["4", 2], tile_size=128, overlap=32,
                   temporal_size=64, temporal_overlap=8),
        "23": node("VAEDecodeTiled", samples=["22", 0], vae=["4", 2], tile_size=64, overlap=32,
                   temporal_size=64, temporal_overlap=8),
        "90": node("SaveImage", images=["23", 0], filename_prefix="parity"),
    }
    # Inpainting conditioning into a sampler (the parity model is no inpainting model, so the
    # concat entries are carried and ignored, as in ComfyUI).
    w = base()
    w["20"] = node("LoadImage", image=INPUT_IMAGE)
    w["21"] = node("InpaintModelConditioning", positive=["6", 0], negative=["7", 0], vae=["4", 2],
                   pixels=["20", 0], mask=["20", 1], noise_mask=True)
    w["3"]["inputs"].update(positive=["21", 0], negative=["21", 1], latent_image=["21", 2], denoise=0.8)
    out["inpaint_model_conditioning"] = w
    return out


def cases(base: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**pixel_cases(), **mask_cases(), **latent_cases(base)}
