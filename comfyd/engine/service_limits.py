"""comfyd's service limits on a workflow: node count, input limits and the pixel budget.

The pixel budget says how large an image a workflow may generate.

A job's cost grows with the area it samples, not with either side, so the limit is a number of
pixels per image (width x height of the latent, in pixels), 1024 x 1024 by default: SDXL's
1344 x 768 or 896 x 1152 fit, 2048 x 2048 does not. It applies to every node that sets a latent's
size (EmptyLatentImage, LatentUpscale, LatentUpscaleBy).

Validation sees literals only, so it follows links: a size given by a Primitive node counts, and a
LatentUpscaleBy (a hires second pass) multiplies the size of the latent it receives, traced back
through the nodes that keep a latent's size (samplers, masks, batch nodes, ...). What validation
cannot know (a latent encoded from an uploaded image, say) the node checks when it runs, with
`check_latent_pixels`.

The engine knows these nodes by class name only, as it knows SIZE_LIMITED_NODES: no node code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from comfyd.engine.graph import Graph, Link


@dataclass(frozen=True)
class InputLimit:
    """A comfyd limit on the literal INT input `input_name` of the nodes in `class_types`.

    The limits bound generation size (latent width/height, batch), so they apply to the nodes
    that create or resize latents, not to every input called `width` (ImageScale, SDXL size
    conditioning and the like keep ComfyUI's ranges).
    """

    input_name: str
    max: int | None = None
    multiple_of: int | None = None
    class_types: frozenset[str] = frozenset()
    # The variable that raises `max`, named in the error so the operator knows what to change.
    setting: str | None = None


# Nodes whose width/height/batch_size decide how much a job computes.
SIZE_LIMITED_NODES = frozenset({"EmptyLatentImage", "EmptySD3LatentImage", "LatentUpscale"})
DEFAULT_MAX_LATENT_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class ServiceLimits:
    """`max_latent_pixels` bounds width x height of every latent a workflow makes (the pixel
    budget, below); `input_limits` bound single inputs."""

    max_nodes: int = 100
    # Characters per STRING literal: a long prompt holds a worker in a step that cannot stop.
    max_text_chars: int = 100_000
    max_latent_pixels: int | None = DEFAULT_MAX_LATENT_PIXELS
    input_limits: tuple[InputLimit, ...] = (
        InputLimit("width", multiple_of=8, class_types=SIZE_LIMITED_NODES),
        InputLimit("height", multiple_of=8, class_types=SIZE_LIMITED_NODES),
        InputLimit("batch_size", max=4, class_types=SIZE_LIMITED_NODES, setting="COMFYD_MAX_BATCH_SIZE"),
    )

    @classmethod
    def from_settings(cls, settings: Any) -> ServiceLimits:
        """Limits from `Settings` (max_workflow_nodes, max_text_chars, max_latent_pixels,
        image_side_multiple, max_batch_size); a field the settings lack keeps its default."""
        default = cls()
        multiple = getattr(settings, "image_side_multiple", 8)
        return cls(
            max_nodes=getattr(settings, "max_workflow_nodes", default.max_nodes),
            max_text_chars=getattr(settings, "max_text_chars", default.max_text_chars),
            max_latent_pixels=getattr(settings, "max_latent_pixels", default.max_latent_pixels),
            input_limits=(
                InputLimit("width", multiple_of=multiple, class_types=SIZE_LIMITED_NODES),
                InputLimit("height", multiple_of=multiple, class_types=SIZE_LIMITED_NODES),
                InputLimit("batch_size", max=getattr(settings, "max_batch_size", 4), class_types=SIZE_LIMITED_NODES,
                           setting="COMFYD_MAX_BATCH_SIZE"),
            ),
        )

    def for_input(self, class_type: str, name: str) -> InputLimit | None:
        for limit in self.input_limits:
            if limit.input_name == name and class_type in limit.class_types:
                return limit
        return None


LATENT_FACTOR = 8
MIN_UPSCALE_PIXELS = 64
# Nodes whose output latent has the size of the latent on this input.
SIZE_PRESERVING_INPUT = {
    "KSampler": "latent_image",
    "KSamplerAdvanced": "latent_image",
    "SamplerCustom": "latent_image",
    "SamplerCustomAdvanced": "latent_image",
    "SetLatentNoiseMask": "samples",
    "LatentFromBatch": "samples",
    "RepeatLatentBatch": "samples",
    "LatentBatch": "samples1",
    "LatentAdd": "samples1",
    "LatentSubtract": "samples1",
    "LatentMultiply": "samples",
    "LatentBlend": "samples1",
    "LatentFlip": "samples",
    "LatentComposite": "samples_to",
    "LatentCompositeMasked": "destination",
}
# Nodes that pass their `value` literal on (ComfyUI's Primitive nodes).
PRIMITIVE_NODES = frozenset({"PrimitiveInt", "PrimitiveFloat"})
BUDGETED_NODES = frozenset({"EmptyLatentImage", "EmptySD3LatentImage", "LatentUpscale", "LatentUpscaleBy"})


class LatentTooLarge(ValueError):
    """A latent larger than the pixel budget; raised by nodes when they run."""


def budget_message(width: int, height: int, max_pixels: int) -> str:
    return (
        f"Value {width}x{height} ({width * height} pixels) bigger than max of {max_pixels} pixels "
        "(comfyd service limit; COMFYD_MAX_LATENT_PIXELS raises it)"
    )


def check_latent_pixels(settings: Any, width: int, height: int) -> None:
    """Raise LatentTooLarge when a width x height latent (in pixels) exceeds the budget."""
    max_pixels = getattr(settings, "max_latent_pixels", None)
    if max_pixels and width * height > max_pixels:
        raise LatentTooLarge(budget_message(width, height, max_pixels))


def upscaled_size(source: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """LatentUpscale's target in pixels: a zero side follows the aspect ratio, sides >= 64."""
    if width == 0 and height == 0:
        return source
    latent_w, latent_h = source[0] // LATENT_FACTOR, source[1] // LATENT_FACTOR
    if width == 0:
        height = max(MIN_UPSCALE_PIXELS, height)
        width = max(MIN_UPSCALE_PIXELS, round(latent_w * height / latent_h))
    elif height == 0:
        width = max(MIN_UPSCALE_PIXELS, width)
        height = max(MIN_UPSCALE_PIXELS, round(latent_h * width / latent_w))
    else:
        width, height = max(MIN_UPSCALE_PIXELS, width), max(MIN_UPSCALE_PIXELS, height)
    return (width // LATENT_FACTOR) * LATENT_FACTOR, (height // LATENT_FACTOR) * LATENT_FACTOR


def scaled_size(source: tuple[int, int], scale_by: float) -> tuple[int, int]:
    """LatentUpscaleBy's result in pixels (it rounds the latent's sides)."""
    return (
        round(source[0] / LATENT_FACTOR * scale_by) * LATENT_FACTOR,
        round(source[1] / LATENT_FACTOR * scale_by) * LATENT_FACTOR,
    )


class LatentSizes:
    """Static sizes (pixels) of the latents a graph makes, where literals decide them."""

    def __init__(self, graph: Graph, literal: Callable[[str, str], Any]) -> None:
        self.graph = graph
        self._literal = literal  # (node_id, input) -> converted literal, or None
        self._memo: dict[str, tuple[int, int] | None] = {}

    def value(self, node_id: str, name: str) -> Any:
        """The literal input, or the literal behind a link from a Primitive node."""
        node = self.graph.nodes.get(node_id)
        raw = node.inputs.get(name) if node is not None else None
        if isinstance(raw, Link):
            source = self.graph.nodes.get(raw.node_id)
            if source is not None and source.class_type in PRIMITIVE_NODES and raw.output == 0:
                value = source.inputs.get("value")
                return value if isinstance(value, int | float) and not isinstance(value, bool) else None
            return None
        return self._literal(node_id, name)

    def size(self, node_id: str, seen: frozenset[str] = frozenset()) -> tuple[int, int] | None:
        """(width, height) in pixels of `node_id`'s latent output, or None if unknown."""
        if node_id in self._memo:
            return self._memo[node_id]
        if node_id in seen:  # a cycle: validation reports it elsewhere
            return None
        seen = seen | {node_id}
        result = self._size(node_id, seen)
        self._memo[node_id] = result
        return result

    def _upstream(self, node_id: str, name: str, seen: frozenset[str]) -> tuple[int, int] | None:
        raw = self.graph.nodes[node_id].inputs.get(name)
        return self.size(raw.node_id, seen) if isinstance(raw, Link) and raw.node_id in self.graph else None

    def _size(self, node_id: str, seen: frozenset[str]) -> tuple[int, int] | None:
        node = self.graph.nodes.get(node_id)
        if node is None:
            return None
        kind = node.class_type
        if kind in ("EmptyLatentImage", "EmptySD3LatentImage"):
            w, h = self.value(node_id, "width"), self.value(node_id, "height")
            return (int(w), int(h)) if isinstance(w, int | float) and isinstance(h, int | float) else None
        if kind == "LatentUpscale":
            w, h = self.value(node_id, "width"), self.value(node_id, "height")
            if not (isinstance(w, int | float) and isinstance(h, int | float)):
                return None
            w, h = int(w), int(h)
            if w and h:
                return upscaled_size((w, h), w, h)
            source = self._upstream(node_id, "samples", seen)
            return upscaled_size(source, w, h) if source is not None else None
        if kind == "LatentUpscaleBy":
            scale = self.value(node_id, "scale_by")
            source = self._upstream(node_id, "samples", seen)
            if source is None or not isinstance(scale, int | float):
                return None
            return scaled_size(source, float(scale))
        through = SIZE_PRESERVING_INPUT.get(kind)
        return self._upstream(node_id, through, seen) if through is not None else None


def over_budget(sizes: LatentSizes, node_id: str, max_pixels: int | None) -> tuple[int, int] | None:
    """The (width, height) of a budgeted node's latent when it exceeds `max_pixels`, else None."""
    if not max_pixels or sizes.graph.nodes[node_id].class_type not in BUDGETED_NODES:
        return None
    size = sizes.size(node_id)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    return size
