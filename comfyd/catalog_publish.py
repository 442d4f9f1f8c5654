"""Publishing this host's models to the shared model catalog (`comfyd worker` at start,
`comfyd models publish`), and `comfyd models sync` (edges: they use models/ and backends/)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

from comfyd.settings import Settings

log = logging.getLogger("comfyd.models")


def hash_cache_path(settings: Settings) -> Path:
    # Beside the spool, in the host's writable state: the models folder may be mounted read-only.
    return Path(settings.spool_dir) / "model-hashes.json"


def publish_models(settings: Settings, catalog: Any, host: str | None = None, paths: Any = None) -> int:
    """Scan the models folders (hashes cached) and publish them as this host's manifest; the
    number of models published."""
    from comfyd.models.catalog import scan_models
    from comfyd.models.paths import ModelPaths

    started = time.monotonic()
    paths = paths or ModelPaths(tuple(Path(p) for p in settings.model_roots()))
    entries = scan_models(paths, hash_cache_path(settings))
    key = catalog.publish(host or socket.gethostname(), [e.as_dict() for e in entries])
    log.info("published %d model(s) to the model catalog (%s) in %.1f s", len(entries), key,
             time.monotonic() - started)
    return len(entries)
