"""Smoke test: the real AWS Lambda runtime interface client (awslambdaric), started exactly as
Dockerfile.lambda starts it, serves invocations from a loopback Lambda Runtime API.

The official Runtime Interface Emulator is not obtainable here; conftest.LambdaRuntimeApi
implements the endpoints the client uses (next invocation, response, invocation error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def container_command() -> list[str]:
    """ENTRYPOINT + CMD of Dockerfile.lambda, with `python` being this interpreter."""
    entrypoint: list[str] = []
    command: list[str] = []
    for line in (ROOT / "Dockerfile.lambda").read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line.removeprefix("ENTRYPOINT "))
        elif line.startswith("CMD "):
            command = json.loads(line.removeprefix("CMD "))
    assert entrypoint and command
    words = entrypoint + command
    return [sys.executable if words[0] == "python" else words[0], *words[1:]]


def test_awslambdaric_serves_api_events_through_the_handler(
    lambda_env: dict[str, str], runtime_api: Any, events: Any, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "AWS_LAMBDA_RUNTIME_API": runtime_api.address,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/comfyd-deploy-test",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/28/[$LATEST]0123456789abcdef",
        "PYTHONUNBUFFERED": "1",
    }
    health = runtime_api.invoke(events.rest("GET", "/health-check", key=None))
    history = runtime_api.invoke(events.http("GET", "/history"))
    unauthenticated = runtime_api.invoke(events.rest("GET", "/history", key=None))
    unsupported = runtime_api.invoke({"hello": "world"})
    log = (tmp_path / "function.log").open("w")
    started = time.monotonic()
    process = subprocess.Popen(container_command(), env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert health.done.wait(60), "no response to the first invocation"
        first_response_s = time.monotonic() - started
        for invocation in (history, unauthenticated, unsupported):
            assert invocation.done.wait(30), f"no answer to {invocation.event.get('rawPath') or invocation.event}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
    output = (tmp_path / "function.log").read_text()
    assert runtime_api.init_errors == [], output[-3000:]

    assert health.error is None, health.error
    assert health.response["statusCode"] == 200
    assert json.loads(health.response["body"])["status"] in {"STARTING", "READY", "BUSY"}
    assert history.response == {"statusCode": 200, "body": "{}", "isBase64Encoded": False,
                                "headers": {"content-length": "2", "content-type": "application/json"}}
    assert unauthenticated.response["statusCode"] == 401
    # A function error is reported through the Runtime API's error endpoint, typed.
    assert unsupported.response is None
    assert unsupported.error["errorType"] == "UnsupportedEventError"
    assert "unsupported event (keys: hello)" in unsupported.error["errorMessage"]
    assert runtime_api.polls >= 4  # one `next` per invocation: the loop went on after the error
    print(f"\nawslambdaric: process start -> first API response {first_response_s:.2f} s")
