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


class CheckpointChoiceError(ValueError):
    """The workflow's checkpoint is absent and comfyd will not guess which other one to load."""


def _listing(names: list[str], limit: int = 12) -> str:
    if not names:
        return "no checkpoint is there"
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return f"available: {shown}"


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
        from comfyd.models.threads import configure_cpu_threads

        self.settings = settings or Settings()
        configure_cpu_threads(self.settings, concurrent_jobs=1)
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

    def resolve_checkpoint(self, workflow: dict[str, Any], ckpt: str | None = None) -> str | None:
        """Settle which checkpoint the workflow's CheckpointLoaderSimple nodes load.

        - `ckpt` given: every such loader loads it (CheckpointChoiceError if no root has it).
        - The workflow names the default SD1.5 file, which is absent, and other checkpoints
          exist: CheckpointChoiceError listing them (never a silent pick).
        - No checkpoint at all: the tiny random-weight model, written into comfyd's own models
          folder (`home/models`), never into a models folder the user named; returns a notice
          saying so (its images are noise).
        """
        names = self.env.models.list_files("checkpoints")
        loaders = [n for n in workflow_nodes(workflow).values()
                   if isinstance(n, dict) and n.get("class_type") == "CheckpointLoaderSimple"]
        if ckpt is not None:
            if ckpt not in names:
                raise CheckpointChoiceError(
                    f"checkpoint {ckpt!r} is not in {self._checkpoint_dirs()}; {_listing(names)}"
                )
            for node in loaders:
                node.setdefault("inputs", {})["ckpt_name"] = ckpt
            return None
        missing = [n for n in loaders if n.get("inputs", {}).get("ckpt_name") == DEFAULT_CHECKPOINT]
        if not missing or DEFAULT_CHECKPOINT in names:
            return None
        others = [n for n in names if n != TINY_CHECKPOINT]
        if others:
            raise CheckpointChoiceError(
                f"{DEFAULT_CHECKPOINT} (the workflow's checkpoint) is not in {self._checkpoint_dirs()}; "
                f"{_listing(others)}. Choose one with --ckpt NAME (ckpt_name in /v1/generate, "
                "checkpoint= in generate_image) or name it in the workflow."
            )
        own_root = Path(self.settings.home).expanduser() / "models"
        if TINY_CHECKPOINT not in names:
            folder = own_root / "checkpoints"
            if not (folder / TINY_CHECKPOINT).is_file():
                from comfyd.models.tiny import make_tiny_checkpoint

                made = make_tiny_checkpoint(folder, family="sd1", fmt="single", seed=0)
                if made.name != TINY_CHECKPOINT:
                    made.rename(folder / TINY_CHECKPOINT)
            self._add_model_root(own_root)
        for node in missing:
            node["inputs"]["ckpt_name"] = TINY_CHECKPOINT
        return (
            f"{DEFAULT_CHECKPOINT} is not in {self._checkpoint_dirs()}, so this run uses the tiny "
            f"random-weight model {TINY_CHECKPOINT} (in {own_root / 'checkpoints'}): its images are "
            "noise, not pictures. For real images pass --models-dir (or set COMFYD_MODELS_DIR) to "
            "a ComfyUI models folder holding a checkpoint, and --ckpt NAME to pick one."
        )

    # The name this method had before it could refuse; kept for callers of the library.
    ensure_default_checkpoint = resolve_checkpoint

    def _checkpoint_dirs(self) -> str:
        roots = self.env.models.paths.roots
        return ", ".join(str(Path(r).resolve() / "checkpoints") for r in roots)

    def _add_model_root(self, root: Path) -> None:
        """Search `root` too (after the configured ones): where the tiny model was written."""
        from comfyd.models.paths import ModelPaths

        roots = tuple(self.env.models.paths.roots)
        if Path(root) not in [Path(r) for r in roots]:
            self.env.models.paths = ModelPaths((*roots, Path(root)))

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
        from comfyd.engine.job_views import OUTPUT_FILE_KEYS

        for node_id, ui in outputs.items():
            for image in (f for key in OUTPUT_FILE_KEYS for f in (ui or {}).get(key, [])):
                root = roots.get(image.get("type", "output"), self.env.output_dir)
                path = root / image.get("subfolder", "") / image["filename"]
                files.append(ImageFile(node_id, image["filename"], image.get("subfolder", ""), image.get("type", "output"), path))
        return files


ProgressFn = Callable[[int, int], None]


def generate_image(
    prompt: str | None = None,
    workflow: dict[str, Any] | None = None,
    node_id: str | None = None,
    execution_mode: str = "sequential",
    *,
    negative_prompt: str | None = None,
    seed: int | None = None,
    width: int | None = None,
    height: int | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    checkpoint: str | None = None,
    settings: Settings | None = None,
    listener: Listener | None = None,
    progress: ProgressFn | bool | None = None,
    runner: LocalRunner | None = None,
) -> RunResult:
    """Run a text-to-image workflow (ComfyUI's default graph unless `workflow` is given).

    `prompt`, `negative_prompt`, `seed`, `width`, `height`, `steps`, `cfg` and `checkpoint`
    are written into the workflow, the given one too: into the text encoders feeding the
    sampler (node `node_id`, or the workflow's only KSampler), the sampler, its
    EmptyLatentImage and every CheckpointLoaderSimple. A parameter with no place in the
    workflow raises `WorkflowParamError`; parameters left at None keep the workflow's values.

    `progress`: a callable `(step, total)` called per sampler step; by default a tqdm bar is
    shown when stderr is a terminal (`progress=False`: none).

    Without `runner`, the call builds a runner from `settings`, runs, and frees its models, so
    nothing stays loaded afterwards. To keep models warm across calls, hold a runner:

        with LocalRunner(settings) as runner:
            for text in ("a red fox", "a blue fox"):
                generate_image(text, runner=runner)
    """
    from comfyd.workflow_params import GenerationParams

    params = GenerationParams(prompt, negative_prompt, seed, width, height, steps, cfg, checkpoint)
    if runner is None:
        with LocalRunner(settings) as own:
            return _generate(own, params, workflow, node_id, execution_mode, listener, progress)
    if settings is not None and settings is not runner.settings:
        raise ValueError("pass either settings or a runner: the runner already has its settings")
    return _generate(runner, params, workflow, node_id, execution_mode, listener, progress)


def _generate(
    runner: LocalRunner,
    params: Any,
    workflow: dict[str, Any] | None,
    node_id: str | None,
    execution_mode: str,
    listener: Listener | None,
    progress: ProgressFn | bool | None,
) -> RunResult:
    from comfyd.workflow_formats import api_prompt_from_ui, is_ui_workflow
    from comfyd.workflow_params import apply_params

    extra_data = None
    if workflow is None:
        workflow = default_workflow(params.prompt if params.prompt is not None else DEFAULT_PROMPT)
        node_id = node_id or "3"
    elif is_ui_workflow(workflow):  # converted first, so the parameters find their nodes
        extra_data = {"extra_pnginfo": {"workflow": workflow}}  # saved PNGs carry the UI graph
        workflow = api_prompt_from_ui(workflow, runner.registry)
    else:
        workflow = copy.deepcopy(workflow)
    apply_params(workflow, params, node_id)
    if params.checkpoint is None:
        notice = runner.resolve_checkpoint(workflow)
        if notice:
            log.warning(notice)
    bar = _progress_listener(progress)
    try:
        def both(event: str, data: dict[str, Any]) -> None:
            if bar is not None:
                bar(event, data)
            if listener is not None:
                listener(event, data)

        return runner.run(workflow, node_id=node_id, execution_mode=execution_mode, listener=both,
                          extra_data=extra_data)
    finally:
        if bar is not None:
            bar("closed", {})


def _progress_listener(progress: ProgressFn | bool | None) -> Listener | None:
    """Sampler steps to a callback, or to a tqdm bar when stderr is a terminal."""
    import sys

    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    if callable(progress):
        callback = progress

        def to_callback(event: str, data: dict[str, Any]) -> None:
            if event == "progress":
                callback(int(data["value"]), int(data["max"]))

        return to_callback
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None}

    def to_bar(event: str, data: dict[str, Any]) -> None:
        bar = state["bar"]
        if event == "progress":
            if bar is None or data["value"] < bar.n:
                if bar is not None:
                    bar.close()
                bar = state["bar"] = tqdm(total=data["max"], desc=f"node {data.get('node')}", unit="step")
            bar.update(data["value"] - bar.n)
            if data["value"] >= data["max"]:
                bar.close()
                state["bar"] = None
        elif event in ("executing", "closed") and bar is not None:
            bar.close()
            state["bar"] = None

    return to_bar
