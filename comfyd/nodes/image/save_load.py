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
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import Combo, Link, Node, NodeOutput, NodeSchema, OutputSpec, String, register_node
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


def expand_prefix_tokens(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """ComfyUI's filename tokens: %width% %height% %year% %month% %day% %hour% %minute% %second%,
    and the UI's %date:yyyy-MM-dd% style (yyyy yy MM M dd d hh h mm m ss s)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    values = {
        "width": str(width),
        "height": str(height),
        "year": str(now.tm_year),
        "month": f"{now.tm_mon:02}",
        "day": f"{now.tm_mday:02}",
        "hour": f"{now.tm_hour:02}",
        "minute": f"{now.tm_min:02}",
        "second": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    date_parts = {
        "yyyy": f"{now.tm_year:04}",
        "yy": f"{now.tm_year % 100:02}",
        "MM": f"{now.tm_mon:02}",
        "M": str(now.tm_mon),
        "dd": f"{now.tm_mday:02}",
        "d": str(now.tm_mday),
        "hh": f"{now.tm_hour:02}",
        "h": str(now.tm_hour),
        "mm": f"{now.tm_min:02}",
        "m": str(now.tm_min),
        "ss": f"{now.tm_sec:02}",
        "s": str(now.tm_sec),
    }
    token = re.compile("|".join(sorted(date_parts, key=len, reverse=True)))
    return re.sub(
        r"%date:([^%]+)%", lambda m: token.sub(lambda t: date_parts[t.group(0)], m.group(1)), prefix
    )


@dataclass(frozen=True)
class SaveTarget:
    """Where a prefix points: `folder` (absolute), `subfolder` ('/'-separated) and the file stem."""

    folder: Path
    subfolder: str
    stem: str


def save_target(base_dir: Path, filename_prefix: str) -> SaveTarget:
    """Split "sub/dir/name" into subfolder and stem, refusing anything that leaves `base_dir`."""
    try:
        safe_join(base_dir, filename_prefix)
    except UnsafePathError as exc:
        raise UnsafePathError(
            filename_prefix, f"filename_prefix would save outside the output folder ({exc.reason})"
        ) from exc
    components = [c for c in filename_prefix.split("/") if c not in ("", ".")]
    stem = components[-1] if components else ""
    subfolder = "/".join(components[:-1])
    folder = safe_join(base_dir, subfolder)
    return SaveTarget(folder=folder, subfolder=subfolder, stem=stem)


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


def write_exclusive(folder: Path, stem: str, start: int, data: bytes) -> tuple[str, int]:
    """Write `data` as `{stem}_{n:05}_.png` for the first n >= start that no file holds yet.

    Creation is exclusive (O_EXCL), so two writers can never end up with the same file.
    Returns the file name and the counter used.
    """
    folder.mkdir(parents=True, exist_ok=True)
    counter = start
    for _ in range(_MAX_SAVE_ATTEMPTS):
        name = f"{stem}_{counter:05}_.png"
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


def check_filename_prefix(env: NodeEnvironment | None, prefix: Any) -> str | None:
    """Validation of SaveImage's prefix: one that would leave the output folder is refused
    before the workflow runs, not after its sampling. Tokens are expanded with placeholder sizes
    (%width% and friends are digits, which cannot change where the path leads)."""
    if not isinstance(prefix, str):
        return None
    base = env.output_dir if env is not None else Path("output")
    try:
        save_target(base, expand_prefix_tokens(prefix, 512, 512))
    except UnsafePathError as exc:
        return str(exc)
    return None


def save_images(
    images: torch.Tensor,
    base_dir: Path,
    filename_prefix: str,
    folder_type: str,
    compress_level: int,
    prompt: dict[str, Any] | None,
    extra_pnginfo: dict[str, Any] | None,
) -> list[dict[str, str]]:
    """Write each image of the batch as a PNG under `base_dir`; returns ComfyUI's UI entries."""
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
        name, counter = write_exclusive(target.folder, stem, start, data)
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
                tooltip="File name stem, optionally with subfolders ('portraits/fox') and tokens such as "
                "%date:yyyy-MM-dd%, %width% or %height%.",
                validator=check_filename_prefix,
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


def load_image_file(path: Path, max_pixels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [F, H, W, 3] and MASK [F, H, W] from an image file, as ComfyUI's LoadImage reads it.

    EXIF orientation is applied; 32-bit integer images ('I') are scaled by 1/255 first; frames of
    an animation become a batch, skipping frames whose size differs from the first.
    """
    with Image.open(path) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ValueError(
                f"image {path.name} is {img.width}x{img.height}, more than the {max_pixels} pixels allowed"
            )
        images: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        size: tuple[int, int] | None = None
        for raw_frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(raw_frame)
            if frame.mode == "I":
                frame = frame.point(lambda value: value * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            elif rgb.size != size:
                continue
            images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None])
            masks.append(_frame_mask(frame)[None])
        batch = len(images) > 1 and img.format not in _SINGLE_FRAME_FORMATS
    if not images:
        raise ValueError(f"image {path.name} has no frames")
    if batch:
        return torch.cat(images, dim=0), torch.cat(masks, dim=0)
    return images[0], masks[0]


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
        return load_image_file(path, max_pixels=ctx.env.settings.max_image_pixels)
