"""Output URLs are signed when a job is shown, never stored: a presigned URL lives an hour while
the record lives a week. The record keeps storage keys; predictions, /v1/status, SNS and the
Lambda result sign them at read time."""

from __future__ import annotations

import urllib.parse

import pytest
from fastapi.testclient import TestClient

from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.job_views import prediction_view
from comfyd.runtime import Services, build_services
from comfyd.server import create_app
from comfyd.settings import Settings
from comfyd.worker import run_worker

# Without API keys comfyd answers only loopback Host names (TestClient sends "testserver").
LOOPBACK = "http://127.0.0.1"


@pytest.fixture
def services(settings: Settings, provisioned, recording) -> Services:
    built = recording(build_services(settings))
    yield built
    built.close()


def _expires(url: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Expires"][0]


def test_record_keeps_keys_and_every_view_signs_anew(settings: Settings, services: Services, fake_runtime) -> None:
    published: list[dict] = []
    inner = services.notifier.publish
    services.notifier.publish = lambda event, payload, attributes=None: (published.append(payload),
                                                                         inner(event, payload, attributes))
    assert services.job_store.create(JobRecord(id="signed", workflow=fake_runtime.workflow(seed=3), source="prediction"))
    services.queue.put("signed", 1)
    stats = run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=1)
    assert stats.succeeded == 1
    job = services.job_store.get("signed")
    assert job.status is JobStatus.SUCCEEDED
    assert job.output_keys == ["out/signed/signed_00001_.png"] and job.output_urls == []  # no URL stored

    # SNS got a signed URL, made when it was published.
    completed = [p for p in published if p.get("status") == "succeeded"]
    assert completed and "X-Amz-Signature=" in completed[0]["output"][0]
    # Later reads sign again: change the lifetime and the next view carries the new one.
    store = services.output_store
    first = prediction_view(job, sign=store.url)["output"][0]
    assert _expires(first) == str(settings.presign_expiry_s)
    store.presign_expiry_s = 120
    assert _expires(prediction_view(job, sign=store.url)["output"][0]) == "120"

    app = create_app(settings, services, workers=False)
    with TestClient(app, base_url=LOOPBACK) as http:
        store.presign_expiry_s = 90
        prediction = http.get("/predictions/signed").json()
        assert _expires(prediction["output"][0]) == "90"
        assert "out/signed/signed_00001_.png" in prediction["output"][0]
        recent = http.get("/v1/status").json()["recent_predictions"]
        assert any(_expires(p["output"][0]) == "90" for p in recent if p["id"] == "signed")


def test_a_record_written_before_keys_keeps_its_urls() -> None:
    old = JobRecord(id="old", workflow={}, status=JobStatus.SUCCEEDED, output_urls=["https://x.example/a.png"],
                    outputs={"9": {"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]}})
    assert prediction_view(old, sign=lambda key: "https://never")["output"] == ["https://x.example/a.png"]
