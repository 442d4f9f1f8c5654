"""The server's per-app state, and the request steps every submitting route shares.

Routes reach it as `request.app.state.comfyd` (dependency `get_state`). It holds the settings,
the backends (`Services`), the job manager, the websocket hub, the API keys and the limiter.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from comfyd.backends.webhook_guard import ForbiddenWebhook, WebhookPolicy
from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError
from comfyd.engine.interfaces import JobRecord
from comfyd.engine.job_inputs import INPUT_KEYS, pin_inputs
from comfyd.engine.jobs import JobManager, JobRuntime, QueueFullError, SubmitResult
from comfyd.engine.previews import PREVIEW_METHODS
from comfyd.http.auth import ApiKeys
from comfyd.http.errors import ApiError, ComfyError, bad_request
from comfyd.http.ratelimit import RateLimiter, retry_after_header
from comfyd.http.websocket import WebSocketHub, image_frame
from comfyd.runtime import Services
from comfyd.settings import Settings

# Client-chosen job ids (prompt_id, prediction id) end up in URLs, logs and storage keys.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_PRIORITY = 10


@dataclass
class AppState:
    settings: Settings
    services: Services
    manager: JobManager
    hub: WebSocketHub
    keys: ApiKeys
    limiter: RateLimiter
    owns_services: bool = True
    auth_failures: RateLimiter = field(default_factory=lambda: RateLimiter(0))
    started_at: float = field(default_factory=time.time)

    # ---- runtime ---------------------------------------------------------------------------

    def runtime(self) -> JobRuntime:
        """The executor runtime, built on first use (blocking); 503 if setup failed."""
        try:
            return self.manager.runtime
        except RuntimeError as exc:
            raise ApiError(503, "ServiceUnavailable", f"comfyd cannot run workflows: {exc}",
                           headers={"Retry-After": "60"}) from None

    def runtime_if_ready(self) -> JobRuntime | None:
        return self.manager.built_runtime

    def output_nodes(self, job: JobRecord) -> list[str]:
        runtime = self.runtime_if_ready()
        return runtime.output_nodes(job) if runtime is not None else []

    # ---- events -> websocket ---------------------------------------------------------------

    def on_job_event(self, job: JobRecord, event: str, data: dict[str, Any]) -> None:
        """JobManager listener (worker threads): route a job's event to its websocket client."""
        if event == "status":
            self.hub.send_json(None, "status", data)
            return
        client_id = job.client_id
        image = data.get("image")
        if isinstance(image, bytes | bytearray):
            try:
                frame = image_frame(bytes(image), str(data.get("format") or "PNG"))
            except ValueError:
                return
            self.hub.send_binary(client_id, frame)
            return
        self.hub.send_json(client_id, event, data)

    # ---- submission ------------------------------------------------------------------------

    def authenticate(self, headers: Any, client_host: str, query: Any = None) -> str:
        """The caller's principal (ApiKeys.principal), with failed attempts throttled per client
        address: past `auth_failures_per_minute` failures, 429 until the bucket refills."""
        if not self.keys.enabled:
            return self.keys.principal(headers, client_host, query)
        caller = f"addr:{client_host}"
        wait = self.auth_failures.blocked(caller)
        if wait is not None:
            raise ApiError(429, "RateLimit", "too many failed authentications from this address; retry later",
                           headers={"Retry-After": retry_after_header(wait)})
        try:
            return self.keys.principal(headers, client_host, query)
        except ApiError:
            self.auth_failures.acquire(caller)
            raise

    def check_rate(self, principal: str) -> None:
        wait = self.limiter.acquire(principal)
        if wait is not None:
            raise ApiError(
                429, "RateLimit",
                f"rate limit of {self.limiter.per_minute} submissions per minute exceeded; retry later "
                "(COMFYD_RATE_LIMIT_PER_MINUTE sets it)",
                details={"limit_per_minute": self.limiter.per_minute},
                headers={"Retry-After": retry_after_header(wait)},
            )

    def _validate_submission(self, runtime: JobRuntime, req: Any) -> None:
        """Validation, with the model-file check `submit_model_check` asks for (comfyd.check.submission)."""
        from comfyd.check.submission import env_trusting_model_names, missing_models_body

        if runtime.validator is not None:  # a runtime with its own validation (tests, fakes)
            runtime.validate(req)
            return
        if getattr(self.settings, "submit_model_check", True):
            runtime.validate(req)  # ComfyUI's own answer first (value_not_in_list for its loaders)
            body = missing_models_body(req.prompt, self.settings, runtime.registry,
                                       getattr(runtime.env, "models", None))
            if body is not None:
                raise WorkflowValidationError(body)
            return
        from comfyd.engine.validate import validate_workflow

        validate_workflow(req, runtime.registry, env_trusting_model_names(runtime.env, req.prompt, runtime.registry))

    def job_from_body(
        self, body: dict[str, Any], *, source: str, job_id: str | None = None,
        extra_data: dict[str, Any] | None = None, priority: int | None = None,
        webhook_field: str = "extra_data.webhook", digest: str | None = None,
    ) -> JobRecord:
        """Parse and validate a workflow request; a JobRecord ready to submit.

        Raises ComfyError (ComfyUI's 400 body) for an invalid workflow, ApiError 422 for a webhook
        comfyd will not call (`webhook_field` names a webhook in `extra_data`). Resolves the
        webhook's host: call it off the event loop.
        """
        given_webhook = (extra_data or {}).get("webhook")
        if given_webhook:  # first: a refused webhook is the answer, whatever the workflow holds
            self.check_webhook(given_webhook, webhook_field)
        runtime = self.runtime()
        try:
            req = runtime.parse(body)
            # Inputs uploaded through another host: fetched here for validation, and pinned by
            # content for the worker (comfyd.engine.job_inputs). Nothing with local storage.
            pinned = self._pin_inputs(req.prompt, runtime)
            self._validate_submission(runtime, req)
        except WorkflowParseError as exc:
            raise ComfyError(400, exc.body()) from None
        except WorkflowValidationError as exc:
            raise ComfyError(400, exc.body) from None
        except RecursionError:
            raise bad_request("the workflow nests values too deeply") from None
        chosen_id = job_id or req.prompt_id
        if chosen_id is None:
            chosen_id = str(uuid.uuid4())
        check_job_id(chosen_id, "prompt_id" if job_id is None else "id")
        job_priority = priority if priority is not None else req.priority
        if req.front:
            job_priority = MAX_PRIORITY  # ComfyUI's "front": run next
        extra = dict(req.extra_data)
        if extra_data:
            extra.update(extra_data)
        if req.partial_execution_targets is not None:  # kept for the run (and ComfyUI's queue views)
            extra["partial_execution_targets"] = list(req.partial_execution_targets)
        extra.pop(INPUT_KEYS, None)  # only ever what this server pinned, never a client's keys
        if pinned:
            extra[INPUT_KEYS] = pinned
        check_extra_data(extra, self.settings.max_extra_data_bytes)
        problem = find_unencodable(body) or find_unencodable(extra)
        if problem is not None:  # anywhere validation did not look (undeclared inputs, extra_data)
            raise bad_request(f"{problem[1]} holds {problem[0]}; JSON text must be finite numbers and valid "
                              "Unicode", {"location": problem[1]})
        extra[REQUEST_DIGEST_KEY] = digest or request_digest(body)
        webhook = extra.get("webhook")
        if webhook and webhook != given_webhook:  # the body's own extra_data.webhook
            self.check_webhook(webhook, "extra_data.webhook")
        return JobRecord(
            id=chosen_id,
            workflow=req.prompt,
            priority=job_priority,
            node_id=req.node_id or "3",
            execution_mode=req.execution_mode,
            client_id=req.client_id,
            extra_data=extra,
            source=source,
        )

    def _pin_inputs(self, workflow: dict[str, Any], runtime: JobRuntime) -> dict[str, str]:
        try:
            return pin_inputs(workflow, runtime.registry, self.services.output_store, Path(self.settings.input_dir))
        except Exception as exc:  # the shared store is down or holds a damaged input
            raise ApiError(503, "StorageUnavailable", f"could not fetch the workflow's input files: {exc}") from None

    def check_webhook(self, url: str, field: str) -> None:
        """ApiError 422 naming `field` unless comfyd may call `url` (comfyd.backends.webhook_guard)."""
        try:
            WebhookPolicy.from_settings(self.settings).check(url)
        except ForbiddenWebhook as exc:  # the URL is not echoed: it may carry a token
            raise ApiError(422, "InvalidWebhook", str(exc), {"location": field}) from None

    def submit(self, job: JobRecord) -> SubmitResult:
        """Store and enqueue; the same id with the same request gives the existing job back,
        with a different request 409 Conflict."""
        try:
            result = self.manager.submit(job)
        except QueueFullError as exc:
            raise ApiError(
                503, "ServiceUnavailable", f"{exc} (COMFYD_QUEUE_MAX_DEPTH sets the queue's size)",
                details={"queue_depth": exc.depth, "queue_max_depth": self.settings.queue_max_depth},
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        if not result.created:
            check_same_request(result.job, job.extra_data.get(REQUEST_DIGEST_KEY))
        return result

    async def wait_for(self, job_id: str, timeout: float) -> JobRecord | None:
        """The job once it is terminal, or as it is after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        remove = self.manager.add_done_callback(job_id, lambda _job: loop.call_soon_threadsafe(done.set))
        try:
            deadline = loop.time() + timeout
            while True:
                job = await run_in_threadpool(self.services.job_store.get, job_id)
                if job is None or job.status.terminal:
                    return job
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return job
                # The done callback fires for jobs this process runs; the poll covers the rest
                # (jobs run by a worker elsewhere, through a shared queue).
                try:
                    await asyncio.wait_for(done.wait(), min(remaining, 1.0))
                except asyncio.TimeoutError:
                    pass
        finally:
            remove()


def check_job_id(job_id: str, field_name: str) -> None:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise bad_request(
            f"{field_name} must be 1-128 characters of letters, digits and . _ - (starting with a "
            f"letter or digit); got {job_id!r}"[:300],
            {"location": field_name},
        )


WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
# extra_data key holding the digest of the request that created a job (idempotency checks).
REQUEST_DIGEST_KEY = "request_sha256"
# JSON nesting deeper than this is refused (workflows and extra_data are a few levels deep).
MAX_JSON_DEPTH = 64


def request_digest(body: Any) -> str:
    """SHA-256 of a request body in canonical JSON: the same request gives the same digest."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_same_request(existing: JobRecord, digest: str | None) -> None:
    """409 when a job id is reused for a different request (records without a digest match)."""
    stored = existing.extra_data.get(REQUEST_DIGEST_KEY) if isinstance(existing.extra_data, dict) else None
    if digest is not None and stored is not None and stored != digest:
        raise ApiError(409, "Conflict", f"job {existing.id!r} exists with a different request; use a new id "
                       "or send the same request again", {"location": "id"})


def find_unencodable(value: Any) -> tuple[str, str] | None:
    """(what, where) of the first lone surrogate or non-finite number in `value`, iteratively."""
    stack: list[tuple[Any, str]] = [(value, "body")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return f"the non-finite number {item}", where
        if isinstance(item, str):
            if _has_surrogate(item):
                return "a lone UTF-16 surrogate", where
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _has_surrogate(key):
                    return "a lone UTF-16 surrogate", where
                stack.append((child, f"{where}.{key}"[:200]))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]"[:200]) for i, child in enumerate(item))
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests containers more than `limit` deep (checked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def check_extra_data(extra: dict[str, Any], max_bytes: int | None = None) -> None:
    """The extra_data keys comfyd acts on (any submission may set them): 400 when malformed."""
    if max_bytes is not None:
        size = len(json.dumps(extra, separators=(",", ":"), default=str))
        if size > max_bytes:
            raise ApiError(413, "PayloadTooLarge", f"extra_data is {size} bytes of JSON; the limit is {max_bytes}",
                           {"location": "extra_data", "limit_bytes": max_bytes})
    webhook = extra.get("webhook")
    if webhook is not None:
        parsed = urlparse(webhook) if isinstance(webhook, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise bad_request("extra_data.webhook must be an absolute http(s) URL", {"location": "extra_data.webhook"})
    events = extra.get("webhook_events_filter")
    if events is not None and (not isinstance(events, list)
                               or not all(isinstance(e, str) and e in WEBHOOK_EVENTS for e in events)):
        raise bad_request(f"extra_data.webhook_events_filter must be a list drawn from {', '.join(WEBHOOK_EVENTS)}",
                          {"location": "extra_data.webhook_events_filter"})
    method = extra.get("preview_method")
    if method is not None and (not isinstance(method, str) or method not in PREVIEW_METHODS):
        raise bad_request(f"extra_data.preview_method must be one of {', '.join(sorted(PREVIEW_METHODS))}",
                          {"location": "extra_data.preview_method"})


def get_state(request: Request) -> AppState:
    return request.app.state.comfyd


async def json_body(request: Request, *, required: bool = True) -> Any:
    """The request's JSON; 400 naming the position of a syntax error."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise bad_request("the request body is empty; expected a JSON object")
        return None
    try:
        body = json.loads(raw)
    except UnicodeDecodeError:
        raise bad_request("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          {"line": exc.lineno, "column": exc.colno}) from None
    except RecursionError:
        raise bad_request("the request body nests JSON too deeply") from None
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise bad_request(f"the request body nests JSON more than {MAX_JSON_DEPTH} levels deep")
    return body


async def json_object(request: Request, *, required: bool = True) -> dict[str, Any]:
    body = await json_body(request, required=required)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(body).__name__}")
    return body

