"""The OpenAPI document: request body schemas for every JSON route, and schemathesis finds no
server error or non-conformance against it (hostile-input issue, item 12).

Schemathesis generates requests from the document for every operation and checks the answers
against it. COMFYD_SCHEMATHESIS_EXAMPLES raises the per-operation count (default small for CI).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("COMFYD_SCHEMATHESIS_EXAMPLES", "6"))
JSON_ROUTES = [("post", "/prompt"), ("post", "/queue"), ("post", "/interrupt"), ("post", "/free"),
               ("post", "/history"), ("post", "/predictions"), ("put", "/predictions/{prediction_id}"),
               ("post", "/v1/generate")]


def test_json_routes_document_their_request_bodies(server) -> None:
    doc = server.app.openapi()
    for method, path in JSON_ROUTES:
        for prefix in ("",) if path.startswith(("/predictions", "/v1")) else ("", "/api"):
            body = doc["paths"][prefix + path][method]["requestBody"]
            schema = body["content"]["application/json"]["schema"]
            assert schema["type"] == "object" and schema["properties"], (method, path)
            assert "$defs" not in str(schema)
    upload = doc["paths"]["/upload/image"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "image" in upload["properties"]
    assert doc["paths"]["/prompt"]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "prompt"]


def test_schemathesis_finds_nothing(start_server) -> None:
    srv = start_server(queue_max_depth=10_000, sync_wait_s=0.0)
    schema = schemathesis.openapi.from_dict(srv.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if not op.path.endswith("/ws")]
    assert len(operations) >= 30
    checks = (status_code_conformance, content_type_conformance, response_schema_conformance,
              allow_header_conformance)
    failures: list[str] = []

    @settings(max_examples=EXAMPLES * len(operations), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        operation = data.draw(st.sampled_from(operations))
        case = data.draw(operation.as_strategy())
        response = case.call(base_url=srv.url, timeout=15)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}")
            return
        try:
            case.validate_response(response, checks=checks)
        except BaseException as exc:  # schemathesis raises a failure group naming every broken check
            if not isinstance(exc, Exception) and type(exc).__name__ not in ("FailureGroup", "BaseExceptionGroup"):
                raise
            lines = [line for line in str(exc).splitlines() if line.startswith("- ") or "Received" in line]
            failures.append(f"{case.method} {case.formatted_path}: " + " | ".join(lines))

    run()
    assert failures == [], "\n".join(sorted(set(f.replace("/api/", "/") for f in failures)))


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_the_document_is_not_served_unless_enabled(start_server, path: str) -> None:
    # Without keys the docs are on by default (first-hour issue); COMFYD_API_DOCS=false turns them off.
    srv = start_server(api_docs=False)
    with srv.client() as http:
        assert http.get(path).status_code == 404
