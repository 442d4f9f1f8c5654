"""Run one workflow in this process: what `comfyd run` and `comfyd.generate_image` use.

No queue, no HTTP: parse -> validate -> execute with the real nodes and a model manager that
stays alive between runs of the same `LocalRunner` (so a second run reuses loaded models and
the node-output cache). The caller owns a runner and decides when its models go: there is no
module-level runner.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from comfyd.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "cyberpunk city"
DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
TINY_CHECKPOINT = "comfyd-tiny-sd1.safetensors"

Listener = Callable[[str, dict[str, Any]], None]


def default_workflow(prompt: str = DEFAULT_PROMPT) -> dict[str, Any]:
    """ComfyUI's default text-to-image graph in API format, with `prompt` as positive text."""
    text = resources.files("comfyd.workflows").joinpath("default_api.json").read_text()
    workflow = json.loads(text)
    workflow["6"]["inputs"]["text"] = prompt
    return workflow


def workflow_nodes(workflow: dict[str, Any]) -> dict[str, Any]:
    """The node dict of a workflow in any accepted form (bare, `{"prompt": ...}`, graph form)."""
    for key in ("nodes", "prompt"):
        if isinstance(workflow.get(key), dict):
            return workflow[key]
    return workflow


def apply_sets(workflow: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply `NODE.INPUT=VALUE` overrides (`6.text="a red fox"`, `3.seed=7`).

    VALUE is read as JSON when it parses (numbers, quoted strings, lists), else as a string.
    """
    prompt = workflow_nodes(workflow)
    for item in sets:
        target, sep, raw = item.partition("=")
        node_id, dot, input_name = target.partition(".")
        if not sep or not dot or not node_id or not input_name:
            raise ValueError(f"--set {item!r}: expected NODE.INPUT=VALUE, e.g. 6.text=\"a red fox\"")
        if node_id not in prompt:
            raise ValueError(f"--set {item!r}: the workflow has no node {node_id!r}")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prompt[node_id].setdefault("inputs", {})[input_name] = value
    return workflow


@dataclass
class ImageFile:
    node_id: str
    filename: str
    subfolder: str
    type: str
    path: Path


@dataclass
class RunResult:
    """The outcome of one workflow run."""

    job_id: str
    status: str  # success | error | interrupted
    images: list[ImageFile] = field(default_factory=list)
    node_timings: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def paths(self) -> list[Path]:
        return [image.path for image in self.images]


class LocalRunner:
    """Executes workflows in-process with the real nodes.

    Reuse one instance across runs to keep models loaded and node outputs cached; `close()`, or
    leaving a `with LocalRunner(...) as runner:` block, frees them.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        # Heavy imports happen here, not at module import, so `comfyd --help` stays fast.
        import comfyd.nodes  # noqa: F401  (registers every node)
        from comfyd.compat.loader import node_registry
        from comfyd.engine.cache import NodeCache
        from comfyd.engine.context import NodeEnvironment
        from comfyd.engine.executor import Executor
        from comfyd.models.manager import ModelManager

        self.settings = settings or Settings()
        self.env = NodeEnvironment(self.settings, models=ModelManager(self.settings))
        self.registry = node_registry(self.settings, self.env)  # built-in nodes + custom nodes
        self.executor = Executor(self.registry, self.env, cache=NodeCache(max_bytes=self.settings.node_cache_bytes))

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop cached node outputs and loaded models. The runner stays usable: a later run
        loads what it needs again."""
        self.executor.cache.clear()
        self.env.models.free()

    def ensure_default_checkpoint(self, workflow: dict[str, Any]) -> str | None:
        """If the workflow names the default SD1.5 file and it is absent, use the tiny model.

        Returns a notice for the user when it substituted (random weights draw noise).
        """
        from comfyd.models.tiny import make_tiny_checkpoint

        names = self.env.models.list_files("checkpoints")
        nodes = workflow_nodes(workflow).values()
        loaders = [n for n in nodes if isinstance(n, dict) and n.get("class_type") == "CheckpointLoaderSimple"]
        missing = [n for n in loaders if n.get("inputs", {}).get("ckpt_name") == DEFAULT_CHECKPOINT]
        if not missing or DEFAULT_CHECKPOINT in names:
            return None
        if TINY_CHECKPOINT not in names:
            folder = Path(self.settings.models_dir) / "checkpoints"
            made = make_tiny_checkpoint(folder, family="sd1", fmt="single", seed=0)
            if made.name != TINY_CHECKPOINT:
                made.rename(folder / TINY_CHECKPOINT)
        for node in missing:
            node["inputs"]["ckpt_name"] = TINY_CHECKPOINT
        models_dir = Path(self.settings.models_dir).resolve()
        return (
            f"{DEFAULT_CHECKPOINT} is not in {models_dir}/checkpoints, so this run uses the tiny "
            f"random-weight model {TINY_CHECKPOINT}: its images are noise, not pictures. For real "
            f"images put a checkpoint in {models_dir}/checkpoints (or pass --models-dir / set "
            "COMFYD_MODELS_DIR to a ComfyUI models folder) and name it in the workflow."
        )

    def run(
        self,
        workflow: dict[str, Any],
        *,
        node_id: str | None = None,
        execution_mode: str | None = None,
        extra_data: dict[str, Any] | None = None,
        listener: Listener | None = None,
        interrupt: threading.Event | None = None,
        job_id: str | None = None,
    ) -> RunResult:
        """Validate and execute; raises WorkflowParseError / WorkflowValidationError on bad input."""
        from comfyd.engine.graph import parse_workflow
        from comfyd.engine.validate import validate_workflow

        body = copy.deepcopy(workflow)
        request = parse_workflow(body)
        if node_id is not None:
            request.node_id = node_id
        if execution_mode is not None:
            request.execution_mode = execution_mode
        validate_workflow(request, self.registry, self.env)
        job_id = job_id or str(uuid.uuid4())
        started = time.perf_counter()
        result = self.executor.execute(
            request,
            job_id=job_id,
            listener=listener or (lambda event, data: None),
            interrupt=interrupt or threading.Event(),
            extra_data=extra_data or {},
        )
        return RunResult(
            job_id=job_id,
            status=result.status,
            images=self._image_files(result.outputs),
            node_timings=dict(result.node_timings),
            cached=list(result.cached),
            outputs=dict(result.outputs),
            values=dict(result.values),
            error=result.error,
            seconds=time.perf_counter() - started,
        )

    def _image_files(self, outputs: dict[str, Any]) -> list[ImageFile]:
        roots = {"output": self.env.output_dir, "temp": self.env.temp_dir, "input": self.env.input_dir}
        files = []
        for node_id, ui in outputs.items():
            for image in (ui or {}).get("images", []):
                root = roots.get(image.get("type", "output"), self.env.output_dir)
                path = root / image.get("subfolder", "") / image["filename"]
                files.append(ImageFile(node_id, image["filename"], image.get("subfolder", ""), image.get("type", "output"), path))
        return files


def generate_image(
    prompt: str = DEFAULT_PROMPT,
    workflow: dict[str, Any] | None = None,
    node_id: str = "3",
    execution_mode: str = "sequential",
    *,
    negative_prompt: str | None = None,
    seed: int | None = None,
    settings: Settings | None = None,
    listener: Listener | None = None,
    runner: LocalRunner | None = None,
) -> RunResult:
    """Run a text-to-image workflow (ComfyUI's default graph unless `workflow` is given).

    `prompt` replaces the text of the positive CLIPTextEncode feeding node `node_id` when the
    workflow is the default one; a custom workflow runs as given.

    Without `runner`, the call builds a runner from `settings`, runs, and frees its models, so
    nothing stays loaded afterwards. To keep models warm across calls, hold a runner:

        with LocalRunner(settings) as runner:
            for text in ("a red fox", "a blue fox"):
                generate_image(text, runner=runner)
    """
    if runner is None:
        with LocalRunner(settings) as own:
            return _generate(own, prompt, workflow, node_id, execution_mode, negative_prompt, seed, listener)
    if settings is not None and settings is not runner.settings:
        raise ValueError("pass either settings or a runner: the runner already has its settings")
    return _generate(runner, prompt, workflow, node_id, execution_mode, negative_prompt, seed, listener)


def _generate(
    runner: LocalRunner,
    prompt: str,
    workflow: dict[str, Any] | None,
    node_id: str,
    execution_mode: str,
    negative_prompt: str | None,
    seed: int | None,
    listener: Listener | None,
) -> RunResult:
    if workflow is None:
        workflow = default_workflow(prompt)
        if negative_prompt is not None:
            workflow["7"]["inputs"]["text"] = negative_prompt
        if seed is not None:
            workflow["3"]["inputs"]["seed"] = seed
        notice = runner.ensure_default_checkpoint(workflow)
        if notice:
            log.warning(notice)
    return runner.run(workflow, node_id=node_id, execution_mode=execution_mode, listener=listener)
