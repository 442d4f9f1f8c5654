"""VideoHelperSuite's output formats that comfyd encodes, with the per-format options ("format
widgets") VHS shows for each, and how comfyd maps them onto PyAV.

VHS runs an ffmpeg binary with a JSON recipe per format; comfyd encodes the same codecs through
PyAV: RGB input converted to BT.709 limited-range YUV and tagged BT.709 (VHS's
`scale=out_color_matrix=bt709` and `-color_range tv -colorspace bt709 ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class VideoFormat:
    codec: str
    extension: str
    pix_fmts: tuple[str, ...]
    crf_default: int
    audio_codec: str
    options: dict[str, str] = field(default_factory=dict)
    trim_to_audio: bool = True  # whether VHS offers the trim_to_audio widget
    color_depth: bool = False  # whether VHS offers input_color_depth (8bit / 16bit frames in)

    def widgets(self) -> list[list[Any]]:
        """What VHS's /object_info shows for the format's extra inputs."""
        widgets: list[list[Any]] = [
            ["pix_fmt", list(self.pix_fmts)],
            ["crf", "INT", {"default": self.crf_default, "min": 0, "max": 100, "step": 1}],
        ]
        if self.color_depth:
            widgets.append(["input_color_depth", ["8bit", "16bit"]])
        widgets.append(["save_metadata", "BOOLEAN", {"default": True}])
        if self.trim_to_audio:
            widgets.append(["trim_to_audio", "BOOLEAN", {"default": False}])
        return widgets


# VHS's own format files video_formats/<name>.json, the ones comfyd implements. VHS's webm muxes
# audio as Vorbis, which PyAV's FFmpeg lacks: comfyd uses Opus there.
VIDEO_FORMATS: dict[str, VideoFormat] = {
    "video/h264-mp4": VideoFormat("libx264", "mp4", ("yuv420p", "yuv420p10le"), 19, "aac"),
    "video/h265-mp4": VideoFormat("libx265", "mp4", ("yuv420p10le", "yuv420p"), 22, "aac",
                                  {"preset": "medium", "x265-params": "log-level=quiet", "tag": "hvc1"},
                                  trim_to_audio=False),
    "video/webm": VideoFormat("libvpx-vp9", "webm", ("yuv420p", "yuva420p"), 20, "libopus", {"b": "0"}),
    "video/av1-webm": VideoFormat("libsvtav1", "webm", ("yuv420p10le", "yuv420p"), 23, "libopus",
                                  trim_to_audio=False, color_depth=True),
}
IMAGE_FORMATS = ("image/gif", "image/webp")
FORMAT_CHOICES = [*IMAGE_FORMATS, *VIDEO_FORMATS]


def format_widgets() -> dict[str, list[list[Any]]]:
    widgets = {name: fmt.widgets() for name, fmt in VIDEO_FORMATS.items()}
    widgets["image/webp"] = [["lossless", "BOOLEAN", {"default": True}]]
    return widgets


def widget_value(widgets: list[list[Any]], raw: dict[str, Any], name: str) -> Any:
    """A format option from the node's raw inputs, else its default (VHS's fallback order)."""
    for widget in widgets:
        if widget[0] != name:
            continue
        if name in raw:
            value = raw[name]
            if isinstance(value, list):
                raise ValueError(f"format option {name!r} given by a link is not supported; give it as a value")
            if isinstance(widget[1], list) and value not in widget[1]:
                raise ValueError(f"format option {name}={value!r} is not one of {widget[1]}")
            return value
        if len(widget) > 2 and "default" in widget[2]:
            return widget[2]["default"]
        return widget[1][0] if isinstance(widget[1], list) else {"BOOLEAN": False, "INT": 0}[widget[1]]
    raise KeyError(name)
