"""Checks and storage of uploaded images (/upload/image, /upload/mask).

`check_image` reads only an image's headers: its size per frame and over all frames is bounded
before anything is decoded (413 ImageTooLarge). `store_upload` writes into the upload folder
through a temporary file and never through, or over, a symbolic link.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from comfyd.http.errors import ApiError, bad_request
from comfyd.safepath import UnsafePathError, safe_join


def unsafe_path_error(exc: UnsafePathError, where: str) -> ApiError:
    return bad_request(f"{where}: {exc}", {"location": where, "reason": exc.reason})


def _too_large(filename: str, message: str, details: dict[str, Any]) -> ApiError:
    return ApiError(413, "ImageTooLarge", f"image {filename!r} {message}", details)


def check_image(data: bytes, max_pixels: int, filename: str, max_frame_pixels: int | None = None) -> None:
    """413 ImageTooLarge past the pixel bounds (per frame, and frames x pixels), 400 if unreadable.
    Only headers are read: nothing is decoded before the bounds are checked."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _too_large(filename, f"is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
                                 "(COMFYD_MAX_IMAGE_PIXELS raises it)",
                                 {"width": width, "height": height, "max_pixels": max_pixels})
            frames = max(1, int(getattr(img, "n_frames", 1) or 1))
            if max_frame_pixels is not None and frames * width * height > max_frame_pixels:
                raise _too_large(filename, f"has {frames} frames of {width}x{height}; the limit over all frames is "
                                 f"{max_frame_pixels} pixels (COMFYD_MAX_IMAGE_FRAME_PIXELS raises it)", {"width": width, "height": height, "frames": frames,
                                                                "max_frame_pixels": max_frame_pixels})
            img.seek(0)
            img.verify()
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own bound, far above ours: still too large
        raise _too_large(filename, f"is too large to decode ({exc})", {"max_pixels": max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise bad_request(f"'image' ({filename!r}) is not an image comfyd can read: {exc}",
                          {"location": "image"}) from None


def store_upload(directory: Path, filename: str, data: bytes, overwrite: bool) -> str:
    """Write the upload; without overwrite an existing different file gets "name (1).ext"."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        target = safe_join(directory, filename)
        if target.is_symlink():  # existing or dangling: never write through (or over) a link
            raise UnsafePathError(filename, "names a symbolic link in the folder")
        if target.exists() and not overwrite:
            stem, suffix = os.path.splitext(filename)
            index = 0
            while target.exists() or target.is_symlink():
                if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
                    return target.name  # the same image again: reuse it
                index += 1
                target = safe_join(directory, f"{stem} ({index}){suffix}")
    except UnsafePathError as exc:
        raise unsafe_path_error(exc, "image filename") from None
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-", suffix=target.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target.name


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes, filename: str) -> bool:
    """An image by its name or its first bytes: checked as an image; anything else is stored as is."""
    return (Path(filename).suffix.lower() in IMAGE_SUFFIXES or data.startswith(_IMAGE_MAGIC)
            or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"))
