"""The official TypeScript SDK (`@comfyorg/sdk`) against comfyd: skipped cleanly when node or the
package is not installed (`make ts-sdk` installs it from tests/ts/package-lock.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

TS_DIR = Path(__file__).resolve().parents[1] / "ts"


def _skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (TS_DIR / "node_modules" / "@comfyorg" / "sdk" / "package.json").is_file():
        return "@comfyorg/sdk is not installed (run `make ts-sdk`)"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_typescript_sdk_smoke(server) -> None:
    env = {**os.environ, "COMFY_BASE_URL": server.url}
    env.pop("COMFY_API_KEY", None)
    done = subprocess.run(["node", "smoke.mjs"], cwd=TS_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["status"] == "succeeded" and seen["kinds"][-1] == "status:succeeded"
    assert "progress" in seen["kinds"] and "outputReady" in seen["kinds"]
    assert seen["output"]["type"] == "image" and seen["bytes"] == seen["output"]["size"] > 0
    assert seen["head"] == [0x89, 0x50, 0x4E, 0x47]  # Range: bytes=0-3
    assert seen["format"] == "api" and seen["again"] == "succeeded"
    assert seen["assetId"] and seen["assetNew"] is True
    assert (Path(server.settings.input_dir) / "ts" / "hello.txt").read_bytes() == b"hello from node"
    assert seen["canceled"] == "canceled"
