"""comfyd's one settings object.

Read from (highest first): keyword arguments, `COMFYD_*` environment variables, the TOML file
named by `COMFYD_CONFIG` (default `comfyd.toml` in the working directory, if present), defaults.
Every field is documented in the README's settings table; keep the two in step.

Folders and the database default to places inside `home` (COMFYD_HOME, else
`$XDG_DATA_HOME/comfyd` or `~/.local/share/comfyd`), never the working directory; a path given
explicitly (flag, variable, TOML) is used as given, relative ones relative to the working
directory as before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("COMFYD_CONFIG", "comfyd.toml"))


def default_home() -> Path:
    """`$XDG_DATA_HOME/comfyd`, else `~/.local/share/comfyd`."""
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "comfyd"


# Path settings that live inside `home` unless given explicitly: field -> name inside home.
HOME_PATHS: dict[str, str] = {
    "models_dir": "models",
    "output_dir": "output",
    "input_dir": "input",
    "temp_dir": "temp",
    "db_path": "comfyd.db",
    "spool_dir": "spool",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COMFYD_", extra="ignore", validate_default=True)

    # --- paths ---------------------------------------------------------------------------
    # comfyd's data folder: the defaults of the paths below (HOME_PATHS) are inside it.
    home: Path = Field(default_factory=default_home)
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
    # When idle text encoders move to host RAM (comfyd.models.text_encoder_offload): auto =
    # after each encode for those taking >= 1/4 of the device budget, on pressure for the others.
    text_encoder_offload: Literal["auto", "after_encode", "on_pressure", "never"] = "auto"
    # Pickle checkpoints (.ckpt/.pt) are refused unless enabled, and then loaded weights_only.
    allow_pickle: bool = False
    # GGUF weights in a block-quantized type are kept quantized on the device and dequantized in
    # each layer's forward (comfyd.models.gguf_layers); true dequantizes them all at load instead.
    gguf_dequantize_at_load: bool = False
    torch_compile: bool = False
    # torch intra-op threads on CPU; 0 = automatic (see comfyd.models.threads): the usable CPUs
    # shared among the jobs that may compute at once, so threads never outnumber the cores.
    cpu_threads: int = Field(0, ge=0, le=1024)
    # Model computations (sampling, text encoding, VAE) at once per device; 0 = automatic:
    # 1 on CUDA/MPS (running jobs overlap their loading and I/O, not their GPU work), no limit on CPU.
    device_concurrency: int = Field(0, ge=0, le=64)
    # Cross-request batching (comfyd.sampling.step_batcher): at most this many concurrent jobs'
    # sampler steps share one UNet call; 0 = automatic (4 on CUDA/MPS, 1 = off on CPU).
    batch_max: int = Field(0, ge=0, le=64)
    # How long a new batch's first step waits for companions (default-priority jobs only).
    batch_window_ms: float = Field(5.0, ge=0, le=10_000)
    # Refuse at submission a job whose model files are in no model folder of this host; false on
    # an API host without models (split deployments): workers then find out at run time.
    submit_model_check: bool = True
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
    # On SIGTERM/SIGINT (docker stop, ASG lifecycle, systemd): running jobs may finish for this
    # long; then they are handed back to the queue (visible again at once) and the process exits 0.
    shutdown_grace_s: float = Field(30.0, ge=0)
    # Where workflows execute: "thread" (threads of this process) or "process" (one child process
    # per device, comfyd.isolation: a crash or a hung node ends the child, not the server).
    isolation: Literal["thread", "process"] = "thread"
    # With isolation=process: how long a canceled or timed-out job may ignore its interrupt
    # before its execution process is killed (and restarted for the next job).
    isolation_kill_grace_s: float = Field(10.0, gt=0)
    sync_wait_s: float = Field(30.0, ge=0)
    retry_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(1.0, ge=0)
    history_max_items: int = 10000
    # Workflow limits checked by validation (comfyd.engine.service_limits).
    max_workflow_nodes: int = Field(100, ge=1)
    # The pixel budget: width x height of any latent a workflow makes (EmptyLatentImage,
    # LatentUpscale, LatentUpscaleBy, hires passes included). Not max_image_pixels, which bounds
    # the pictures LoadImage and uploads accept.
    max_latent_pixels: int = Field(1024 * 1024, ge=64 * 64)
    image_side_multiple: int = Field(8, ge=1)
    max_batch_size: int = Field(4, ge=1)

    # --- HTTP server ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8188
    # Keys, or `sha256:<hex>` of keys. Empty = no auth (allowed only on loopback).
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(120, ge=0)  # per key (or client address); 0 = off
    # Failed authentications per client address per minute before 429 (0 = no throttle).
    auth_failures_per_minute: int = Field(20, ge=0)
    # Without API keys: Host names accepted besides loopback ones (DNS-rebinding guard).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = 16 * 1024**2
    max_upload_bytes: int = 32 * 1024**2
    max_image_pixels: int = 4096 * 4096
    # All frames of an animated upload / LoadImage together (frames x width x height).
    max_image_frame_pixels: int = Field(4096 * 4096 * 4, ge=1)
    # The video budget: frames x width x height of any video a node decodes, assembles or
    # encodes (LoadVideo, GetVideoComponents, CreateVideo, SaveVideo, SaveWEBM, VHS nodes).
    max_video_pixels: int = Field(256 * 1024 * 1024, ge=1)
    # Characters per STRING literal of a workflow (prompt text); ComfyUI's UI never comes close.
    max_text_chars: int = Field(100_000, ge=1)
    # extra_data of a submission, as compact JSON (ComfyUI's UI puts its graph in there).
    max_extra_data_bytes: int = Field(4 * 1024**2, ge=1024)
    # Websocket: open connections at once, and unsent bytes per connection before it is closed.
    max_ws_connections: int = Field(500, ge=1)
    ws_max_backlog_bytes: int = Field(64 * 1024**2, ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Serve /docs and /openapi.json; unset = only when auth is off (the docs need no key).
    api_docs: bool | None = None
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

    @field_validator("api_keys", "cors_origins", "extra_model_dirs", "custom_nodes_dirs", "webhook_allowed_hosts",
                     "allowed_hosts", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        # COMFYD_API_KEYS=a,b is friendlier than JSON in an environment variable.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [v.strip() for v in text.split(",") if v.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, keys: list[str]) -> list[str]:
        # The one place keys are checked: a blank entry must not look like "auth on" to the bind
        # check and then vanish, leaving a network-facing server open.
        checked = []
        for index, key in enumerate(keys):
            entry = key.strip() if isinstance(key, str) else ""
            if not entry:
                raise ValueError(f"api_keys[{index}] is blank; remove it or give a real key")
            if entry.lower().startswith("sha256:"):
                digest = entry[len("sha256:"):].strip()
                if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
                    raise ValueError(f"api_keys[{index}]: sha256: must be followed by 64 hex digits")
            checked.append(entry)
        return checked

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

    @model_validator(mode="after")
    def _paths_in_home(self) -> Settings:
        # Written through __dict__ so the filled-in defaults do not count as explicitly set.
        for name, inside in HOME_PATHS.items():
            if name not in self.model_fields_set:
                self.__dict__[name] = Path(self.home).expanduser() / inside
        return self

    def is_explicit(self, name: str) -> bool:
        """Whether the field was given (keyword, variable, TOML) rather than defaulted."""
        return name in self.model_fields_set

    def model_roots(self) -> list[Path]:
        return [Path(self.models_dir), *[Path(p) for p in self.extra_model_dirs]]
