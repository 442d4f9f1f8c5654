"""Shared test set-up: quiet, offline, deterministic, and bounded CPU use."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Nothing may reach a model hub; the code must not even try (tests assert it elsewhere).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# A config file in the developer's working directory must not leak into tests.
os.environ.setdefault("COMFYD_CONFIG", os.devnull)
# comfyd's data folder (default folders, database) is a throw-away one, never the developer's.
_HOME = tempfile.mkdtemp(prefix="comfyd-test-home-")
os.environ["COMFYD_HOME"] = _HOME
atexit.register(shutil.rmtree, _HOME, True)
