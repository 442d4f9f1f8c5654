"""Cold start of the API function: importing the handler and serving API routes loads no torch.

Each check runs in a fresh interpreter (a cold execution environment), configured as the
template configures the API function (AWS backends, here on the local AWS endpoint). The
measured times are printed (`pytest -s`) and bounded loosely: the import-time bound fails if
torch (1-2 s to import on these machines) or another framework sneaks into the import chain.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from typing import Any

import pytest

HEAVY = ("torch", "diffusers", "transformers", "accelerate", "safetensors", "scipy", "torchsde")

SERVE_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from comfyd.lambda_handler import handler
imported = time.perf_counter()
after_import = sorted(m for m in {heavy!r} if m in sys.modules)
app_built_at_import = "comfyd.server" in sys.modules
results = []
for event in json.load(sys.stdin):
    t = time.perf_counter()
    reply = handler(event, None)
    results.append({{"status": reply["statusCode"], "seconds": time.perf_counter() - t}})
after_requests = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"import_s": imported - started, "results": results, "app_built_at_import": app_built_at_import,
                  "heavy_after_import": after_import, "heavy_after_requests": after_requests}}))
"""


def run_cold(events: list[dict[str, Any]], **env: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT.format(heavy=HEAVY)], input=json.dumps(events),
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_api_routes_are_served_without_importing_torch(lambda_env: dict[str, str], events: Any) -> None:
    requests = [
        events.rest("GET", "/health-check", key=None),
        events.http("GET", "/history"),
        events.rest("GET", "/queue"),
        events.http("GET", "/predictions/unknown-id"),
        events.http("GET", "/history", key=None),
    ]
    report = run_cold(requests)
    later = ", ".join(f"{r['seconds'] * 1000:.0f}" for r in report["results"][1:])
    print(f"\ncold start (AWS backends on the local endpoint): import {report['import_s'] * 1000:.0f} ms, "
          f"first request {report['results'][0]['seconds'] * 1000:.0f} ms, then {later} ms")
    assert [r["status"] for r in report["results"]] == [200, 200, 200, 404, 401]
    assert report["app_built_at_import"] is False
    assert report["heavy_after_import"] == []
    assert report["heavy_after_requests"] == []


def test_provisioned_environments_build_the_api_during_initialisation(lambda_env: dict[str, str], events: Any) -> None:
    report = run_cold([events.http("GET", "/history")], AWS_LAMBDA_INITIALIZATION_TYPE="provisioned-concurrency")
    assert report["app_built_at_import"] is True
    assert report["heavy_after_import"] == [] and report["heavy_after_requests"] == []
    assert report["results"][0]["status"] == 200
    print(f"\nprovisioned concurrency: initialisation {report['import_s'] * 1000:.0f} ms, "
          f"first request {report['results'][0]['seconds'] * 1000:.0f} ms")


@pytest.mark.slow  # a fresh interpreter imports torch and the nodes: ~5 s
def test_submitting_is_what_loads_torch(lambda_env: dict[str, str], events: Any) -> None:
    # The check above can fail: a route that needs the node registry (validation) imports torch.
    body = json.dumps({"prompt": {"1": {"class_type": "EmptyLatentImage",
                                        "inputs": {"width": 64, "height": 64, "batch_size": 1}}}}).encode()
    report = run_cold([events.rest("POST", "/prompt", body=body)])
    assert report["heavy_after_import"] == []
    assert "torch" in report["heavy_after_requests"]
    print(f"\ncold POST /prompt (node registry, torch): {report['results'][0]['seconds']:.2f} s")


def test_handler_import_time() -> None:
    samples = []
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import comfyd.lambda_handler"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "COMFYD_CONFIG": os.devnull})
        assert proc.returncode == 0, proc.stderr[-2000:]
        line = next(m for m in proc.stderr.splitlines() if re.search(r"\|\s+comfyd\.lambda_handler$", m))
        samples.append(int(line.split("|")[1]) / 1e6)  # cumulative microseconds -> seconds
        imported = {m.group(1).strip() for m in re.finditer(r"\|\s+([\w.]+)$", proc.stderr, re.M)}
        assert imported.isdisjoint(HEAVY), imported & set(HEAVY)
    median = statistics.median(samples)
    print(f"\n`import comfyd.lambda_handler` (python -X importtime, cumulative): median {median * 1000:.0f} ms "
          f"of {[round(s * 1000) for s in samples]}")
    assert median < 1.0
