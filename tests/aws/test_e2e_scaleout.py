"""Scale-out end to end: `comfyd serve` + two workers on one SQS queue, everything over HTTP.

Real processes, the real nodes on a tiny random-weight checkpoint, moto behind the project's
fault proxy. Ten jobs go in through POST /prompt; one worker is killed with SIGKILL in the
middle of a job; S3 refuses uploads until the surviving worker has logged that it spooled an
output (the fault is lifted on that observed state, not after a guessed duration). At the end: ten finished items in DynamoDB,
each job's image in S3 exactly once, ten SNS events on a subscribed queue, and the metrics in
CloudWatch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from comfyd.backends.aws.init import aws_init
from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import FaultProxy
from comfyd.engine.interfaces import JobStatus
from comfyd.settings import Settings

pytestmark = pytest.mark.slow

JOBS = 10
VISIBILITY_S = 4
CHECKPOINT = "comfyd-tiny-sd1.safetensors"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _workflow(seed: int, steps: int) -> dict:
    from comfyd.runner import default_workflow

    workflow = default_workflow("a lighthouse at dusk")
    workflow["4"]["inputs"]["ckpt_name"] = CHECKPOINT
    workflow["5"]["inputs"].update(width=64, height=48, batch_size=1)
    workflow["3"]["inputs"].update(seed=seed, steps=steps)
    return workflow


def _wait(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = process
        return process

    def log(self, name: str, tail: int = 4000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-tail:]

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def test_serve_and_two_workers_survive_a_kill_and_an_s3_outage(
    moto_endpoint: LocalAwsEndpoint, tmp_path: Path, settings: Settings
) -> None:
    from comfyd.models.tiny import make_tiny_checkpoint

    models = tmp_path / "models"
    make_tiny_checkpoint(models / "checkpoints", family="sd1", fmt="single", seed=0)
    aws = AwsSession.from_settings(settings)
    provisioned = aws_init(settings, aws)
    # An independent subscriber: every job event SNS delivers lands here.
    sqs = aws.client("sqs")
    events_url = sqs.create_queue(QueueName="event-sink")["QueueUrl"]
    events_arn = sqs.get_queue_attributes(QueueUrl=events_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.client("sns").subscribe(TopicArn=provisioned["topic"], Protocol="sqs", Endpoint=events_arn,
                                Attributes={"RawMessageDelivery": "true"})

    proxy = FaultProxy(moto_endpoint.url).start()
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COMFYD_", "AWS_"))},
        # Each process keeps its data (models/, output/, ...) in its own working directory.
        "COMFYD_HOME": ".",
        **moto_endpoint.environment(),
        "AWS_ENDPOINT_URL": proxy.url, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "COMFYD_CONFIG": os.devnull, "COMFYD_MODELS_DIR": str(models), "COMFYD_DEVICE": "cpu",
        "COMFYD_STORAGE": "s3", "COMFYD_S3_BUCKET": settings.s3_bucket, "COMFYD_S3_PREFIX": settings.s3_prefix,
        "COMFYD_JOBSTORE": "dynamodb", "COMFYD_DYNAMODB_TABLE": settings.dynamodb_table,
        "COMFYD_QUEUE": "sqs", "COMFYD_SQS_QUEUE": settings.sqs_queue,
        "COMFYD_METRICS": "cloudwatch", "COMFYD_CLOUDWATCH_NAMESPACE": "comfyd-e2e",
        "COMFYD_SNS_TOPIC": settings.sns_topic, "COMFYD_AWS_REGION": "us-east-1",
        "COMFYD_RETRY_BACKOFF_S": "0.2", "COMFYD_JOB_TIMEOUT_S": "120",
        "COMFYD_DB_PATH": str(tmp_path / "server.db"), "OMP_NUM_THREADS": "1",
    }
    processes = Processes(tmp_path)
    try:
        processes.start("server", ["-m", "comfyd", "serve", "--port", str(port),
                                   "--output-dir", str(tmp_path / "server-out")],
                        {**env, "COMFYD_SPOOL_DIR": str(tmp_path / "spool-server")})
        workers = {}
        for name in ("victim", "survivor"):
            workers[name] = processes.start(
                name, ["-m", "comfyd.worker", "--worker-id", name, "--visibility-timeout", str(VISIBILITY_S),
                       "--poll", "2"],
                {**env, "COMFYD_OUTPUT_DIR": str(tmp_path / f"{name}-out"),
                 "COMFYD_TEMP_DIR": str(tmp_path / f"{name}-temp"), "COMFYD_SPOOL_DIR": str(tmp_path / f"spool-{name}")},
            )
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)  # the first /prompt imports the nodes

        def server_up() -> bool:
            assert processes.running["server"].poll() is None, processes.log("server")
            try:
                return client.get("/system_stats").status_code == 200
            except httpx.TransportError:
                return False

        _wait(server_up, 90, "the server")
        job_ids = []
        for i in range(JOBS):
            reply = client.post("/prompt", json={"prompt": _workflow(seed=100 + i, steps=40), "client_id": "e2e"})
            assert reply.status_code == 200, reply.text
            job_ids.append(reply.json()["prompt_id"])

        store = _job_store(settings, aws)

        def victim_running() -> str | None:
            assert workers["victim"].poll() is None, processes.log("victim")
            return next((j.id for j in store.list({JobStatus.RUNNING}) if j.worker_id == "victim"), None)

        # S3 refuses uploads from here until the survivor has given up retrying and spooled an
        # output; only then is the outage lifted, so it outlasts the retries however slow this
        # machine is. Held before the kill, so the victim's job cannot have stored its image
        # however far it got: the kill is mid-job, with nothing written, on any machine.
        outage = proxy.hold("slowdown", service="s3", method="PUT")
        killed_job = _wait(victim_running, 120, "the victim to start a job", interval=0.05)
        workers["victim"].send_signal(signal.SIGKILL)  # mid-job: no ack, no heartbeat, nothing written
        workers["victim"].wait(timeout=10)
        assert store.get(killed_job).status is JobStatus.RUNNING

        def survivor_spooled() -> bool:
            assert workers["survivor"].poll() is None, processes.log("survivor")
            return "spooled to" in processes.log("survivor", tail=10**7)

        _wait(survivor_spooled, 240, "the survivor to spool an output", interval=0.2)
        proxy.lift(outage)

        def all_finished() -> bool:
            assert workers["survivor"].poll() is None, processes.log("survivor")
            return all((job := store.get(j)) is not None and job.status.terminal for j in job_ids)

        _wait(all_finished, 150, "all jobs to finish", interval=0.5)
        processes.stop_all()  # SIGTERM: the survivor flushes its metrics on the way out
        assert workers["survivor"].returncode == 0, processes.log("survivor")
    finally:
        processes.stop_all()
        proxy.stop()

    # DynamoDB: ten finished jobs; the killed one was re-run by the survivor, once.
    jobs = {j: store.get(j) for j in job_ids}
    assert {j.status for j in jobs.values()} == {JobStatus.SUCCEEDED}, {j: (r.status, r.error) for j, r in jobs.items()}
    assert jobs[killed_job].worker_id == "survivor" and jobs[killed_job].attempts == 2
    assert all(len(job.output_keys) == 1 for job in jobs.values())
    # S3: each job's image exactly once, stored while S3 failed (it refused uploads meanwhile).
    assert outage.hits > 0
    s3 = aws.client("s3")
    for job_id in job_ids:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"out/{job_id}/").get("Contents", [])]
        assert len(keys) == 1 and keys[0].endswith(".png"), keys
        head = s3.head_object(Bucket=settings.s3_bucket, Key=keys[0])
        assert head["ContentType"] == "image/png" and head["Metadata"]["job-id"] == job_id
        assert s3.get_object(Bucket=settings.s3_bucket, Key=keys[0])["Body"].read().startswith(b"\x89PNG")
    assert "spooled to" in processes.log("survivor", tail=10**7)  # the outage outlasted the retries...
    assert not list((tmp_path / "spool-survivor").glob("*.spool"))  # ...and the spool was emptied
    # SNS: one completion event per job.
    events = _drain(aws, events_url)
    completed = [e for e in events if e["event"] == "job.completed"]
    assert sorted(e["id"] for e in completed) == sorted(job_ids)
    # CloudWatch: what the workers and the job layer recorded.
    names = {m["MetricName"] for m in aws.client("cloudwatch").list_metrics(Namespace="comfyd-e2e")["Metrics"]}
    assert {"NodeExecutionTime", "JobsInFlight", "QueueDepth"} <= names, names
    dims = aws.client("cloudwatch").list_metrics(Namespace="comfyd-e2e", MetricName="NodeExecutionTime")["Metrics"]
    assert {"KSampler", "VAEDecode", "SaveImage"} <= {d["Value"] for m in dims for d in m["Dimensions"]}


def _job_store(settings: Settings, aws: AwsSession):
    from comfyd.backends.aws import build_job_store

    return build_job_store(settings, aws)


def _drain(aws: AwsSession, url: str) -> list[dict]:
    sqs = aws.client("sqs")
    found: list[dict] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not messages:
            return found
        for message in messages:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
