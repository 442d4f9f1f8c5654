"""Put `generate_image`'s parameters (prompt, seed, size, steps, ...) into any text-to-image
workflow: found by following the sampler's links, in API format and in the graph form alike.

A parameter that has no place in the workflow raises WorkflowParamError naming it: a caller who
asked for a seed must not silently get another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SAMPLERS = ("KSampler", "KSamplerAdvanced")
SEED_INPUT = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed"}
LATENT_SOURCES = ("EmptyLatentImage", "EmptySD3LatentImage")
TEXT_ENCODERS = ("CLIPTextEncode",)
CHECKPOINT_LOADERS = ("CheckpointLoaderSimple",)


class WorkflowParamError(ValueError):
    """A parameter cannot be placed into the given workflow."""


@dataclass
class GenerationParams:
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    checkpoint: str | None = None


def _nodes(workflow: dict[str, Any]) -> dict[str, Any]:
    for key in ("nodes", "prompt"):
        if isinstance(workflow.get(key), dict):
            return workflow[key]
    return workflow


def _upstream(workflow: dict[str, Any], node_id: str, input_name: str) -> str | None:
    """The node feeding `input_name` of `node_id`, in either workflow form."""
    node = _nodes(workflow).get(node_id) or {}
    value = (node.get("inputs") or {}).get(input_name)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int):
        return str(value[0])
    for edge in workflow.get("edges", []) if isinstance(workflow.get("edges"), list) else []:
        if isinstance(edge, dict) and str(edge.get("to")) == node_id and edge.get("to_input") == input_name:
            return str(edge.get("from"))
    return None


def find_sampler(workflow: dict[str, Any], node_id: str | None) -> str:
    """The sampler node: `node_id` when it is one, else the workflow's only sampler."""
    nodes = _nodes(workflow)
    if node_id is not None and (nodes.get(node_id) or {}).get("class_type") in SAMPLERS:
        return node_id
    samplers = [nid for nid, n in nodes.items() if isinstance(n, dict) and n.get("class_type") in SAMPLERS]
    if len(samplers) != 1:
        found = "no sampler node" if not samplers else f"{len(samplers)} sampler nodes ({', '.join(samplers)})"
        raise WorkflowParamError(
            f"the workflow has {found}; pass node_id of the KSampler the parameters are for, "
            "or set the values in the workflow itself"
        )
    return samplers[0]


def _set(workflow: dict[str, Any], node_id: str, name: str, value: Any) -> None:
    _nodes(workflow)[node_id].setdefault("inputs", {})[name] = value


def _text_node(workflow: dict[str, Any], sampler: str, input_name: str, what: str) -> str:
    source = _upstream(workflow, sampler, input_name)
    node = _nodes(workflow).get(source) if source is not None else None
    if not isinstance(node, dict) or node.get("class_type") not in TEXT_ENCODERS:
        raise WorkflowParamError(
            f"cannot set {what}: the {input_name} input of sampler node {sampler} does not come "
            "straight from a CLIPTextEncode node; edit that node's text in the workflow instead"
        )
    return str(source)


def apply_params(workflow: dict[str, Any], params: GenerationParams, node_id: str | None = None) -> None:
    """Write every parameter that is not None into the workflow (in place)."""
    values = {k: v for k, v in vars(params).items() if v is not None}
    if not values:
        return
    nodes = _nodes(workflow)
    if params.checkpoint is not None:
        loaders = [nid for nid, n in nodes.items() if isinstance(n, dict) and n.get("class_type") in CHECKPOINT_LOADERS]
        if not loaders:
            raise WorkflowParamError("cannot set checkpoint: the workflow has no CheckpointLoaderSimple node")
        for loader in loaders:
            _set(workflow, loader, "ckpt_name", params.checkpoint)
    if set(values) == {"checkpoint"}:
        return
    sampler = find_sampler(workflow, node_id)
    sampler_type = nodes[sampler]["class_type"]
    if params.prompt is not None:
        _set(workflow, _text_node(workflow, sampler, "positive", "prompt"), "text", params.prompt)
    if params.negative_prompt is not None:
        _set(workflow, _text_node(workflow, sampler, "negative", "negative_prompt"), "text", params.negative_prompt)
    if params.seed is not None:
        _set(workflow, sampler, SEED_INPUT[sampler_type], params.seed)
    if params.steps is not None:
        _set(workflow, sampler, "steps", params.steps)
    if params.cfg is not None:
        _set(workflow, sampler, "cfg", params.cfg)
    if params.width is not None or params.height is not None:
        source = _upstream(workflow, sampler, "latent_image")
        latent = nodes.get(source) if source is not None else None
        if not isinstance(latent, dict) or latent.get("class_type") not in LATENT_SOURCES:
            raise WorkflowParamError(
                f"cannot set width/height: the latent_image of sampler node {sampler} does not come "
                "straight from an EmptyLatentImage node (an img2img workflow takes its size from the image)"
            )
        if params.width is not None:
            _set(workflow, str(source), "width", params.width)
        if params.height is not None:
            _set(workflow, str(source), "height", params.height)
