"""AWS Lambda entry point: `comfyd.lambda_handler.handler` (Dockerfile.lambda's CMD).

One function, three kinds of event:

- API Gateway proxy events, REST API (payload v1) or HTTP API (payload v2): served by the same
  FastAPI application as `comfyd serve` (`comfyd.server.create_app`), called in-process through
  `comfyd.lambda_asgi`. Submitting routes enqueue to SQS; GPU workers run the jobs.
- SQS batches (an event source mapping on comfyd's queues): each message names a job, which
  `comfyd.engine.jobs.run_job` executes on the function's CPU. Failed messages are reported in
  `batchItemFailures` (the mapping needs `FunctionResponseTypes: [ReportBatchItemFailures]`), so
  only they come back; a job that will be retried is made visible again after its backoff.
- A direct invocation `{"workflow": ..., "node_id": ...}`: validates and runs the workflow in the
  function and returns the job's result (status, outputs, output URLs, timings).

Cold start: importing this module loads the settings and the ASGI adapter only (no torch, no
FastAPI); the API routes load FastAPI on their first request; torch and the nodes load only when
something needs the node registry (validating or executing a workflow). What one execution
environment builds (backends, app, executor) is kept for its later invocations.

Lambda's limits shape the defaults: only /tmp is writable, so relative output/input/temp/spool/
database paths are placed under /tmp/comfyd; an invocation lasts at most 15 minutes, so a job's
wall-time budget is cut to the time the invocation has left (minus a margin to store results);
there is no GPU (`COMFYD_DEVICE=cpu`).
"""

from __future__ import annotations

import atexit
import base64
import json
import logging
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfyd.lambda_asgi import (
    AsgiBridge,
    ProxyEventError,
    ProxyRequest,
    ProxyResponse,
    is_http_api_event,
    is_rest_api_event,
)
from comfyd.lambda_batch import BatchRecordQueue, band_of
from comfyd.settings import HOME_PATHS, Settings

if TYPE_CHECKING:
    from comfyd.engine.interfaces import JobRecord
    from comfyd.engine.jobs import JobOutcome, JobRuntime
    from comfyd.runtime import Services

log = logging.getLogger("comfyd.lambda")

LAMBDA_SCRATCH = Path("/tmp/comfyd")
# Settings naming places comfyd writes to; relative ones are anchored in LAMBDA_SCRATCH.
WRITABLE_PATH_FIELDS = ("output_dir", "input_dir", "temp_dir", "spool_dir", "db_path")
# Time kept back from a job's budget to store its outputs and final state before Lambda's deadline.
FINISH_MARGIN_S = 20.0
# A job is not started with less time than this left in the invocation: its message goes back.
MIN_JOB_BUDGET_S = 10.0
# Lambda's synchronous response payload limit is 6 MB; inline images stop short of it.
MAX_INLINE_BYTES = 5 * 1024 * 1024

EventKind = Literal["http", "sqs", "direct"]


class UnsupportedEventError(ValueError):
    """The event is none of: API Gateway proxy event, SQS batch, direct workflow invocation."""


def in_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


def lambda_settings() -> Settings:
    """The settings from the environment; inside Lambda, writable relative paths go to /tmp."""
    settings = Settings()
    if not in_lambda():
        return settings
    updates: dict[str, Path] = {}
    for name in WRITABLE_PATH_FIELDS:
        value = Path(getattr(settings, name))
        if not settings.is_explicit(name):  # a default inside comfyd's home: read-only here
            updates[name] = LAMBDA_SCRATCH / HOME_PATHS[name]
        elif not value.is_absolute():
            updates[name] = LAMBDA_SCRATCH / value
    LAMBDA_SCRATCH.mkdir(parents=True, exist_ok=True)
    # Libraries that cache under $HOME would fail on the read-only image file system.
    os.environ.setdefault("XDG_CACHE_HOME", "/tmp/.cache")
    os.environ.setdefault("HF_HOME", "/tmp/huggingface")
    return Settings(**updates) if updates else settings


def event_kind(event: Any) -> EventKind:
    if not isinstance(event, dict):
        raise UnsupportedEventError(f"the event must be a JSON object, not {type(event).__name__}")
    if is_http_api_event(event) or is_rest_api_event(event):
        return "http"
    records = event.get("Records")
    if isinstance(records, list) and records and all(
        isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records
    ):
        return "sqs"
    if "workflow" in event:
        return "direct"
    keys = ", ".join(sorted(str(k) for k in event)[:10]) or "none"
    raise UnsupportedEventError(
        f"unsupported event (keys: {keys}): expected an API Gateway proxy event (REST or HTTP API), "
        'an SQS batch, or a direct invocation {"workflow": ..., "node_id": ...}'
    )


class DirectInvocation(BaseModel):
    """The payload of a direct invocation."""

    model_config = ConfigDict(extra="forbid")

    workflow: dict[str, Any]  # API format (bare or {"prompt": ...}) or graph form
    node_id: str | None = None  # the node whose progress is the job's progress (default: the workflow's, or "3")
    execution_mode: Literal["sequential", "parallel"] | None = None
    priority: int | None = Field(None, ge=1, le=10)
    job_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    extra_data: dict[str, Any] = Field(default_factory=dict)
    # Return the output images base64-encoded in the response (when no S3 URL reaches the caller).
    inline_images: bool = False


class LambdaApp:
    """What one Lambda execution environment keeps between invocations, built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._services: Services | None = None
        self._bridge: AsgiBridge | None = None
        self._runtime: JobRuntime | None = None
        self.worker_id = f"lambda-{uuid.uuid4().hex[:8]}"

    # ---- lazily built parts ----------------------------------------------------------------

    @property
    def services(self) -> Services:
        if self._services is None:
            from comfyd.runtime import build_services

            self._services = build_services(self.settings)
        return self._services

    @property
    def bridge(self) -> AsgiBridge:
        if self._bridge is None:
            from comfyd.http.auth import check_bind_safety
            from comfyd.server import create_app  # FastAPI; still no torch

            # Behind API Gateway the API is reachable from the internet: never without keys.
            check_bind_safety("0.0.0.0", self.settings.api_keys)
            # No job threads in an API invocation (Lambda freezes the process between events):
            # jobs run on SQS workers, or in this function through SQS events / direct invocations.
            self._bridge = AsgiBridge(create_app(self.settings, self._api_services(), workers=False))
        return self._bridge

    def _api_services(self) -> Services:
        """The services the API routes use: validation and model lists include the shared model
        catalog (the API function has no models; the workers published theirs)."""
        services = self.services
        if services.model_catalog is None:
            return services
        import dataclasses

        from comfyd.runtime import build_runtime

        catalog = services.model_catalog
        return dataclasses.replace(services, executor_factory=lambda: build_runtime(self.settings, catalog=catalog))

    @property
    def runtime(self) -> JobRuntime:
        """Node registry, model manager and executor: imports torch (first execution only)."""
        if self._runtime is None:
            self._runtime = self.services.executor_factory()
        return self._runtime

    def prewarm_api(self) -> None:
        """Build the API app and run its startup now (provisioned environments, before traffic)."""
        try:
            self.bridge.start()
        except Exception:  # the first request reports the problem properly; init must not die
            log.exception("preparing the API ahead of traffic failed")

    def close(self) -> None:
        """Lifespan shutdown and backend close (tests; Lambda just discards the environment)."""
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        if self._services is not None:
            self._services.close()
            self._services = None
        self._runtime = None

    def flush_metrics(self) -> None:
        # EMF lines must be printed before the invocation returns: Lambda may freeze us after.
        if self._services is not None:
            try:
                self._services.metrics.flush()
            except Exception:
                log.exception("flushing metrics failed")

    # ---- API Gateway -------------------------------------------------------------------------

    def http(self, event: dict[str, Any]) -> dict[str, Any]:
        from comfyd.http.auth import InsecureBindError

        version = "2.0" if event.get("version") == "2.0" else "1.0"
        try:
            request = ProxyRequest.from_event(event)
        except ProxyEventError as exc:
            return _error_response(version, 400, "BadRequest", str(exc))
        try:
            bridge = self.bridge
        except InsecureBindError as exc:
            log.error("refusing to serve the API: %s", exc)
            return _error_response(version, 500, "ServerMisconfigured", str(exc))
        return bridge.handle(request).to_event(request.version)

    # ---- SQS -----------------------------------------------------------------------------------

    def sqs(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        failures: list[dict[str, str]] = []
        records: list[dict[str, Any]] = event["Records"]
        for index, record in enumerate(records):
            message_id = str(record.get("messageId", ""))
            remaining = _remaining_s(context)
            if remaining is not None and remaining - FINISH_MARGIN_S < MIN_JOB_BUDGET_S:
                # Too little time left for another job: give this and the rest back untouched.
                failures.extend({"itemIdentifier": str(r.get("messageId", ""))} for r in records[index:])
                break
            try:
                done = self._sqs_record(record, remaining)
            except Exception:
                log.exception("SQS message %s: processing failed", message_id)
                done = False
            if not done:
                failures.append({"itemIdentifier": message_id})
        return {"batchItemFailures": failures}

    def _sqs_record(self, record: dict[str, Any], remaining_s: float | None) -> bool:
        """True when the message is finished with (Lambda deletes it); False to have it back.

        The job is handled exactly as a `comfyd worker` handles a received message (skip a
        finished job, take over one whose worker died, heartbeat, run, retry with backoff),
        with the batch standing in for the queue: ack = success, nack = failure.
        """
        from comfyd.worker import Worker

        message_id = record.get("messageId")
        try:
            body = json.loads(record.get("body") or "")
            job_id, priority = str(body["job_id"]), int(body.get("priority", 1))
        except (ValueError, KeyError, TypeError):
            # Never runnable; failing it sends it to the dead-letter queue for an operator to see.
            log.error("SQS message %s: body is not a comfyd job message ({job_id, priority}): %.200r",
                      message_id, record.get("body"))
            return False
        batch = BatchRecordQueue(self.services.queue, record, band_of(record, self.settings.sqs_queue))
        services = replace(self.services, queue=batch)
        worker = Worker(self._budgeted(remaining_s), services, self.runtime, worker_id=self.worker_id)
        worker.handle(batch.item(job_id, priority))
        return batch.acked is True

    # ---- direct invocation -----------------------------------------------------------------------

    def direct(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError
        from comfyd.engine.interfaces import JobRecord, JobStatus

        try:
            invocation = DirectInvocation.model_validate(event)
        except ValidationError as exc:
            return {"status": "invalid", "error": {"type": "invalid_request", "message": _short(exc)}}
        runtime = self.runtime
        try:
            request = runtime.parse(invocation.workflow)
            if invocation.node_id is not None:
                request.node_id, request.node_id_explicit = invocation.node_id, True
            if invocation.execution_mode is not None:
                request.execution_mode = invocation.execution_mode
            runtime.validate(request)
        except WorkflowParseError as exc:
            return {"status": "invalid", **exc.body()}
        except WorkflowValidationError as exc:
            return {"status": "invalid", **exc.body}

        job = JobRecord(
            id=invocation.job_id or str(uuid.uuid4()),
            workflow=request.prompt,
            priority=invocation.priority or request.priority,
            node_id=request.node_id or "",
            execution_mode=request.execution_mode,
            extra_data={**request.extra_data, **invocation.extra_data},
            source="lambda",
        )
        store = self.services.job_store
        if not store.create(job):
            existing = store.get(job.id)
            if existing is None:
                return {"status": "invalid", "error": {"type": "invalid_request",
                                                       "message": f"job {job.id} could not be created"}}
            if existing.status is not JobStatus.QUEUED:
                return self._result(existing, invocation.inline_images)  # idempotent: the earlier run's state
            job = existing

        started = time.monotonic()
        outcome = self._run(job, _remaining_s(context))
        # A retryable failure (throttled storage, lost device) is retried here, within the invocation.
        while outcome.retry_delay_s is not None:
            remaining = _remaining_s(context)
            if remaining is not None and remaining - outcome.retry_delay_s - FINISH_MARGIN_S < MIN_JOB_BUDGET_S:
                break
            time.sleep(outcome.retry_delay_s)
            again = store.get(job.id)
            if again is None or again.status is not JobStatus.QUEUED:
                break
            outcome = self._run(again, _remaining_s(context))
        final = store.get(job.id) or outcome.record or job
        if final.status is JobStatus.QUEUED:
            # Out of time for another attempt here: hand the job to the queue's workers, so that
            # it is not left behind queued with nobody to run it. The caller polls its id.
            self.services.queue.put(final.id, final.priority)
        result = self._result(final, invocation.inline_images)
        result["seconds"] = round(time.monotonic() - started, 3)
        return result

    # ---- shared --------------------------------------------------------------------------------

    def _budgeted(self, remaining_s: float | None) -> Settings:
        """The settings, with the job budget cut to what this invocation has left."""
        if remaining_s is None:
            return self.settings
        budget = max(MIN_JOB_BUDGET_S, min(self.settings.job_timeout_s, remaining_s - FINISH_MARGIN_S))
        return self.settings.model_copy(update={"job_timeout_s": budget})

    def _run(self, job: JobRecord, remaining_s: float | None) -> JobOutcome:
        from comfyd.engine.jobs import run_job

        return run_job(job, runtime=self.runtime, backends=self.services, settings=self._budgeted(remaining_s),
                       worker_id=self.worker_id)

    def _result(self, job: JobRecord, inline_images: bool) -> dict[str, Any]:
        from comfyd.engine.job_views import output_urls

        result: dict[str, Any] = {
            "job_id": job.id,
            "status": job.status.value,
            "outputs": job.outputs,
            "output_urls": output_urls(job, self.services.output_store.url),  # signed now
            "node_timings": job.node_timings,
            "attempts": job.attempts,
            "error": job.error,
        }
        if inline_images:
            result["images"], omitted = self._inline_images(job)
            if omitted:
                result["images_omitted"] = omitted
        return result

    def _inline_images(self, job: JobRecord) -> tuple[list[dict[str, Any]], list[str]]:
        from comfyd.safepath import safe_join

        roots = {"output": Path(self.settings.output_dir), "temp": Path(self.settings.temp_dir)}
        images: list[dict[str, Any]] = []
        omitted: list[str] = []
        total = 0
        from comfyd.engine.job_outputs import content_type
        from comfyd.engine.job_views import OUTPUT_FILE_KEYS

        for node_id, ui in (job.outputs or {}).items():
            for image in (f for key in OUTPUT_FILE_KEYS for f in (ui or {}).get(key) or []):
                kind = image.get("type", "output")
                parts = [p for p in (image.get("subfolder") or "", image.get("filename") or "") if p]
                if kind not in roots or not parts:
                    continue
                path = safe_join(roots[kind], *parts)
                data = path.read_bytes() if path.is_file() else None
                if data is None or total + len(data) > MAX_INLINE_BYTES:
                    omitted.append("/".join(parts))
                    continue
                total += len(data)
                images.append({
                    "node_id": node_id, "filename": image.get("filename"), "subfolder": image.get("subfolder", ""),
                    "type": kind, "content_type": content_type(parts[-1]),
                    "data": base64.b64encode(data).decode("ascii"),
                })
        return images, omitted


def _error_response(version: str, status: int, kind: str, message: str) -> dict[str, Any]:
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    return ProxyResponse(status, [("content-type", "application/json")], body).to_event(version)


def _remaining_s(context: Any) -> float | None:
    get = getattr(context, "get_remaining_time_in_millis", None)
    return get() / 1000.0 if callable(get) else None


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors())


# The one LambdaApp of this execution environment, keyed "app" (a registry of one: Lambda runs
# one invocation at a time per environment, and keeps the process between invocations).
_ENVIRONMENT: dict[str, LambdaApp] = {}


def lambda_app() -> LambdaApp:
    app = _ENVIRONMENT.get("app")
    if app is None:
        app = _ENVIRONMENT["app"] = LambdaApp(lambda_settings())
        # Lambda usually just ends the process; where it exits normally (local runs), shut down
        # cleanly: lifespan shutdown, backends closed, buffered metrics sent.
        atexit.register(reset_environment)
    return app


def reset_environment() -> None:
    """Forget what this process built (tests start each case from a cold environment)."""
    app = _ENVIRONMENT.pop("app", None)
    if app is not None:
        app.close()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    kind = event_kind(event)
    app = lambda_app()
    try:
        if kind == "http":
            return app.http(event)
        if kind == "sqs":
            return app.sqs(event, context)
        return app.direct(event, context)
    finally:
        app.flush_metrics()


# Provisioned-concurrency environments initialise before any traffic reaches them: build the API
# (FastAPI, backends, lifespan) now, so that their first request costs what a warm one does.
if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "provisioned-concurrency":
    lambda_app().prewarm_api()
