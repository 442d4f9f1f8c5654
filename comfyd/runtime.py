"""The composition root: the configured backends of one process, and the executor factory.

Every edge (serve, worker, run, Lambda, generate_image) builds its parts here and nowhere else.

`build_services(settings)` picks, per concern, the embedded implementation (files, SQLite,
in-process queue, Prometheus text, webhooks) or the AWS one (S3, DynamoDB, SQS, CloudWatch, SNS)
from the settings. The AWS modules (and boto3) are imported only when a setting asks for them.

`build_runtime(settings)` builds what executes workflows (node registry, model manager, node
cache, executor). It imports `comfyd.nodes` (and with them torch), so it is only ever called
lazily, through `Services.executor_factory`: `import comfyd.server` stays light enough for a
Lambda that only serves API routes.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.engine.assets import AssetStore, IdempotencyKeys
from comfyd.engine.interfaces import JobQueue, JobStore, Metrics, Notifier, OutputStore

if TYPE_CHECKING:
    from comfyd.engine.jobs import JobRuntime
    from comfyd.settings import Settings

log = logging.getLogger("comfyd.runtime")


@dataclass
class Services:
    """Everything the job layer writes to, plus how to build the executor.

    Satisfies `comfyd.engine.jobs.JobBackends` (job_store, output_store, metrics, notifier).
    """

    job_store: JobStore
    queue: JobQueue
    output_store: OutputStore
    metrics: Metrics
    notifier: Notifier
    # Builds the JobRuntime (registry, env, executor); called lazily, at most once per process.
    executor_factory: Callable[[], JobRuntime]
    # Called by close(), last first (database connections, webhook threads, ...).
    closers: list[Callable[[], None]] = field(default_factory=list)
    # Comfy API v2 assets and idempotency keys (None: built on first use, comfyd.http.v2).
    assets: AssetStore | None = None
    idempotency: IdempotencyKeys | None = None
    # The shared model catalog (S3 storage): workers publish what they hold, API hosts list it.
    model_catalog: Any = None

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("closing a backend failed")
        self.closers.clear()


# ---- AWS hook points ------------------------------------------------------------------------
# `comfyd.backends.aws` provides one factory per concern, each taking
# the Settings and returning an object implementing the protocol of comfyd.engine.interfaces:
#   build_output_store(settings) -> OutputStore   (settings.storage == "s3")
#   build_job_store(settings)    -> JobStore      (settings.jobstore == "dynamodb")
#   build_queue(settings)        -> JobQueue      (settings.queue == "sqs")
#   build_metrics(settings)      -> Metrics       (settings.metrics == "cloudwatch")
#   build_notifier(settings)     -> Notifier      (settings.sns_topic is set; composed with webhooks)
# An object with a `close()` method is closed by Services.close().


def _aws(factory_name: str, settings: Settings, **options: Any) -> Any:
    module = importlib.import_module("comfyd.backends.aws")
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise RuntimeError(f"comfyd.backends.aws has no {factory_name}(settings); the AWS backend is incomplete")
    return factory(settings, **options)


def _closer_of(obj: Any) -> Callable[[], None] | None:
    close = getattr(obj, "close", None)
    return close if callable(close) else None


def build_services(settings: Settings, *, api_only: bool = False) -> Services:
    """The backends the settings ask for (embedded by default). `api_only`: for a process that
    serves the API and runs no jobs (`comfyd serve` with SQS): it keeps to the API's IAM policy
    (deploy/iam-policy-api.json), e.g. never deletes S3 objects."""
    from comfyd.backends.prometheus import NullMetrics, PrometheusMetrics
    from comfyd.backends.webhook_guard import WebhookPolicy
    from comfyd.backends.webhooks import CompositeNotifier, WebhookNotifier

    closers: list[Callable[[], None]] = []
    db = None

    def sqlite_db() -> Any:
        nonlocal db
        if db is None:
            from comfyd.backends.sqlite_store import SqliteDatabase

            db = SqliteDatabase(Path(settings.db_path))
            closers.append(db.close)
        return db

    job_store: JobStore
    assets: AssetStore | None = None
    idempotency: IdempotencyKeys | None = None
    if settings.jobstore == "dynamodb":
        job_store = _aws("build_job_store", settings, api_only=api_only)
    else:
        from comfyd.backends.sqlite_assets import SqliteAssetStore, SqliteIdempotencyKeys
        from comfyd.backends.sqlite_store import SqliteJobStore

        job_store = SqliteJobStore(sqlite_db(), history_max_items=settings.history_max_items)
        assets, idempotency = SqliteAssetStore(sqlite_db()), SqliteIdempotencyKeys(sqlite_db())

    queue: JobQueue
    if settings.queue == "sqs":
        queue = _aws("build_queue", settings)
    else:
        from comfyd.backends.local_queue import LocalJobQueue

        queue = LocalJobQueue(sqlite_db())

    output_store: OutputStore
    if settings.storage == "s3":
        output_store = _aws("build_output_store", settings)
    else:
        from comfyd.backends.local_storage import LocalOutputStore

        output_store = LocalOutputStore(Path(settings.output_dir))

    metrics: Metrics
    if settings.metrics == "cloudwatch":
        metrics = _aws("build_metrics", settings)
    elif settings.metrics == "prometheus":
        metrics = PrometheusMetrics()
    else:
        metrics = NullMetrics()

    webhooks = WebhookNotifier(settings.webhook_secret, policy=WebhookPolicy.from_settings(settings))
    notifier: Notifier = webhooks
    if settings.sns_topic:
        notifier = CompositeNotifier(_aws("build_notifier", settings), webhooks)
    for backend in (queue, job_store, output_store, metrics, notifier):
        closer = _closer_of(backend)
        if closer is not None:
            closers.append(closer)
    if metrics is not None and callable(getattr(metrics, "flush", None)):
        closers.append(metrics.flush)

    # With shared storage, hosts share a model catalog: an API host (api_only) validates and
    # lists against what the workers published; a worker publishes what it holds (comfyd.worker).
    model_catalog = _aws("build_model_catalog", settings) if settings.storage == "s3" else None
    return Services(
        job_store=job_store,
        queue=queue,
        output_store=output_store,
        metrics=metrics,
        notifier=notifier,
        executor_factory=lambda: build_runtime(settings, catalog=model_catalog if api_only else None),
        closers=closers,
        assets=assets,
        idempotency=idempotency,
        model_catalog=model_catalog,
    )


def build_runtime(settings: Settings, catalog: Any = None, *, isolated_child: bool = False) -> JobRuntime:
    """Node registry (all of comfyd.nodes, then the custom nodes the settings name: packs in
    COMFYD_CUSTOM_NODES_DIRS and `comfyd.nodes` entry points), model manager, node cache and
    executor; then the optional warm-up workflow (comfyd.warmup), so /health-check says READY
    only after it. `catalog`: a shared model catalog whose names the model lists include (API
    hosts). With `isolation=process` the executor is an IsolatedExecutor: workflows (and the
    warm-up) run in a child process that builds this same runtime with `isolated_child=True`."""
    import comfyd.nodes  # noqa: F401  (registers every node; imports torch)
    from comfyd.compat.loader import node_registry
    from comfyd.engine.cache import NodeCache
    from comfyd.engine.context import NodeEnvironment
    from comfyd.engine.executor import Executor
    from comfyd.engine.jobs import JobRuntime
    from comfyd.engine.validate import ServiceLimits
    from comfyd.models.manager import ModelManager
    from comfyd.models.threads import configure_cpu_threads
    from comfyd.warmup import run_warmup

    # Jobs that may compute at once share the CPUs (device_concurrency bounds them when set).
    computing = settings.device_concurrency or settings.max_concurrent_jobs
    configure_cpu_threads(settings, concurrent_jobs=computing)
    for directory in (settings.output_dir, settings.input_dir, settings.temp_dir):
        Path(directory).mkdir(parents=True, exist_ok=True)
    env = NodeEnvironment(settings, models=ModelManager(settings, catalog=catalog))
    registry = node_registry(settings, env)
    cache = NodeCache(max_bytes=settings.node_cache_bytes)
    executor = Executor(registry, env, cache=cache, limits=ServiceLimits.from_settings(settings))

    def release(unload_models: bool, free_memory: bool) -> None:
        if free_memory or unload_models:
            cache.clear()
        if unload_models:
            env.models.free()

    if settings.isolation == "process" and not isolated_child:
        from comfyd.isolation import IsolatedExecutor

        isolated = IsolatedExecutor(settings, kill_grace_s=settings.isolation_kill_grace_s)
        isolated.start()  # the child loads its models and runs the warm-up now, before READY
        return JobRuntime(registry=registry, env=env, executor=isolated, release=isolated.free)
    runtime = JobRuntime(registry=registry, env=env, executor=executor, release=release)
    run_warmup(runtime, settings)
    return runtime


__all__ = ["Services", "build_runtime", "build_services"]


def check_aws_region(settings: Settings) -> None:
    """Fail at start-up (SystemExit naming InvalidRegion or MissingCredentials) when AWS backends
    are configured and no credentials resolve, or the region is unknown or not enabled."""
    from comfyd.backends.aws import session_for, uses_aws

    if not uses_aws(settings):
        return
    from comfyd.backends.aws.session import AwsConfigError, InvalidRegion

    try:
        session_for(settings).verify()
    except (InvalidRegion, AwsConfigError) as exc:
        raise SystemExit(f"error: {type(exc).__name__}: {exc}") from None
