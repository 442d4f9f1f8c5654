"""Fixtures of the deployment tests: a local AWS endpoint, the handler's environment, realistic
API Gateway / SQS events, and a loopback implementation of the Lambda Runtime API.

The AWS endpoint is moto's server mode, started here (its own instance, a free loopback port)
through the project's LocalAwsEndpoint, reset before every test; boto3 talks to it over HTTP.
"""

from __future__ import annotations

import base64
import copy
import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint

EVENTS = Path(__file__).parent / "events"
API_KEY = "deploy-test-key"
QUEUE = "comfyd-deploy-jobs"


# --- local AWS ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[LocalAwsEndpoint]:
    endpoint = LocalAwsEndpoint().start()
    yield endpoint
    endpoint.stop()


def aws_settings_env(root: Path, endpoint: LocalAwsEndpoint) -> dict[str, str]:
    """The environment of a deployed function (as deploy/template.yaml sets it), on moto."""
    return {
        **endpoint.environment(),
        "AWS_CONFIG_FILE": str(root / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "aws-credentials"),
        "COMFYD_CONFIG": str(root / "no-such-comfyd.toml"),
        "COMFYD_STORAGE": "s3",
        "COMFYD_S3_BUCKET": "comfyd-deploy-outputs",
        "COMFYD_S3_PREFIX": "comfyd",
        "COMFYD_JOBSTORE": "dynamodb",
        "COMFYD_DYNAMODB_TABLE": "comfyd-deploy-jobs",
        "COMFYD_QUEUE": "sqs",
        "COMFYD_SQS_QUEUE": QUEUE,
        "COMFYD_SNS_TOPIC": "comfyd-deploy-events",
        "COMFYD_METRICS": "cloudwatch",
        "COMFYD_AWS_REGION": endpoint.region,
        "COMFYD_API_KEYS": API_KEY,
        "COMFYD_OUTPUT_DIR": str(root / "output"),
        "COMFYD_INPUT_DIR": str(root / "input"),
        "COMFYD_TEMP_DIR": str(root / "temp"),
        "COMFYD_SPOOL_DIR": str(root / "spool"),
        "COMFYD_DB_PATH": str(root / "comfyd.db"),
        "COMFYD_RETRY_BACKOFF_S": "0",
        "COMFYD_DEVICE": "cpu",
        "AWS_LAMBDA_FUNCTION_NAME": "comfyd-deploy-test",
    }


@pytest.fixture
def lambda_env(moto_endpoint: LocalAwsEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """This process looks like a deployed Lambda function on moto, with comfyd's resources made."""
    from comfyd.backends.aws.init import aws_init
    from comfyd.lambda_handler import reset_environment
    from comfyd.settings import Settings

    moto_endpoint.reset()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "COMFYD_WARMUP_WORKFLOW"):
        monkeypatch.delenv(name, raising=False)
    env = aws_settings_env(tmp_path, moto_endpoint)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    aws_init(Settings())
    reset_environment()
    yield env
    reset_environment()


# --- events ---------------------------------------------------------------------------------------


def rest_api_event(method: str, path: str, *, body: bytes | None = None, query: dict[str, str] | None = None,
                   key: str | None = API_KEY) -> dict[str, Any]:
    """A REST API (payload v1) proxy event; bodies base64 as with binaryMediaTypes */*."""
    event = json.loads((EVENTS / "apigw_rest_v1.json").read_text())
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = path
    event["requestContext"]["path"] = f"/v1{path}"
    event["pathParameters"] = {"proxy": path.lstrip("/")}
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    if key is not None:
        event["headers"]["Authorization"] = f"Bearer {key}"
        event["multiValueHeaders"]["Authorization"] = [f"Bearer {key}"]
    if query:
        event["queryStringParameters"] = dict(query)
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    if body is not None:
        event["headers"]["Content-Type"] = "application/json"
        event["multiValueHeaders"]["Content-Type"] = ["application/json"]
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True
    return event


def http_api_event(method: str, path: str, *, body: bytes | None = None, query: str = "",
                   key: str | None = API_KEY) -> dict[str, Any]:
    """An HTTP API (payload v2) proxy event."""
    event = json.loads((EVENTS / "apigw_http_v2.json").read_text())
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["rawQueryString"] = query
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    if key is not None:
        event["headers"]["authorization"] = f"Bearer {key}"
    if body is not None:
        event["headers"]["content-type"] = "application/json"
        event["headers"]["content-length"] = str(len(body))
        event["body"] = body.decode()
    return event


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """An SQS batch as Lambda's event source mapping delivers it, from received SQS messages."""
    template = json.loads((EVENTS / "sqs_batch.json").read_text())["Records"][0]
    records = []
    for message in messages:
        record = copy.deepcopy(template)
        record["messageId"] = message["MessageId"]
        record["receiptHandle"] = message["ReceiptHandle"]
        record["body"] = message["Body"]
        record["md5OfBody"] = message.get("MD5OfBody", record["md5OfBody"])
        record["attributes"]["ApproximateReceiveCount"] = message.get("Attributes", {}).get("ApproximateReceiveCount", "1")
        record["eventSourceARN"] = queue_arn
        record["awsRegion"] = queue_arn.split(":")[3]
        records.append(record)
    return {"Records": records}


class Events:
    """The event builders, for tests (conftest modules are not importable under importlib mode)."""

    rest = staticmethod(rest_api_event)
    http = staticmethod(http_api_event)
    sqs = staticmethod(sqs_event)


@pytest.fixture
def events() -> type[Events]:
    return Events


@dataclass
class FakeContext:
    """The parts of Lambda's context object the handler reads."""

    deadline: float = field(default_factory=lambda: time.monotonic() + 900)
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_name: str = "comfyd-deploy-test"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


@pytest.fixture
def fake_context() -> FakeContext:
    return FakeContext()


@pytest.fixture
def fake_context_factory() -> Any:
    return lambda seconds_left=900.0: FakeContext(deadline=time.monotonic() + seconds_left)


# --- a loopback Lambda Runtime API (what awslambdaric talks to) -------------------------------------


@dataclass
class Invocation:
    request_id: str
    event: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    response: Any = None
    error: dict[str, Any] | None = None
    error_type: str | None = None


class LambdaRuntimeApi:
    """The Runtime API endpoints awslambdaric uses, on 127.0.0.1 (the official emulator is not
    obtainable here): next invocation, response, invocation error, init error."""

    PREFIX = "/2018-06-01/runtime"

    def __init__(self, function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:comfyd-smoke") -> None:
        self.function_arn = function_arn
        self.pending: queue.Queue[Invocation] = queue.Queue()
        self.invocations: dict[str, Invocation] = {}
        self.init_errors: list[dict[str, Any]] = []
        self.polls = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != f"{api.PREFIX}/invocation/next":
                    self._reply(404)
                    return
                api.polls += 1
                try:
                    invocation = api.pending.get(timeout=60)
                except queue.Empty:
                    self._reply(500, b'{"errorMessage": "no invocation"}')
                    return
                deadline_ms = int(time.time() * 1000) + 60_000
                self._reply(200, json.dumps(invocation.event).encode(), {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": api.function_arn,
                    "Lambda-Runtime-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
                })

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = self.path[len(api.PREFIX):].strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_errors.append(json.loads(body or b"{}"))
                    self._reply(202, b'{"status": "OK"}')
                    return
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    invocation = api.invocations.get(parts[1])
                    if invocation is None:
                        self._reply(400, b'{"errorMessage": "unknown request id"}')
                        return
                    if parts[2] == "response":
                        invocation.response = json.loads(body)
                    else:
                        invocation.error = json.loads(body or b"{}")
                        invocation.error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
                    self._reply(202, b'{"status": "OK"}')
                    invocation.done.set()
                    return
                self._reply(404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="lambda-runtime-api", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> LambdaRuntimeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: dict[str, Any]) -> Invocation:
        invocation = Invocation(str(uuid.uuid4()), event)
        self.invocations[invocation.request_id] = invocation
        self.pending.put(invocation)
        return invocation


@pytest.fixture
def runtime_api() -> Iterator[LambdaRuntimeApi]:
    api = LambdaRuntimeApi().start()
    yield api
    api.stop()


# --- tiny models ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder in ComfyUI's layout with one tiny random-weight SD1 checkpoint."""
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="single", seed=0)
    return root


@pytest.fixture
def tiny_workflow(tiny_models: Path) -> Any:
    """workflow(seed) -> ComfyUI's default graph at 64x48, 2 steps, on the tiny checkpoint."""
    return lambda seed=1: make_tiny_workflow(tiny_models, seed)


def make_tiny_workflow(models: Path, seed: int = 1) -> dict[str, Any]:
    """ComfyUI's default graph at 64x48, 2 steps, on the tiny checkpoint."""
    from comfyd.runner import apply_sets, default_workflow

    workflow = apply_sets(default_workflow("a lighthouse at dusk"), ["5.width=64", "5.height=48", "3.steps=2"])
    workflow["4"]["inputs"]["ckpt_name"] = next((models / "checkpoints").glob("*.safetensors")).name
    workflow["3"]["inputs"]["seed"] = seed
    return workflow
