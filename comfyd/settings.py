"""comfyd's one settings object.

Read from (highest first): keyword arguments, `COMFYD_*` environment variables, the TOML file
named by `COMFYD_CONFIG` (default `comfyd.toml` in the working directory, if present), defaults.
Every field is documented in the README's settings table; keep the two in step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("COMFYD_CONFIG", "comfyd.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMFYD_", extra="ignore", validate_default=True)

    # --- paths ---------------------------------------------------------------------------
    models_dir: Path = Path("models")
    # More model roots in ComfyUI's layout, searched after models_dir (extra_model_paths).
    extra_model_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    temp_dir: Path = Path("temp")
    # SQLite database of jobs, queue and history (embedded backends).
    db_path: Path = Path("comfyd.db")

    # --- compute -------------------------------------------------------------------------
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # Node-output cache bound (bytes of tensors held between runs; LRU beyond it).
    node_cache_bytes: int = 2 * 1024**3
    # Loaded-model budgets (LRU): device memory and host memory.
    model_cache_device_bytes: int = 0  # 0 = 80 % of the device's total memory
    model_cache_host_bytes: int = 0  # 0 = 50 % of host RAM
    # Pickle checkpoints (.ckpt/.pt) are refused unless enabled, and then loaded weights_only.
    allow_pickle: bool = False
    torch_compile: bool = False
    # Model computations (sampling, text encoding, VAE) at once per device; 0 = automatic:
    # 1 on CUDA/MPS (running jobs overlap their loading and I/O, not their GPU work), no limit on CPU.
    device_concurrency: int = Field(0, ge=0, le=64)
    # A workflow file run once at start (comfyd.warmup) before /health-check reports READY.
    warmup_workflow: Path | None = None

    # --- custom nodes (code: opt-in; nothing is ever installed) ----------------------------
    # Folders whose entries are ComfyUI node packs or comfyd plugins (ComfyUI's custom_nodes/).
    custom_nodes_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Load plugins that installed distributions declare in the `comfyd.nodes` entry-point group.
    load_plugins: bool = True

    # --- jobs and queue ------------------------------------------------------------------
    max_concurrent_jobs: int = Field(3, ge=1, le=64)
    queue_max_depth: int = Field(100, ge=1)
    job_timeout_s: float = Field(600.0, gt=0)
    sync_wait_s: float = Field(30.0, ge=0)
    retry_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(1.0, ge=0)
    history_max_items: int = 10000
    # Workflow limits checked by validation (any node's INT input named width/height/batch_size).
    max_workflow_nodes: int = Field(100, ge=1)
    max_image_side: int = Field(1024, ge=8)
    image_side_multiple: int = Field(8, ge=1)
    max_batch_size: int = Field(4, ge=1)

    # --- HTTP server ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8188
    # Keys, or `sha256:<hex>` of keys. Empty = no auth (allowed only on loopback).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(120, ge=0)  # per key (or client address); 0 = off
    max_body_bytes: int = 16 * 1024**2
    max_upload_bytes: int = 32 * 1024**2
    max_image_pixels: int = 4096 * 4096
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_secret: str | None = None  # Standard Webhooks secret (`whsec_<base64>` or raw)
    # Webhooks go to public addresses only (comfyd.backends.webhook_guard); these hosts, `*.suffix`
    # patterns, IPs or CIDR networks are allowed even when private.
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_allow_private: bool = False

    # --- cloud backends ------------------------------------------------------------------
    storage: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    s3_prefix: str = "comfyd"
    s3_kms_key_id: str | None = None
    cloudfront_domain: str | None = None
    presign_expiry_s: int = 3600
    spool_dir: Path = Path("spool")
    jobstore: Literal["sqlite", "dynamodb"] = "sqlite"
    dynamodb_table: str | None = None
    job_ttl_s: int = 7 * 24 * 3600
    queue: Literal["local", "sqs"] = "local"
    sqs_queue: str | None = None
    # A queued job stored this long ago whose message was never sent (its API process died) is
    # enqueued again by the sweeper (comfyd worker, comfyd serve with SQS); 0 = no sweeps.
    requeue_after_s: float = Field(120.0, ge=0)
    metrics: Literal["none", "prometheus", "cloudwatch"] = "prometheus"
    cloudwatch_namespace: str = "comfyd"
    sns_topic: str | None = None
    aws_role_arn: str | None = None
    aws_region: str | None = None

    @field_validator(
        "api_keys", "cors_origins", "extra_model_dirs", "custom_nodes_dirs", "webhook_allowed_hosts", mode="before"
    )
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        # COMFYD_API_KEYS=a,b is friendlier than JSON in an environment variable.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def model_roots(self) -> list[Path]:
        return [Path(self.models_dir), *[Path(p) for p in self.extra_model_dirs]]
