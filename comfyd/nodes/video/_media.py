"""Shared plumbing of the video and audio nodes: PyAV (imported lazily), the video budget and
output files that are written to a temporary name and then claimed under their final one.

PyAV bundles its own FFmpeg (libx264, libvpx, SVT-AV1, AAC, LAME, Opus, FLAC), the same build
ComfyUI's video nodes use, so nothing else has to be installed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comfyd.nodes.image.output_names import expand_prefix_tokens, save_target
from comfyd.nodes.image.save_load import next_counter

_MAX_NAME_ATTEMPTS = 10000
DEFAULT_MAX_VIDEO_PIXELS = 256 * 1024 * 1024


class VideoTooLarge(ValueError):
    """More frames x pixels than the video budget (COMFYD_MAX_VIDEO_PIXELS)."""


class MediaDecodeError(ValueError):
    """A video or audio file PyAV cannot read (corrupt, truncated, not a media file)."""


def av_module() -> Any:
    """PyAV, imported on first use so that comfyd starts without it where no video node runs."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency
        raise RuntimeError("video and audio nodes need PyAV: pip install av") from exc
    return av


def max_video_pixels(settings: Any) -> int:
    return int(getattr(settings, "max_video_pixels", DEFAULT_MAX_VIDEO_PIXELS) or DEFAULT_MAX_VIDEO_PIXELS)


def check_video_pixels(settings: Any, frames: int, width: int, height: int, what: str = "video") -> None:
    """Raise VideoTooLarge when frames x width x height exceeds the budget."""
    budget = max_video_pixels(settings)
    if frames * width * height > budget:
        raise VideoTooLarge(
            f"{what} has {frames} frames of {width}x{height} = {frames * width * height} pixels, more than "
            f"the {budget} allowed (comfyd service limit; COMFYD_MAX_VIDEO_PIXELS raises it)"
        )


def comfy_name(stem: str, counter: int, ext: str) -> str:
    """ComfyUI's own output names: `{stem}_{counter:05}_.{ext}`."""
    return f"{stem}_{counter:05}_.{ext}"


def save_new_file(
    base_dir: Path, filename_prefix: str, width: int, height: int, ext: str,
    write: Callable[[Path], None], name_of: Callable[[str, int, str], str] = comfy_name,
    start: int | None = None,
) -> tuple[str, str, int]:
    """Write an output through `write(tmp_path)`, then give it the first free name at or after
    the folder's next counter. Returns (file name, subfolder, counter).

    The encoder writes into a temporary file in the target folder (so nothing half-written ever
    carries an output name) whose suffix tells FFmpeg the container; the final name is claimed
    with a hard link, which fails instead of replacing a file another job just saved.
    """
    target = save_target(base_dir, expand_prefix_tokens(filename_prefix, width, height))
    target.folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.folder, prefix=".comfyd-save-", suffix=f".{ext}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        counter = start if start is not None else next_counter(target.folder, target.stem)
        for _ in range(_MAX_NAME_ATTEMPTS):
            name = name_of(target.stem, counter, ext)
            try:
                os.link(tmp, target.folder / name)
            except FileExistsError:
                counter += 1
                continue
            return name, target.subfolder, counter
        raise RuntimeError(f"no free file name for {target.stem!r} in {target.folder}")
    finally:
        tmp.unlink(missing_ok=True)


def open_input(path: Path, kind: str = "video") -> Any:
    """An av input container, with a clear error for a file FFmpeg cannot read."""
    av = av_module()
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaDecodeError(f"{path.name} is not a {kind} file comfyd can read: {exc}") from None
