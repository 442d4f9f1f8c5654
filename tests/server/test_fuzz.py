"""Property-based fuzzing of every route (hypothesis): no 5xx, no hang, and a good job still runs.

Bodies are mutated ComfyUI workflows (values replaced by any JSON, lone surrogates, NaN and
Infinity, huge numbers, deep nesting; keys dropped; nodes added) and arbitrary JSON or bytes
with arbitrary content types, sent to every route the server's OpenAPI document lists (path
parameters fuzzed too), with and without an API key. The default example count is small for CI;
set COMFYD_FUZZ_EXAMPLES (for instance 2000) for a longer run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comfyd.engine.interfaces import JobStatus

sys.path.insert(0, str(Path(__file__).parent))
from conftest import sleep_workflow  # noqa: E402

EXAMPLES = int(os.environ.get("COMFYD_FUZZ_EXAMPLES", "40"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text that has broken servers: lone surrogates, NUL, traversal, huge and odd numbers as text.
NASTY_TEXT = st.sampled_from(["\ud800", "\udfff", "a\ud83d", "\x00", "../../etc/passwd", "%2e%2e/", "1e999",
                              "NaN", "-Infinity", "\u202e", "\\", "\ufeff", "x" * 5000, "", " "])
TEXT = st.one_of(st.text(max_size=40), NASTY_TEXT)
NUMBERS = st.one_of(st.integers(), st.integers(min_value=2**63, max_value=2**80), st.floats(allow_nan=True,
                    allow_infinity=True), st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0]))
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
JSON = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)


def deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = {"x": value}
    return value


@st.composite
def mutated_workflow(draw: st.DrawFn) -> dict[str, Any]:
    workflow = sleep_workflow(0.0, 1, "fuzz")
    for _ in range(draw(st.integers(0, 3))):
        node_id = draw(st.sampled_from(sorted(workflow) + ["new"]))
        node = workflow.get(node_id)
        if not isinstance(node, dict):
            node = workflow[node_id] = {"class_type": draw(st.sampled_from(["TestSleep", "TestSave", "Nope"])),
                                        "inputs": {}}
        action = draw(st.sampled_from(["value", "drop", "class", "inputs", "node"]))
        if action == "value" and isinstance(node.get("inputs"), dict):
            name = draw(st.sampled_from(sorted(node["inputs"]) + ["extra"]))
            node["inputs"][name] = draw(st.one_of(JSON, st.builds(deep, st.integers(50, 900))))
        elif action == "drop" and isinstance(node.get("inputs"), dict) and node["inputs"]:
            node["inputs"].pop(draw(st.sampled_from(sorted(node["inputs"]))))
        elif action == "class":
            node["class_type"] = draw(JSON)
        elif action == "inputs":
            node["inputs"] = draw(JSON)
        else:
            workflow[node_id] = draw(JSON)
    return workflow


@st.composite
def request_body(draw: st.DrawFn) -> tuple[bytes, str]:
    """(raw body, content type)."""
    kind = draw(st.sampled_from(["prompt", "prediction", "generate", "json", "bytes", "deep"]))
    if kind == "prompt":
        body: Any = {"prompt": draw(mutated_workflow())}
        if draw(st.booleans()):
            body["extra_data"] = draw(st.one_of(JSON, st.fixed_dictionaries(
                {}, optional={"preview_method": JSON, "webhook_events_filter": JSON, "webhook": JSON,
                              "extra_pnginfo": JSON})))
        if draw(st.booleans()):
            body["prompt_id"] = draw(JSON)
    elif kind == "prediction":
        body = {"input": {"workflow_json": draw(st.one_of(mutated_workflow(), JSON))}, "id": draw(st.none() | TEXT),
                "webhook_events_filter": draw(st.none() | JSON)}
    elif kind == "generate":
        body = {"prompt": draw(TEXT), "cfg": draw(NUMBERS), "width": draw(NUMBERS), "seed": draw(NUMBERS),
                "workflow": draw(st.none() | mutated_workflow())}
    elif kind == "json":
        body = draw(JSON)
    elif kind == "deep":
        body = {"prompt": {}, "extra_data": deep(draw(st.integers(60, 900)))}
    else:
        return draw(st.binary(max_size=200)), draw(st.sampled_from(["application/json", "text/plain", ""]))
    raw = json.dumps(body).encode("ascii")  # json.dumps writes NaN/Infinity and escapes surrogates
    content_type = draw(st.sampled_from(["application/json"] * 4 + ["text/plain", "application/x-www-form-urlencoded"]))
    return raw, content_type


def route_list(app: Any) -> list[tuple[str, str]]:
    paths = app.openapi()["paths"]
    return sorted((method.upper(), path) for path, item in paths.items() for method in item)


def fill(path: str, value: str) -> str:
    """`path` with every {parameter} replaced by `value`, percent-encoded byte for byte."""
    encoded = quote(value.encode("utf-8", "surrogatepass"), safe="") or "x"
    return re.sub(r"\{[^}]+\}", lambda _m: encoded, path)


def check_good_job_runs(server: Any, http: httpx.Client) -> None:
    answer = http.post("/prompt", json={"prompt": sleep_workflow(0.0, 1, "good")})
    assert answer.status_code == 200, answer.text
    assert server.wait_job(answer.json()["prompt_id"], timeout=30).status is JobStatus.SUCCEEDED
    for path in ("/history", "/queue", "/v1/status"):
        assert http.get(path).status_code == 200


@pytest.mark.parametrize("with_key", [False, True])
def test_fuzz_every_route(start_server, with_key: bool) -> None:
    srv = start_server(**({"api_keys": ["fuzz-key"], "auth_failures_per_minute": 0} if with_key else {}),
                       queue_max_depth=1000, sync_wait_s=0.0)
    routes = [r for r in route_list(srv.app) if r[1] not in ("/ws", "/api/ws")]
    assert len(routes) >= 20
    headers = {"x-api-key": "fuzz-key"} if with_key else {}
    http = httpx.Client(base_url=srv.url, timeout=15.0, headers=headers)  # a hang fails as a timeout

    @FUZZ_SETTINGS
    @given(route=st.sampled_from(routes), body=request_body(), param=TEXT, query=st.dictionaries(
        st.sampled_from(["filename", "subfolder", "type", "max_items", "offset"]), TEXT, max_size=3))
    def one_request(route: tuple[str, str], body: tuple[bytes, str], param: str, query: dict[str, str]) -> None:
        method, path = route
        url = fill(path, param)
        safe_query = {k: v.encode("utf-8", "replace").decode("utf-8") for k, v in query.items()}
        raw, content_type = body
        send_headers = {"content-type": content_type} if content_type else {}
        if method in ("GET", "HEAD", "DELETE"):
            raw = b""
        if path.endswith("/upload/image") or path.endswith("/upload/mask"):
            subfolder = param[:50].encode("utf-8", "replace").decode("utf-8")
            answer = http.post(url, files={"image": ("f.png", raw, "image/png")}, data={"subfolder": subfolder})
        else:
            answer = http.request(method, url, params=safe_query, content=raw, headers=send_headers)
        assert answer.status_code < 500, (method, url, answer.status_code, answer.text[:300])
        if answer.headers.get("content-type", "").startswith("application/json") and answer.content:
            json.loads(answer.text, parse_constant=lambda c: pytest.fail(f"{c} in a response"))

    try:
        one_request()
        check_good_job_runs(srv, http)
    finally:
        http.post("/queue", json={"clear": True})
        http.close()
