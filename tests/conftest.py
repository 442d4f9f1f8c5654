"""Shared test set-up: quiet, offline, deterministic, and bounded CPU use."""

from __future__ import annotations

import os

# Nothing may reach a model hub; the code must not even try (tests assert it elsewhere).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A config file in the developer's working directory must not leak into tests.
os.environ.setdefault("COMFYD_CONFIG", os.devnull)
