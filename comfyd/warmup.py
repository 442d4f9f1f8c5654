"""Warm-up: run one workflow at start, before the process reports READY.

The first job on a fresh GPU host pays for reading checkpoints from disk, moving them to the
device and CUDA's first-call costs (kernel loading, cuDNN/cuBLAS autotuning), which can be tens
of seconds. `COMFYD_WARMUP_WORKFLOW` names an API-format (or graph-form) workflow file; when it
is set, `run_warmup` executes it once with the process's own node registry and model manager,
so the models it loads stay loaded for the real jobs.

Where it runs: the runtime factory (`comfyd.runtime.build_runtime`, or whatever builds the
`JobRuntime` of a server or worker) calls `run_warmup(runtime, settings)` after building the
runtime and before returning it. The server reports STARTING on /health-check until the runtime
exists, so the container's HEALTHCHECK (and a load balancer) see READY only after the warm-up;
a failing warm-up (a missing checkpoint, say) fails setup (SETUP_FAILED) instead of serving
slow or broken first requests.

The warm-up writes nothing where real outputs live: its images go to a scratch directory that is
removed afterwards, and its node outputs are not cached (`NodeCache(max_bytes=0)`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyd.engine.jobs import JobRuntime
    from comfyd.settings import Settings

log = logging.getLogger("comfyd.warmup")


class WarmupError(RuntimeError):
    """The warm-up workflow could not be read, was invalid, or failed to execute."""


@dataclass
class WarmupReport:
    workflow: Path
    seconds: float
    node_timings: dict[str, float] = field(default_factory=dict)


def load_warmup_workflow(path: Path) -> dict[str, Any]:
    """The workflow in `path`; WarmupError naming the file when it is missing or not a JSON object."""
    from comfyd.engine.graph import read_workflow_file

    try:
        return read_workflow_file(path)
    except ValueError as exc:
        raise WarmupError(f"warm-up {exc}") from exc


def run_warmup(runtime: JobRuntime, settings: Settings, workflow_path: Path | None = None) -> WarmupReport | None:
    """Execute the warm-up workflow once; None when none is configured. Raises WarmupError."""
    path = workflow_path if workflow_path is not None else getattr(settings, "warmup_workflow", None)
    if path is None:
        return None
    path = Path(path)
    body = load_warmup_workflow(path)

    from comfyd.engine.cache import NodeCache
    from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError
    from comfyd.engine.executor import Executor

    with tempfile.TemporaryDirectory(prefix="comfyd-warmup-") as scratch_dir:
        scratch = Path(scratch_dir)
        (scratch / "output").mkdir()
        (scratch / "temp").mkdir()
        # Same model manager (models stay loaded); outputs land in the scratch directory.
        scratch_settings = settings.model_copy(update={"output_dir": scratch / "output", "temp_dir": scratch / "temp"})
        env = replace(runtime.env, settings=scratch_settings)
        try:
            request = runtime.parse(body)
            if runtime.validator is not None:
                runtime.validator(request, runtime.registry, env)
            else:
                from comfyd.engine.validate import validate_workflow

                validate_workflow(request, runtime.registry, env)
        except WorkflowParseError as exc:
            raise WarmupError(f"warm-up workflow {path}: {exc.message} {exc.details}".strip()) from exc
        except WorkflowValidationError as exc:
            raise WarmupError(f"warm-up workflow {path} is invalid: {json.dumps(exc.body)}") from exc

        started = time.perf_counter()
        executor = Executor(runtime.registry, env, cache=NodeCache(max_bytes=0))
        result = executor.execute(request, job_id=f"warmup-{uuid.uuid4().hex[:8]}")
        seconds = time.perf_counter() - started

    if result.status != "success":
        error = result.error or {}
        message = error.get("exception_message") or error.get("message") or result.status
        raise WarmupError(
            f"warm-up workflow {path} failed at node {error.get('node_id')} ({error.get('node_type')}): {message}"
        )
    log.info("warm-up workflow %s ran in %.2f s", path, seconds)
    return WarmupReport(workflow=path, seconds=seconds, node_timings=dict(result.node_timings))
