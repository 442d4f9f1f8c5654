"""`comfyd serve`: the HTTP server (ComfyUI API + websocket, Cog predictions, /v1, health, metrics).

    app = create_app(settings)            # FastAPI; builds the configured backends
    serve(settings)                       # uvicorn on settings.host:settings.port

Importing this module does not import torch, diffusers or transformers (a Lambda serving only
API routes imports it): the executor is built lazily through `Services.executor_factory`.

Routes live in `comfyd.http`: routes_comfy (ComfyUI, also under /api), routes_predictions
(Cog, /v1, /health-check, /metrics). Auth: API keys on every route except /health-check (the
websocket handshake checks them too). Limits: request bodies and uploads are size-limited, job
submissions are rate limited per key, the queue is bounded. CORS is off unless
`cors_origins` lists origins.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from comfyd.engine.jobs import JobManager
from comfyd.http.auth import ApiKeys, InsecureBindError, check_bind_safety
from comfyd.http.errors import install_error_handlers
from comfyd.http.jsonsafe import SafeJSONResponse
from comfyd.http.limits import BodySizeLimitMiddleware
from comfyd.http.metrics import RequestMetricsMiddleware
from comfyd.http.missed_ends import MissedEnds
from comfyd.http.origin_guard import OriginGuardMiddleware
from comfyd.http.ratelimit import RateLimiter
from comfyd.http.routes_check import router as check_router
from comfyd.http.routes_comfy import router as comfy_router
from comfyd.http.routes_comfy import ws_router
from comfyd.http.routes_files import router as files_router
from comfyd.http.routes_health import public_router
from comfyd.http.routes_health import router as health_router
from comfyd.http.routes_jobs_api import router as jobs_api_router
from comfyd.http.routes_predictions import router as predictions_router
from comfyd.http.state import AppState
from comfyd.http.v2 import install_v2
from comfyd.http.websocket import WebSocketHub
from comfyd.runtime import Services, build_services
from comfyd.settings import Settings

log = logging.getLogger("comfyd.server")


def create_app(settings: Settings, services: Services | None = None, *, workers: bool | None = None) -> FastAPI:
    """The FastAPI application.

    `services`: the backends (default: `build_services(settings)`, closed at shutdown; services
    passed in belong to the caller). `workers`: run jobs in this process (default: when the
    queue is the local one; with SQS, `comfyd worker` processes run them).
    """
    owns_services = services is None
    run_workers = settings.queue == "local" if workers is None else workers
    services = services if services is not None else build_services(settings, api_only=not run_workers)
    manager = JobManager(settings, services, services.executor_factory, services.queue, workers=run_workers)
    hub = WebSocketHub(settings.ws_max_backlog_bytes, settings.max_ws_connections)
    state = AppState(
        settings=settings,
        services=services,
        manager=manager,
        hub=hub,
        keys=ApiKeys(settings.api_keys),
        limiter=RateLimiter(settings.rate_limit_per_minute),
        auth_failures=RateLimiter(settings.auth_failures_per_minute),
        owns_services=owns_services,
    )
    manager.add_listener(state.on_job_event)
    missed_ends = MissedEnds(hub.is_connected)
    manager.add_listener(missed_ends.on_job_event)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.bind_loop(asyncio.get_running_loop())
        await run_in_threadpool(manager.start)
        if run_workers:  # build the executor (import nodes, warm-up) now, not on the first request
            threading.Thread(target=manager.warm_up, name="comfyd-setup", daemon=True).start()
        try:
            yield
        finally:
            await hub.close_all()
            await run_in_threadpool(manager.stop, 10.0, settings.shutdown_grace_s)
            if owns_services:
                await run_in_threadpool(services.close)

    from comfyd import __version__

    docs = docs_enabled(settings)
    app = FastAPI(
        title="comfyd", version=__version__, lifespan=lifespan,
        description="Runs ComfyUI workflows as a service: ComfyUI's HTTP and websocket API, "
        "Cog-style predictions and /v1/generate.",
        # The interactive docs answer without a key: on by default only when auth is off.
        docs_url="/docs" if docs else None, redoc_url=None, openapi_url="/openapi.json" if docs else None,
        default_response_class=SafeJSONResponse,
    )

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return introduction(docs)

    app.router.redirect_slashes = False  # a 307 on POST /prompt/ would confuse clients: 404 instead
    app.state.comfyd = state
    app.state.comfyd_missed_ends = missed_ends
    install_error_handlers(app)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
            allow_headers=["*"], allow_credentials=False,
        )
    if not state.keys.enabled:  # the keys are the guard otherwise
        app.add_middleware(OriginGuardMiddleware, cors_origins=settings.cors_origins,
                           allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestMetricsMiddleware, metrics=services.metrics)
    app.add_middleware(
        BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes
    )
    app.include_router(public_router)
    app.include_router(predictions_router)
    app.include_router(health_router)
    install_v2(app, state)  # Comfy API v2 under /api/v2, before the ComfyUI routes under /api
    app.include_router(check_router)
    for prefix in ("", "/api"):
        app.include_router(comfy_router, prefix=prefix)
        app.include_router(files_router, prefix=prefix)
        app.include_router(ws_router, prefix=prefix)
        app.include_router(jobs_api_router, prefix=prefix)
    return app


def docs_enabled(settings: Settings) -> bool:
    return settings.api_docs if settings.api_docs is not None else not settings.api_keys


def introduction(docs: bool) -> dict[str, Any]:
    """What GET / answers: what this server is and where its API and docs are (no key needed,
    so nothing about the host: no paths, no settings)."""
    from comfyd import __version__

    return {
        "name": "comfyd",
        "version": __version__,
        "about": "Runs ComfyUI workflows as a service.",
        "docs": "/docs" if docs else None,
        "openapi": "/openapi.json" if docs else None,
        "api": {
            "comfyui": ["POST /prompt", "GET /queue", "GET /history/{prompt_id}", "GET /view", "GET /ws",
                        "GET /object_info", "POST /upload/image", "POST /interrupt"],
            "predictions": ["POST /predictions", "GET /predictions/{id}", "POST /predictions/{id}/cancel"],
            "generate": ["POST /v1/generate", "GET /v1/status"],
            "health": "GET /health-check",
        },
        "source_docs": "README.md and docs/server.md in the comfyd repository",
    }


def banner(settings: Settings) -> str:
    """The lines `comfyd serve` prints on start: where it listens and what it uses."""
    from comfyd import __version__

    url = f"http://{settings.host}:{settings.port}"
    auth = f"on ({len(settings.api_keys)} key{'s' if len(settings.api_keys) != 1 else ''})" if settings.api_keys \
        else "off (no COMFYD_API_KEYS; loopback only)"
    database = (f"DynamoDB table {settings.dynamodb_table}" if settings.jobstore == "dynamodb"
                else str(Path(settings.db_path).resolve()))
    output = (f"s3://{settings.s3_bucket}/{settings.s3_prefix}" if settings.storage == "s3"
              else str(Path(settings.output_dir).resolve()))
    docs = f"{url}/docs" if docs_enabled(settings) else "off (COMFYD_API_DOCS=true serves them)"
    rows = [
        ("URL", url),
        ("API docs", docs),
        ("models", ", ".join(str(Path(p).resolve()) for p in settings.model_roots())),
        ("input", str(Path(settings.input_dir).resolve())),
        ("output", output),
        ("temp", str(Path(settings.temp_dir).resolve())),
        ("database", database),
        ("auth", auth),
        ("device", describe_device(settings)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"comfyd {__version__}"] + [f"  {k + ':':<{width + 1}} {v}" for k, v in rows])


def describe_device(settings: Settings) -> str:
    """The device the models will use (torch is imported here: `serve` runs jobs anyway)."""
    try:
        from comfyd.models.devices import choose_device
        from comfyd.models.threads import cpu_threads_for

        device = choose_device(settings.device)
    except Exception as exc:  # a bad COMFYD_DEVICE is reported when jobs run; the banner says it
        return f"{settings.device} ({exc})"
    if device.type == "cpu":
        if settings.cpu_threads:
            return f"cpu ({settings.cpu_threads} threads per job)"
        # The device gate gives a lone computation every usable CPU, and shares them out when
        # several compute at once (comfyd.models.device_gate).
        return f"cpu ({cpu_threads_for(settings, 1)} threads, shared by the jobs computing at once)"
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def serve(settings: Settings, services: Services | None = None) -> None:
    """Run the server under uvicorn until interrupted. Refuses to start without API keys on a
    non-loopback address (SystemExit with the reason). SIGTERM drains: no new jobs, running
    ones get COMFYD_SHUTDOWN_GRACE_S to finish and are then queued again; the exit is normal.
    `services`: the backends (tests inject a fake executor; default: built from settings)."""
    try:
        check_bind_safety(settings.host, settings.api_keys)
    except InsecureBindError as exc:
        raise SystemExit(f"error: {exc}") from None
    import uvicorn

    from comfyd.runtime import check_aws_region

    check_aws_region(settings)  # an unknown or disabled region fails here, not on the first job
    for directory in (settings.output_dir, settings.input_dir, settings.temp_dir):
        Path(directory).mkdir(parents=True, exist_ok=True)
    app = create_app(settings, services)
    print(banner(settings), file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM (the lifespan's end lets running jobs finish within
    # COMFYD_SHUTDOWN_GRACE_S and flushes metrics), then raises the signal again with the handler
    # that was in place before it: make that one a no-op, so a drained stop exits 0.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="info",
        timeout_graceful_shutdown=10, ws_max_size=16 * 1024 * 1024,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m comfyd.server [--host H] [--port P] [--models-dir D] [--output-dir D] ...`."""
    parser = argparse.ArgumentParser(prog="python -m comfyd.server", description="comfyd HTTP server")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--models-dir")
    parser.add_argument("--output-dir")
    parser.add_argument("--input-dir")
    parser.add_argument("--temp-dir")
    parser.add_argument("--db-path")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(Settings(**overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
