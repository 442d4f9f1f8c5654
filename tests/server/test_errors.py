"""The error matrix: every bad request is a 4xx whose body says what and where; never a 500."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest


def error_type(response: httpx.Response) -> str:
    return response.json()["error"]["type"]


# ---- 400 ----------------------------------------------------------------------------------------


def test_unconvertible_ui_workflow_posted_to_prompt_gets_the_export_hint(server) -> None:
    # UI workflows are converted (tests/workflow_formats); one that cannot be gets the hint.
    ui = {"last_node_id": 9, "last_link_id": 9, "nodes": [{"id": 3, "type": "NoSuchNodeAnywhere"}], "links": [],
          "version": 0.4}
    with server.client() as http:
        for body in ({"prompt": ui}, {"prompt": ui, "client_id": "c", "extra_data": {}}):
            answer = http.post("/prompt", json=body)
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert "NoSuchNodeAnywhere" in error["message"] and "Save (API Format)" in error["details"]
            assert "last_node_id" not in json.dumps(answer.json())


def test_400_validation_bodies_are_comfyuis(server, workflow) -> None:
    with server.client() as http:
        unknown = http.post("/prompt", json={"prompt": {"3": {"class_type": "NoSuchNode", "inputs": {}}}})
        assert unknown.status_code == 400
        assert unknown.json() == {
            "error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.",
                      "details": "Node ID '#3'", "extra_info": {}},
            "node_errors": {},
        }
        bad = workflow()
        bad["3"]["inputs"]["steps"] = "abc"
        answer = http.post("/prompt", json={"prompt": bad})
        assert answer.status_code == 400
        body = answer.json()
        assert body["error"]["type"] == "prompt_outputs_failed_validation"
        errors = body["node_errors"]["3"]["errors"]
        assert errors[0]["type"] == "invalid_input_type" and errors[0]["extra_info"]["input_name"] == "steps"
        assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]

        too_big = workflow()
        too_big["3"]["inputs"]["seconds"] = 1000.0
        body = http.post("/prompt", json={"prompt": too_big}).json()
        assert body["node_errors"]["3"]["errors"][0]["type"] == "value_bigger_than_max"

        no_outputs = {"3": workflow()["3"]}
        body = http.post("/prompt", json={"prompt": no_outputs}).json()
        assert body["error"]["type"] == "prompt_no_outputs"
    assert server.services.queue.depth() == 0 and server.services.job_store.list() == []


def _with_extra(extra_data: dict) -> bytes:
    """A valid fake-node /prompt body with the given extra_data."""
    prompt = {
        "3": {"class_type": "TestSleep", "inputs": {"seconds": 0.0, "steps": 1, "tag": ""}},
        "9": {"class_type": "TestSave", "inputs": {"value": ["3", 0], "filename_prefix": "t", "folder": "output"}},
    }
    return json.dumps({"prompt": prompt, "extra_data": extra_data}).encode()


@pytest.mark.parametrize(
    ("path", "content", "location"),
    [
        ("/prompt", b'{"prompt": {', "line"),  # truncated JSON: says where
        ("/prompt", b"[1, 2]", None),  # not an object
        ("/prompt", b"", None),  # empty
        ("/prompt", b"[" * 50_000 + b"]" * 50_000, "deeply"),  # nesting bomb
        ("/prompt", b'{"prompt": {"3": {"class_type": "TestSleep", "inputs": {"tag": ' + b'{"a": ' * 5000
         + b"1" + b"}" * 5000 + b"}}}}", None),
        ("/prompt", b'{"client_id": "x"}', "prompt"),  # no prompt
        ("/prompt", b'{"prompt": {"3": {"class_type": "TestSleep", "inputs": {}}}, "priority": 99}', None),
        ("/predictions", b'{"input": {}}', "input.workflow_json"),
        ("/predictions", b'{"input": {"workflow_json": "{nope"}}', "input.workflow_json"),
        ("/predictions", b'{"input": {"workflow_json": "https://example.com/w.json"}}', "input.workflow_json"),
        ("/predictions", b'{"input": {"workflow_json": {}, "output_format": "webp"}}', "input.output_format"),
        ("/predictions", b'{"input": {"workflow_json": {}}, "webhook": "file:///etc/passwd"}', "webhook"),
        ("/v1/generate", b'{"prompt": "x", "steps": 0}', "steps"),
        ("/v1/generate", b'{"prompt": "x", "colour": "red"}', "colour"),
        ("/v1/generate", b'{"prompt": "x", "node_id": "77"}', "node_id"),
        ("/v1/generate", b'{"prompt": "x", "workflow": {"3": {"class_type": "TestSleep", "inputs": {}}}}', "prompt"),
        ("/v1/generate", b'{"prompt": "x", "steps": 3, "workflow": {"3": {"class_type": "TestSleep", "inputs": {}}}}',
         "steps"),
        ("/prompt", _with_extra({"webhook": "file:///etc/passwd"}), "extra_data.webhook"),
        ("/prompt", _with_extra({"webhook_events_filter": ["everything"]}), "extra_data.webhook_events_filter"),
        ("/prompt", _with_extra({"preview_method": "taesd"}), "extra_data.preview_method"),
        ("/queue", b'{"delete": "abc"}', "delete"),
        ("/interrupt", b'{"prompt_id": 5}', "prompt_id"),
        ("/free", b'{"unload_models": "yes"}', "unload_models"),
    ],
)
def test_400_bad_bodies_name_what_and_where(server, path: str, content: bytes, location: str | None) -> None:
    with server.client() as http:
        answer = http.post(path, content=content, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"]["message"]
    if location is not None:
        assert location in json.dumps(body), body


@pytest.mark.parametrize("prompt_id", ["../../etc", "a/b", "", "x" * 200, "white space"])
def test_400_unsafe_job_ids(server, workflow, prompt_id: str) -> None:
    with server.client() as http:
        answer = http.post("/prompt", json={"prompt": workflow(), "prompt_id": prompt_id})
        put = http.put(f"/predictions/{prompt_id}", json={"input": {"workflow_json": workflow()}})
    assert answer.status_code == 400 and "prompt_id" in answer.json()["error"]["message"]
    assert put.status_code in (400, 404, 405)  # a '/' in the id is a different route
    assert server.services.job_store.list() == []


@pytest.mark.parametrize(
    "query",
    [{"filename": ""}, {"filename": "a.png", "type": "secret"}],
)
def test_400_bad_view_queries(server, query: dict[str, str]) -> None:
    with server.client() as http:
        answer = http.get("/view", params=query)
    assert answer.status_code == 400 and error_type(answer) == "InvalidRequest"


def test_400_bad_history_query(server) -> None:
    with server.client() as http:
        answer = http.get("/history", params={"max_items": "-1"})
    assert answer.status_code == 400
    assert answer.json()["error"]["details"][0]["location"] == "query.max_items"


# ---- 401 / 403 -----------------------------------------------------------------------------------


def test_401_403_and_accepted_key_forms(start_server, workflow) -> None:
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    srv = start_server(api_keys=["plain-secret", f"sha256:{digest}"])
    with srv.client() as http:
        none = http.get("/queue")
        assert none.status_code == 401 and error_type(none) == "InvalidCredentials"
        assert none.headers["www-authenticate"] == "Bearer"
        wrong = http.get("/queue", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and error_type(wrong) == "InvalidAPIKey"
        wrong_x = http.post("/prompt", json={"prompt": workflow()}, headers={"X-API-Key": "nope"})
        assert wrong_x.status_code == 403
        basic = http.get("/queue", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401
        assert http.get("/queue", headers={"Authorization": "Bearer plain-secret"}).status_code == 200
        assert http.get("/queue", headers={"X-API-Key": "plain-secret"}).status_code == 200
        assert http.get("/api/queue", headers={"X-API-Key": "hashed-secret"}).status_code == 200
        assert http.get("/metrics").status_code == 401
        assert http.post("/predictions", json={"input": {"workflow_json": {}}}).status_code == 401
        # Health checks (load balancers, container HEALTHCHECK) need no key.
        health = http.get("/health-check")
        assert health.status_code == 200 and health.json()["status"] == "READY"


# ---- 404 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/no/such/route"),
        ("GET", "/predictions/nope"),
        ("POST", "/predictions/nope/cancel"),
        ("GET", "/view?filename=missing.png"),
        ("GET", "/models/not_a_folder"),
    ],
)
def test_404(server, method: str, path: str) -> None:
    with server.client() as http:
        answer = http.request(method, path)
    assert answer.status_code == 404 and error_type(answer) == "NotFound"
    assert answer.json()["error"]["message"]


def test_unknown_history_and_object_info_are_empty_like_comfyui(server) -> None:
    with server.client() as http:
        assert http.get("/history/nope").json() == {}
        assert http.get("/object_info/NoSuchNode").json() == {}
        assert "TestSleep" in http.get("/object_info").json()


# ---- 413 ------------------------------------------------------------------------------------------


def test_413_body_upload_and_image_size(start_server, workflow, png) -> None:
    srv = start_server(max_body_bytes=2000, max_upload_bytes=5000, max_image_pixels=32 * 32)
    with srv.client() as http:
        big = {"prompt": workflow(), "padding": "x" * 5000}
        answer = http.post("/prompt", json=big)
        assert answer.status_code == 413 and error_type(answer) == "PayloadTooLarge"
        assert answer.json()["error"]["details"]["limit_bytes"] == 2000
        assert "COMFYD_MAX_BODY_BYTES" in answer.json()["error"]["message"]  # names what raises it

        def chunks():  # no Content-Length: counted while streaming
            for _ in range(10):
                yield b" " * 500

        streamed = http.post("/prompt", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413

        huge_file = http.post("/upload/image", files={"image": ("a.png", b"\0" * 6000, "image/png")})
        assert huge_file.status_code == 413 and "upload" in huge_file.json()["error"]["message"]
        assert "COMFYD_MAX_UPLOAD_BYTES" in huge_file.json()["error"]["message"]

        many_pixels = http.post("/upload/image", files={"image": ("b.png", png(64, 64), "image/png")})
        assert many_pixels.status_code == 413 and error_type(many_pixels) == "ImageTooLarge"
        assert many_pixels.json()["error"]["details"] == {"width": 64, "height": 64, "max_pixels": 1024}
        assert "COMFYD_MAX_IMAGE_PIXELS" in many_pixels.json()["error"]["message"]

        ok = http.post("/upload/image", files={"image": ("c.png", png(16, 16), "image/png")})
        assert ok.status_code == 200 and ok.json() == {"name": "c.png", "subfolder": "", "type": "input"}


# ---- 429 ---------------------------------------------------------------------------------------------


def test_429_rate_limit_per_key(start_server, workflow) -> None:
    srv = start_server(api_keys=["key-a", "key-b"], rate_limit_per_minute=2)
    with srv.client() as http:
        for i in range(2):
            ok = http.post("/prompt", json={"prompt": workflow(tag=str(i))}, headers={"X-API-Key": "key-a"})
            assert ok.status_code == 200
        limited = http.post("/prompt", json={"prompt": workflow()}, headers={"X-API-Key": "key-a"})
        assert limited.status_code == 429 and error_type(limited) == "RateLimit"
        assert int(limited.headers["retry-after"]) >= 1
        assert "COMFYD_RATE_LIMIT_PER_MINUTE" in limited.json()["error"]["message"]
        # Another key has its own budget; reads are not limited.
        assert http.post("/prompt", json={"prompt": workflow()}, headers={"X-API-Key": "key-b"}).status_code == 200
        assert http.get("/queue", headers={"X-API-Key": "key-a"}).status_code == 200


# ---- 503 --------------------------------------------------------------------------------------------


def test_503_when_the_queue_is_full(start_server, workflow) -> None:
    srv = start_server(max_concurrent_jobs=1, queue_max_depth=2)
    with srv.client() as http:
        running = http.post("/prompt", json={"prompt": workflow(2.0, 40, "run")}).json()["prompt_id"]
        srv.wait_job(running, terminal=False)
        srv.wait_until(lambda: srv.job(running).status.value == "running", what="job running")
        for i in range(2):
            assert http.post("/prompt", json={"prompt": workflow(tag=f"q{i}")}).status_code == 200
        full = http.post("/prompt", json={"prompt": workflow(tag="over")})
        assert full.status_code == 503 and error_type(full) == "ServiceUnavailable"
        assert int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["details"] == {"queue_depth": 2, "queue_max_depth": 2}
        assert "COMFYD_QUEUE_MAX_DEPTH" in full.json()["error"]["message"]
        predicted = http.post("/predictions", json={"input": {"workflow_json": workflow(tag="p")}})
        assert predicted.status_code == 503
        http.post("/interrupt", json={"prompt_id": running})


def test_resubmitting_an_accepted_id_is_not_refused_when_full(start_server, workflow) -> None:
    srv = start_server(max_concurrent_jobs=1, queue_max_depth=1)
    with srv.client() as http:
        running = http.post("/prompt", json={"prompt": workflow(2.0, 40)}).json()["prompt_id"]
        srv.wait_until(lambda: srv.job(running).status.value == "running", what="job running")
        first = http.post("/prompt", json={"prompt": workflow(tag="w"), "prompt_id": "waiting-1"})
        again = http.post("/prompt", json={"prompt": workflow(tag="w"), "prompt_id": "waiting-1"})
        assert first.status_code == again.status_code == 200
        assert first.json()["number"] == again.json()["number"]
        http.post("/interrupt")
