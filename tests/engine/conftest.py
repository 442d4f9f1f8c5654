"""Fake nodes for engine tests: the schemas of ComfyUI's default graph, no models.

Every test gets a private NodeRegistry with fresh node classes bound to a `Recorder`, which counts
calls and records when each node ran (for the parallel-overlap and cache tests).
"""

from __future__ import annotations

import copy
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import (
    Combo,
    Float,
    InputSpec,
    Int,
    Link,
    Node,
    NodeOutput,
    NodeRegistry,
    NodeSchema,
    OutputSpec,
    String,
)
from comfyd.settings import Settings

CHECKPOINTS = ["sd15_random.safetensors"]
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
SCHEDULERS = ["normal", "karras", "simple"]

DEFAULT_PROMPT: dict[str, Any] = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 42,
            "steps": 3,
            "cfg": 8.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15_random.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "cyberpunk city", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


@dataclass
class Recorder:
    calls: Counter[str] = field(default_factory=Counter)  # node id -> times run
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # node id -> (start, end)
    kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id -> last run's inputs
    sleep: dict[str, float] = field(default_factory=dict)  # class_type -> seconds to sleep in run
    fail: dict[str, BaseException] = field(default_factory=dict)  # class_type -> raise this
    on_step: Any = None  # callable(step) inside the sampler loop
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, ctx: NodeContext, kwargs: dict[str, Any]) -> float:
        with self.lock:
            self.calls[ctx.node_id] += 1
            self.kwargs[ctx.node_id] = kwargs
        if ctx.class_type in self.fail:
            raise self.fail[ctx.class_type]
        return time.perf_counter()

    def leave(self, ctx: NodeContext, start: float) -> None:
        delay = self.sleep.get(ctx.class_type, 0.0)
        if delay:
            time.sleep(delay)
        with self.lock:
            self.spans[ctx.node_id] = (start, time.perf_counter())


@dataclass
class Fake:
    registry: NodeRegistry
    env: NodeEnvironment
    rec: Recorder


def make_fake(tmp_path: Any) -> Fake:
    rec = Recorder()
    registry = NodeRegistry()

    @registry.register
    class CheckpointLoaderSimple(Node):
        schema = NodeSchema(
            class_type="CheckpointLoaderSimple",
            inputs=(Combo("ckpt_name", lambda env: list(CHECKPOINTS)),),
            outputs=(OutputSpec("MODEL"), OutputSpec("CLIP"), OutputSpec("VAE")),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
            start = rec.enter(ctx, kw)
            rec.leave(ctx, start)
            name = kw["ckpt_name"]
            return (("model", name), ("clip", name), ("vae", name))

    @registry.register
    class CLIPTextEncode(Node):
        schema = NodeSchema(
            class_type="CLIPTextEncode",
            inputs=(String("text", multiline=True), Link("clip", "CLIP")),
            outputs=(OutputSpec("CONDITIONING"),),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
            start = rec.enter(ctx, kw)
            rec.leave(ctx, start)
            value = float(sum(map(ord, kw["text"])) % 997)
            return ([[torch.full((1, 2, 4), value), {"pooled_output": None}]],)

    @registry.register
    class EmptyLatentImage(Node):
        schema = NodeSchema(
            class_type="EmptyLatentImage",
            inputs=(
                Int("width", 512, min=16, max=16384, step=8),
                Int("height", 512, min=16, max=16384, step=8),
                Int("batch_size", 1, min=1, max=4096),
            ),
            outputs=(OutputSpec("LATENT"),),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
            start = rec.enter(ctx, kw)
            rec.leave(ctx, start)
            return ({"samples": torch.zeros(kw["batch_size"], 4, kw["height"] // 8, kw["width"] // 8)},)

    @registry.register
    class KSampler(Node):
        schema = NodeSchema(
            class_type="KSampler",
            inputs=(
                Link("model", "MODEL"),
                Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                InputSpec("steps", "INT", default=20, min=1, max=10000),
                Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
                Combo("sampler_name", SAMPLERS),
                Combo("scheduler", SCHEDULERS),
                Link("positive", "CONDITIONING"),
                Link("negative", "CONDITIONING"),
                Link("latent_image", "LATENT"),
                Float("denoise", 1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=(OutputSpec("LATENT"),),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
            start = rec.enter(ctx, kw)
            generator = torch.Generator().manual_seed(kw["seed"])
            samples = kw["latent_image"]["samples"].clone()
            for step in range(kw["steps"]):
                if rec.on_step is not None:
                    rec.on_step(step)
                samples += torch.randn(samples.shape, generator=generator) * kw["cfg"]
                samples += kw["positive"][0][0].mean() - kw["negative"][0][0].mean()
                ctx.progress(step + 1, kw["steps"])
            rec.leave(ctx, start)
            return ({"samples": samples},)

    @registry.register
    class VAEDecode(Node):
        schema = NodeSchema(
            class_type="VAEDecode",
            inputs=(Link("samples", "LATENT"), Link("vae", "VAE")),
            outputs=(OutputSpec("IMAGE"),),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> tuple[Any, ...]:
            start = rec.enter(ctx, kw)
            rec.leave(ctx, start)
            return (torch.sigmoid(kw["samples"]["samples"][:, :3].permute(0, 2, 3, 1)),)

    @registry.register
    class SaveImage(Node):
        schema = NodeSchema(
            class_type="SaveImage",
            inputs=(Link("images", "IMAGE"), String("filename_prefix", "ComfyUI")),
            output_node=True,
            hidden=("PROMPT", "EXTRA_PNGINFO"),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
            start = rec.enter(ctx, kw)
            rec.leave(ctx, start)
            count = rec.calls[ctx.node_id]
            name = f"{kw['filename_prefix']}_{count:05}_.png"
            return NodeOutput(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})

    @registry.register
    class PreviewAny(Node):
        """An output node with an optional input and a UNIQUE_ID hidden input."""

        schema = NodeSchema(
            class_type="PreviewAny",
            inputs=(Link("source", "*", optional=True), String("label", "x", optional=True)),
            output_node=True,
            hidden=("UNIQUE_ID",),
        )

        def run(self, ctx: NodeContext, **kw: Any) -> NodeOutput:
            start = rec.enter(ctx, kw)
            rec.leave(ctx, start)
            return NodeOutput(ui={"text": [sorted(kw)]})

    settings = Settings(
        output_dir=tmp_path / "out", input_dir=tmp_path / "in", models_dir=tmp_path / "models"
    )
    return Fake(registry=registry, env=NodeEnvironment(settings), rec=rec)


@pytest.fixture
def fake(tmp_path: Any) -> Fake:
    return make_fake(tmp_path)


@pytest.fixture
def default_prompt() -> dict[str, Any]:
    return copy.deepcopy(DEFAULT_PROMPT)


class EventLog:
    """A thread-safe listener that keeps every event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((event, data))

    def types(self) -> list[str]:
        return [event for event, _ in self.events]

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == event_type]


@pytest.fixture
def events() -> EventLog:
    return EventLog()
