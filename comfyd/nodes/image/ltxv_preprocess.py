"""LTXVPreprocess: each image through one frame of H.264 at the given CRF and back (ComfyUI's
comfy_extras/nodes_lt.py), so a clean start image looks like the compressed video frames
LTX-Video was trained on. The image is cut to even width and height, scaled to 0..255 and
truncated to bytes, encoded by libx264 (preset veryfast, yuv420p) in an in-memory mp4 and decoded
back to RGB / 255. Compression 0 returns the images unchanged.
"""

from __future__ import annotations

import io

import av
import numpy as np
import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node


def _through_h264(frame: np.ndarray, crf: int) -> np.ndarray:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = frame.shape[0], frame.shape[1]
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
        container.mux(stream.encode(picture))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        video = next(s for s in container.streams if s.type == "video")
        decoded = next(container.decode(video))
        return decoded.to_ndarray(format="rgb24")


def compress_image(image: torch.Tensor, crf: int) -> torch.Tensor:
    """One IMAGE frame [H, W, 3] through H.264 at `crf` (0: unchanged)."""
    if crf == 0:
        return image
    height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    if height == 0 or width == 0:
        raise ValueError("LTXVPreprocess needs images at least 2x2 pixels")
    data = (image[:height, :width] * 255.0).byte().cpu().numpy()
    return torch.tensor(_through_h264(data, crf), dtype=image.dtype, device=image.device) / 255.0


@register_node
class LTXVPreprocess(Node):
    schema = NodeSchema(
        class_type="LTXVPreprocess",
        inputs=(
            Link("image", "IMAGE"),
            Int("img_compression", default=35, min=0, max=100, step=None,
                tooltip="Amount of compression to apply on image."),
        ),  # fmt: skip
        outputs=(OutputSpec("IMAGE", "output_image"),),
        category="image",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, img_compression: int) -> tuple[torch.Tensor]:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError("image must be an RGB IMAGE [frames, height, width, 3]")
        return (torch.stack([compress_image(frame, img_compression) for frame in image]),)
