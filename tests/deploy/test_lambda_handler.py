"""comfyd.lambda_handler.handler with API Gateway (REST v1, HTTP v2), SQS and direct events,
against the real server app and AWS backends on the local AWS endpoint (moto, over HTTP).

The process is made to look like a deployed function (AWS_LAMBDA_FUNCTION_NAME and the
template's COMFYD_* variables); each test starts from a cold execution environment.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import pytest
from PIL import Image

from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.lambda_handler import LAMBDA_SCRATCH, UnsupportedEventError, handler, lambda_app, lambda_settings
from comfyd.settings import Settings

COG_STATUSES = {"STARTING", "READY", "BUSY", "SETUP_FAILED", "DEFUNCT", "UNHEALTHY"}


def body_of(result: dict[str, Any]) -> Any:
    raw = base64.b64decode(result["body"]) if result["isBase64Encoded"] else result["body"].encode()
    return json.loads(raw)


def sqs_client() -> Any:
    return boto3.client("sqs")


def receive_all(queue_name: str, visibility_s: int = 60) -> list[dict[str, Any]]:
    sqs = sqs_client()
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=visibility_s,
                                MessageSystemAttributeNames=["ApproximateReceiveCount"])
    return reply.get("Messages", [])


def queue_arn(queue_name: str) -> str:
    sqs = sqs_client()
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


# --- event routing and settings ------------------------------------------------------------------


@pytest.mark.parametrize("event", [{"hello": "world"}, {"Records": [{"eventSource": "aws:s3"}]}, [1, 2]])
def test_events_of_other_kinds_are_refused_by_name(event: Any, fake_context: Any) -> None:
    with pytest.raises(UnsupportedEventError, match="unsupported event|JSON object"):
        handler(event, fake_context)


def test_writable_paths_move_to_tmp_inside_lambda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("COMFYD_OUTPUT_DIR", "COMFYD_INPUT_DIR", "COMFYD_SPOOL_DIR", "COMFYD_DB_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMFYD_TEMP_DIR", "/var/scratch/comfyd-temp")  # absolute: kept
    monkeypatch.setattr("comfyd.lambda_handler.LAMBDA_SCRATCH", tmp_path / "scratch")
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    assert lambda_settings().output_dir == Settings().output_dir  # outside Lambda: as configured
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "comfyd-api")
    settings = lambda_settings()
    assert settings.output_dir == tmp_path / "scratch" / "output"
    assert settings.input_dir == tmp_path / "scratch" / "input"
    assert settings.db_path == tmp_path / "scratch" / "comfyd.db"
    assert settings.spool_dir == tmp_path / "scratch" / "spool"
    assert settings.temp_dir == Path("/var/scratch/comfyd-temp")
    assert (tmp_path / "scratch").is_dir()
    assert LAMBDA_SCRATCH == Path("/tmp/comfyd")


# --- API Gateway -----------------------------------------------------------------------------------


def test_api_routes_answer_rest_and_http_api_events(lambda_env: dict[str, str], events: Any, fake_context: Any) -> None:
    health = handler(events.rest("GET", "/health-check", key=None), fake_context)  # public route
    assert health["statusCode"] == 200 and "multiValueHeaders" in health
    assert body_of(health)["status"] in COG_STATUSES

    history = handler(events.http("GET", "/history", query="max_items=5"), fake_context)
    assert (history["statusCode"], body_of(history)) == (200, {})
    assert "headers" in history and "multiValueHeaders" not in history

    missing = handler(events.rest("GET", "/history", key=None), fake_context)
    assert missing["statusCode"] == 401 and "InvalidCredentials" in missing["body"]
    wrong = handler(events.http("GET", "/history", key="not-the-key"), fake_context)
    assert wrong["statusCode"] == 403 and "InvalidAPIKey" in wrong["body"]
    unknown = handler(events.http("GET", "/predictions/no-such-job"), fake_context)
    assert unknown["statusCode"] == 404

    staged = events.http("GET", "/v1/queue")
    staged["requestContext"]["stage"] = "v1"
    queue = handler(staged, fake_context)
    assert queue["statusCode"] == 200 and body_of(queue) == {"queue_running": [], "queue_pending": []}


def test_api_refuses_to_serve_without_api_keys(lambda_env: dict[str, str], events: Any, fake_context: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYD_API_KEYS", "")
    result = handler(events.http("GET", "/health-check", key=None), fake_context)
    assert result["statusCode"] == 500
    assert body_of(result)["error"]["type"] == "ServerMisconfigured"
    assert "COMFYD_API_KEYS" in body_of(result)["error"]["message"]


def test_a_malformed_proxy_event_gets_a_400(lambda_env: dict[str, str], events: Any, fake_context: Any) -> None:
    event = events.rest("POST", "/prompt", body=b"{}")
    event["body"] = "%%% not base64 %%%"
    result = handler(event, fake_context)
    assert result["statusCode"] == 400 and "base64" in body_of(result)["error"]["message"]


# --- SQS -------------------------------------------------------------------------------------------


def _store_job(status: JobStatus) -> JobRecord:
    store = lambda_app().services.job_store
    job = JobRecord(id=f"job-{status.value}-{time.monotonic_ns()}", workflow={"1": {"class_type": "EmptyLatentImage", "inputs": {}}})
    assert store.create(job)
    if status is not JobStatus.QUEUED:
        assert store.transition(job.id, {JobStatus.QUEUED}, JobStatus.RUNNING, started_at=time.time(), attempts=1,
                                worker_id="gpu-worker-1")
    if status.terminal:
        assert store.transition(job.id, {JobStatus.RUNNING}, status, finished_at=time.time())
    return job


def test_sqs_batch_reports_exactly_the_failed_messages(lambda_env: dict[str, str], events: Any, fake_context: Any) -> None:
    queue_name = lambda_env["COMFYD_SQS_QUEUE"]
    done = _store_job(JobStatus.SUCCEEDED)
    held = _store_job(JobStatus.RUNNING)  # its worker is alive: a duplicate delivery
    services = lambda_app().services
    services.queue.put(done.id, 1)
    services.queue.put(held.id, 1)
    services.queue.put("job-that-expired", 1)
    sqs = sqs_client()
    url = sqs.get_queue_url(QueueName=queue_name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="this is not a job message")
    # Received visible-again-at-once, so that only what the function does changes visibility.
    messages = receive_all(queue_name, visibility_s=0)
    assert len(messages) == 4
    by_body = {m["Body"]: m["MessageId"] for m in messages}
    result = handler(events.sqs(messages, queue_arn(queue_name)), fake_context)

    failed = {f["itemIdentifier"] for f in result["batchItemFailures"]}
    held_message = next(mid for body, mid in by_body.items() if held.id in body)
    assert failed == {by_body["this is not a job message"], held_message}
    # The finished and the unknown job's messages are left for Lambda to delete, the malformed
    # one for the redrive to the DLQ; the held job's message was pushed back by the worker's delay.
    visible = {m["MessageId"] for m in receive_all(queue_name)}
    assert visible == set(by_body.values()) - {held_message}
    store = services.job_store
    assert store.get(done.id).status is JobStatus.SUCCEEDED and store.get(done.id).attempts == 1
    assert store.get(held.id).status is JobStatus.RUNNING and store.get(held.id).worker_id == "gpu-worker-1"


def test_sqs_batch_is_given_back_when_the_invocation_is_almost_over(
    lambda_env: dict[str, str], events: Any, fake_context_factory: Any
) -> None:
    queue_name = lambda_env["COMFYD_SQS_QUEUE"]
    job = _store_job(JobStatus.QUEUED)
    lambda_app().services.queue.put(job.id, 1)
    messages = receive_all(queue_name)
    result = handler(events.sqs(messages, queue_arn(queue_name)), fake_context_factory(seconds_left=15))
    assert result == {"batchItemFailures": [{"itemIdentifier": messages[0]["MessageId"]}]}
    assert lambda_app().services.job_store.get(job.id).status is JobStatus.QUEUED  # not claimed


# --- the whole path: submit (API) -> run (SQS) -> results (API), and direct invocations -----------------


def test_submit_run_and_fetch_results_through_the_function(
    lambda_env: dict[str, str], tiny_models: Path, tiny_workflow: Any, events: Any, fake_context: Any,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COMFYD_MODELS_DIR", str(tiny_models))
    queue_name = lambda_env["COMFYD_SQS_QUEUE"]
    body = json.dumps({"prompt": tiny_workflow(seed=7), "client_id": "deploy-test"}).encode()
    submitted = handler(events.rest("POST", "/prompt", body=body), fake_context)
    assert submitted["statusCode"] == 200, submitted["body"]
    prompt_id = body_of(submitted)["prompt_id"]
    assert body_of(submitted)["node_errors"] == {}
    store = lambda_app().services.job_store
    assert store.get(prompt_id).status is JobStatus.QUEUED

    messages = receive_all(queue_name)
    assert [json.loads(m["Body"])["job_id"] for m in messages] == [prompt_id]
    result = handler(events.sqs(messages, queue_arn(queue_name)), fake_context)
    assert result == {"batchItemFailures": []}

    job = store.get(prompt_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(
        Bucket=lambda_env["COMFYD_S3_BUCKET"], Prefix=f"comfyd/{prompt_id}/").get("Contents", [])]
    assert len(keys) == 1 and keys[0].endswith(".png")

    history = body_of(handler(events.http("GET", f"/history/{prompt_id}"), fake_context))
    images = history[prompt_id]["outputs"]["9"]["images"]
    assert len(images) == 1 and images[0]["type"] == "output"
    assert history[prompt_id]["status"]["completed"] is True

    prediction = body_of(handler(events.http("GET", f"/predictions/{prompt_id}"), fake_context))
    assert prediction["status"] == "succeeded"
    (url,) = prediction["output"]
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10) as reply:
        png = reply.read()
    assert Image.open(io.BytesIO(png)).size == (64, 48)
    # Metrics left the function as CloudWatch embedded metric format lines on stdout.
    assert any('"_aws"' in line for line in capsys.readouterr().out.splitlines())


def test_direct_invocation_runs_the_workflow_in_the_function(
    lambda_env: dict[str, str], tiny_models: Path, tiny_workflow: Any, fake_context: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMFYD_MODELS_DIR", str(tiny_models))
    event = {"workflow": tiny_workflow(seed=3), "node_id": "3", "job_id": "direct-1", "inline_images": True}
    result = handler(event, fake_context)
    assert result["status"] == "succeeded", result.get("error")
    assert result["job_id"] == "direct-1" and result["attempts"] == 1
    assert len(result["output_urls"]) == 1 and "direct-1" in result["output_urls"][0]
    (image,) = result["images"]
    assert Image.open(io.BytesIO(base64.b64decode(image["data"]))).size == (64, 48)
    assert set(result["node_timings"]) >= {"3", "8", "9"}
    stored = lambda_app().services.job_store.get("direct-1")
    assert stored.source == "lambda" and stored.status is JobStatus.SUCCEEDED
    # Invoked again with the same id (a client retry): the earlier result, not a second run.
    again = handler(event, fake_context)
    assert again["status"] == "succeeded" and again["attempts"] == 1
    assert again["output_urls"][0].split("?")[0] == result["output_urls"][0].split("?")[0]


def test_direct_invocation_explains_bad_input(
    lambda_env: dict[str, str], tiny_models: Path, tiny_workflow: Any, fake_context: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMFYD_MODELS_DIR", str(tiny_models))
    typo = handler({"workflow": tiny_workflow(), "node_idd": "3"}, fake_context)
    assert typo["status"] == "invalid" and "node_idd" in typo["error"]["message"]

    workflow = tiny_workflow()
    workflow["3"]["class_type"] = "NoSuchSampler"
    invalid = handler({"workflow": workflow}, fake_context)
    assert invalid["status"] == "invalid"
    assert "NoSuchSampler" in json.dumps(invalid)

    missing_node = handler({"workflow": tiny_workflow(), "node_id": "42"}, fake_context)
    assert missing_node["status"] == "invalid" and "42" in json.dumps(missing_node)
