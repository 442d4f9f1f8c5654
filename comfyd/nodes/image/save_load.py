"""Images in and out of a workflow: LoadImage, SaveImage, PreviewImage, SaveImageWebsocket.

Files are written exactly as ComfyUI writes them (reference §8): 8-bit by *truncation*
(`uint8(clip(255 * x))`), PNG `tEXt` chunks `prompt` and one per `extra_pnginfo` key (JSON), and
names `{prefix}_{counter:05}_.png` where the counter continues after the highest one already in
the folder. Unlike ComfyUI, the file is created exclusively, so jobs saving at the same moment
each get their own number instead of overwriting one another.
"""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import re
import secrets
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import Combo, Link, Node, NodeOutput, NodeSchema, OutputSpec, String, register_node
from comfyd.nodes.image.output_names import (
    check_filename_prefix,
    expand_prefix_tokens,
    owner_key,
    reserve_name,
    save_target,
    write_atomically,
)
from comfyd.safepath import UnsafePathError, safe_join

# ComfyUI's compression levels: 4 for saved images, 1 for previews and websocket frames.
SAVE_COMPRESS_LEVEL = 4
PREVIEW_COMPRESS_LEVEL = 1
# ComfyUI's LoadImage mask when the image has no alpha channel.
EMPTY_MASK_SIZE = 64
# Formats whose extra frames are not a batch (MPO: the second frame is a stereo/depth view).
_SINGLE_FRAME_FORMATS = frozenset({"MPO"})
# How many times to try the next counter when another job took the one we picked.
_MAX_SAVE_ATTEMPTS = 10000
_ANNOTATION_RE = re.compile(r"^(?P<name>.*) \[(?P<folder>input|output|temp)\]$")
_COUNTER_RE = re.compile(r"^[0-9]+$")


# ---------------------------------------------------------------------------------------------
# Converting and encoding


def image_to_uint8(image: torch.Tensor) -> np.ndarray:
    """One IMAGE [H, W, C] in 0..1 -> uint8 [H, W, C]; truncates like ComfyUI (0.999 -> 254)."""
    array = 255.0 * image.detach().to("cpu", torch.float32).numpy()
    return np.clip(array, 0, 255).astype(np.uint8)


def _to_pil(pixels: np.ndarray) -> Image.Image:
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        return Image.fromarray(pixels[..., 0])
    return Image.fromarray(pixels)


def png_metadata(prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None) -> PngInfo | None:
    """tEXt chunks: `prompt` (the API prompt as JSON) and one JSON chunk per extra_pnginfo key."""
    if not prompt and not extra_pnginfo:
        return None
    info = PngInfo()
    if prompt:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), json.dumps(value))
    return info


def encode_png(image: torch.Tensor, compress_level: int, metadata: PngInfo | None = None) -> bytes:
    """PNG bytes of one IMAGE [H, W, C]."""
    buffer = io.BytesIO()
    _to_pil(image_to_uint8(image)).save(buffer, format="PNG", pnginfo=metadata, compress_level=compress_level)
    return buffer.getvalue()


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected IMAGE shaped [B, H, W, 1|3|4], got {shape}")
    return images


# ---------------------------------------------------------------------------------------------
# Saving


def next_counter(folder: Path, stem: str) -> int:
    """1 + the highest counter among files named `{stem}_{counter}_...` in `folder` (1 if none)."""
    highest = 0
    try:
        names = [entry.name for entry in folder.iterdir()]
    except FileNotFoundError:
        return 1
    lead = f"{stem}_"
    for name in names:
        if not name.startswith(lead):
            continue
        rest = name[len(lead) :]
        # The counter is followed by "_" in names this module writes.
        digits, sep, _tail = rest.partition("_")
        if sep and _COUNTER_RE.match(digits):
            highest = max(highest, int(digits))
    return highest + 1


def write_exclusive(folder: Path, stem: str, start: int, data: bytes, ext: str = "png") -> tuple[str, int]:
    """Write `data` as `{stem}_{n:05}_.{ext}` for the first n >= start that no file holds yet.

    Creation is exclusive (O_EXCL), so two writers can never end up with the same file.
    Returns the file name and the counter used.
    """
    folder.mkdir(parents=True, exist_ok=True)
    counter = start
    for _ in range(_MAX_SAVE_ATTEMPTS):
        name = f"{stem}_{counter:05}_.{ext}"
        path = folder / name
        try:
            handle = open(path, "xb")  # exclusive: fails if the name is taken
        except FileExistsError:
            counter += 1
            continue
        try:
            with handle:
                handle.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return name, counter
    raise RuntimeError(
        f"could not find a free file name for {stem!r} in {folder} after {_MAX_SAVE_ATTEMPTS} tries"
    )


def save_images(
    images: torch.Tensor,
    base_dir: Path,
    filename_prefix: str,
    folder_type: str,
    compress_level: int,
    prompt: dict[str, Any] | None,
    extra_pnginfo: dict[str, Any] | None,
    owner: tuple[str, str] | None = None,
) -> list[dict[str, str]]:
    """Write each image of the batch as a PNG under `base_dir`; returns ComfyUI's UI entries.

    `owner` = (job id, node id): names are reserved per (job, node, batch index), so running the
    same job again (a retry after a crash) writes the same files (comfyd.nodes.image.output_names).
    """
    images = _check_images(images)
    height, width = images.shape[1], images.shape[2]
    target = save_target(base_dir, expand_prefix_tokens(filename_prefix, width, height))
    metadata = png_metadata(prompt, extra_pnginfo)
    results: list[dict[str, str]] = []
    counter = 0
    for batch_number, image in enumerate(images):
        stem = target.stem.replace("%batch_num%", str(batch_number))
        data = encode_png(image, compress_level, metadata)
        start = max(counter + 1, next_counter(target.folder, stem))
        if owner is None:
            name, counter = write_exclusive(target.folder, stem, start, data)
        else:
            name = reserve_name(target.folder, stem, owner_key(*owner, batch_number), start)
            write_atomically(target.folder / name, data)
            counter = max(counter, int(name[len(stem) + 1:].split("_", 1)[0]))
        results.append({"filename": name, "subfolder": target.subfolder, "type": folder_type})
    return results


def _prompt_for_metadata(ctx: NodeContext, prompt: dict[str, Any] | None) -> dict[str, Any] | None:
    return prompt if prompt is not None else (ctx.prompt or None)


def _extra_for_metadata(ctx: NodeContext, extra_pnginfo: dict[str, Any] | None) -> dict[str, Any] | None:
    return extra_pnginfo if extra_pnginfo is not None else ctx.extra_pnginfo


@register_node
class SaveImage(Node):
    schema = NodeSchema(
        class_type="SaveImage",
        inputs=(
            Link("images", "IMAGE", tooltip="Images to write as PNG files."),
            String(
                "filename_prefix",
                default="ComfyUI",
                validator=check_filename_prefix,
                tooltip="File name stem, optionally with subfolders ('portraits/fox') and tokens such as "
                "%date:yyyy-MM-dd%, %width% or %height%.",
            ),
        ),
        outputs=(),
        category="image",
        description="Writes the images as PNG files (with the workflow as metadata) to the output folder.",
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO"),
    )

    def run(
        self,
        ctx: NodeContext,
        images: torch.Tensor,
        filename_prefix: str = "ComfyUI",
        prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None,
        **_hidden: Any,
    ) -> NodeOutput:
        results = save_images(
            images,
            ctx.env.output_dir,
            filename_prefix,
            "output",
            SAVE_COMPRESS_LEVEL,
            _prompt_for_metadata(ctx, prompt),
            _extra_for_metadata(ctx, extra_pnginfo),
            owner=(ctx.job_id, ctx.node_id),
        )
        return NodeOutput(values=(), ui={"images": results})


def preview_prefix() -> str:
    """ComfyUI's preview names: "ComfyUI_temp_" and five random letters (from its own alphabet)."""
    alphabet = "abcdefghijklmnopqrstupvxyz"
    return "ComfyUI_temp_" + "".join(secrets.choice(alphabet) for _ in range(5))


@register_node
class PreviewImage(Node):
    schema = NodeSchema(
        class_type="PreviewImage",
        inputs=(Link("images", "IMAGE"),),
        outputs=(),
        category="image",
        description="Writes the images to the temporary folder for viewing.",
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO"),
    )

    def run(
        self,
        ctx: NodeContext,
        images: torch.Tensor,
        prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None,
        **_hidden: Any,
    ) -> NodeOutput:
        results = save_images(
            images,
            ctx.env.temp_dir,
            preview_prefix(),
            "temp",
            PREVIEW_COMPRESS_LEVEL,
            _prompt_for_metadata(ctx, prompt),
            _extra_for_metadata(ctx, extra_pnginfo),
        )
        return NodeOutput(values=(), ui={"images": results})


@register_node
class SaveImageWebsocket(Node):
    """Sends each image as a PNG binary frame to the job's websocket clients; writes no file."""

    schema = NodeSchema(
        class_type="SaveImageWebsocket",
        inputs=(Link("images", "IMAGE"),),
        outputs=(),
        category="api/image",
        output_node=True,
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        # Like ComfyUI's IS_CHANGED = time: a cached result would send nothing, so never reuse one.
        return uuid.uuid4().hex

    def run(self, ctx: NodeContext, images: torch.Tensor) -> NodeOutput:
        images = _check_images(images)
        total = images.shape[0]
        for index, image in enumerate(images):
            ctx.progress(index, total)
            png = encode_png(image, PREVIEW_COMPRESS_LEVEL)
            ctx.emit("binary_image", {"image": png, "format": "PNG", "node": ctx.node_id})
        return NodeOutput(values=(), ui=None)


# ---------------------------------------------------------------------------------------------
# Loading


def _is_image_file(path: Path) -> bool:
    # strict=False, as ComfyUI's filter_files_content_types guesses.
    kind, _encoding = mimetypes.guess_type(path.name, strict=False)
    return path.is_file() and kind is not None and kind.startswith("image/")


def list_input_images(env: NodeEnvironment | None) -> list[str]:
    """LoadImage's choices: the image files directly in the input folder, sorted.

    Like ComfyUI, subfolders are not listed; their files are still accepted (check_image_name).
    """
    if env is None:
        return []
    folder = env.input_dir
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if _is_image_file(entry))


def resolve_image_path(env: NodeEnvironment, name: str) -> Path:
    """The file LoadImage means by `name`: "x.png" or "sub/x.png" in the input folder, or with
    ComfyUI's annotation "x.png [output]" / "[temp]" / "[input]" in that folder."""
    folders = {"input": env.input_dir, "output": env.output_dir, "temp": env.temp_dir}
    base = env.input_dir
    match = _ANNOTATION_RE.match(name)
    if match:
        name, base = match.group("name"), folders[match.group("folder")]
    return safe_join(base, name)


def check_image_name(env: NodeEnvironment | None, name: Any) -> str | None:
    """LoadImage's VALIDATE_INPUTS: None if `name` is a file resolve_image_path reaches.

    ComfyUI accepts any existing path here, so names it does not list pass too ("sub/x.png",
    "x.png [output]"). Unlike ComfyUI, comfyd refuses folders (ComfyUI lets them through and
    fails when the node runs) and, through safe_join, anything outside the three folders.
    """
    invalid = f"Invalid image file: {name}"
    if env is None or not isinstance(name, str):
        return invalid
    try:
        path = resolve_image_path(env, name)
    except UnsafePathError as exc:
        return f"{invalid} ({exc.reason})"
    return None if path.is_file() else invalid


def _frame_mask(frame: Image.Image) -> torch.Tensor:
    """MASK of one frame: 1 - alpha where the frame has alpha (or palette transparency)."""
    if "A" in frame.getbands():
        alpha = frame.getchannel("A")
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = frame.convert("RGBA").getchannel("A")
    else:
        return torch.zeros((EMPTY_MASK_SIZE, EMPTY_MASK_SIZE), dtype=torch.float32)
    return 1.0 - torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)


def load_image_file(
    path: Path, max_pixels: int | None = None, max_frame_pixels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [F, H, W, 3] and MASK [F, H, W] from an image file, as ComfyUI's LoadImage reads it.

    EXIF orientation is applied; 32-bit integer images ('I') are scaled by 1/255 first; frames of
    an animation become a batch, skipping frames whose size differs from the first.

    Bounds, checked before any frame is decoded: `max_pixels` per frame, `max_frame_pixels` for
    frames x pixels (a few KB of GIF can declare hundreds of 4096x4096 frames). Frames are then
    decoded one at a time into one preallocated batch.
    """
    with Image.open(path) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ValueError(
                f"image {path.name} is {img.width}x{img.height}, more than the {max_pixels} pixels allowed"
            )
        frame_count = max(1, int(getattr(img, "n_frames", 1) or 1))
        if img.format in _SINGLE_FRAME_FORMATS:
            frame_count = 1
        if max_frame_pixels is not None and frame_count * img.width * img.height > max_frame_pixels:
            raise ValueError(
                f"image {path.name} has {frame_count} frames of {img.width}x{img.height}, more than the "
                f"{max_frame_pixels} pixels allowed over all frames"
            )
        images: torch.Tensor | None = None
        masks: list[torch.Tensor] = []
        size: tuple[int, int] | None = None
        count = 0
        for raw_frame in ImageSequence.Iterator(img):
            if count >= frame_count:
                break
            frame = ImageOps.exif_transpose(raw_frame)
            if frame.mode == "I":
                frame = frame.point(lambda value: value * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
                images = torch.empty((frame_count, size[1], size[0], 3), dtype=torch.float32)
            elif rgb.size != size:
                continue
            assert images is not None
            images[count] = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
            masks.append(_frame_mask(frame)[None])
            count += 1
    if images is None or count == 0:
        raise ValueError(f"image {path.name} has no frames")
    if count > 1:
        return images[:count], torch.cat(masks, dim=0)
    return images[:1], masks[0]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@register_node
class LoadImage(Node):
    schema = NodeSchema(
        class_type="LoadImage",
        inputs=(Combo("image", list_input_images, image_upload=True, validator=check_image_name),),
        outputs=(OutputSpec("IMAGE"), OutputSpec("MASK")),
        category="image",
    )
    # ComfyUI's LoadImage.IS_CHANGED is the same SHA-256 hex; it lands in the saved prompt.
    fingerprint_is_comfyui_is_changed = True

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        # The file's content, so replacing it under the same name invalidates the cached output.
        try:
            path = resolve_image_path(ctx.env, str(inputs.get("image", "")))
            return _file_digest(path)
        except (OSError, ValueError):
            return None  # run() reports the problem with a clear message

    def run(self, ctx: NodeContext, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        path = resolve_image_path(ctx.env, image)
        if not path.is_file():
            raise FileNotFoundError(f"Invalid image file: {image} (no such file in {path.parent})")
        settings = ctx.env.settings
        return load_image_file(path, max_pixels=settings.max_image_pixels,
                               max_frame_pixels=getattr(settings, "max_image_frame_pixels", None))
