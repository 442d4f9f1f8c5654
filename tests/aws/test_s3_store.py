"""S3 output store over real HTTP: keys, metadata, URLs, encryption, retries and the spool."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest

from comfyd.backends.aws import build_output_store
from comfyd.backends.aws.s3_store import OutputNotStoredError, S3OutputStore
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.settings import Settings

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def _fetch(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as reply:
        return reply.read()


def _store(settings: Settings, **overrides) -> S3OutputStore:
    return build_output_store(settings.model_copy(update=overrides), AwsSession.from_settings(settings))


def test_put_stores_bytes_content_type_and_metadata(settings: Settings, provisioned) -> None:
    store = _store(settings)
    stored = store.put("job-1", "ComfyUI_00001_.png", PNG, "image/png",
                       metadata={"workflow_hash": "ab12", "seed": "42", "prompt": "café"})
    assert stored.key == "out/job-1/ComfyUI_00001_.png"
    assert stored.size == len(PNG)
    assert store.get(stored.key) == PNG
    head = store.head(stored.key)
    assert head["content_type"] == "image/png"
    assert head["metadata"] == {"job-id": "job-1", "workflow-hash": "ab12", "seed": "42", "prompt": "caf%C3%A9"}
    assert store.pending() == 0


def test_presigned_url_serves_the_object(settings: Settings, provisioned) -> None:
    store = _store(settings)
    stored = store.put("job-2", "sub/a.png", PNG)
    assert stored.key == "out/job-2/sub/a.png"
    assert "X-Amz-Signature=" in stored.url and "X-Amz-Expires=3600" in stored.url
    assert _fetch(stored.url) == PNG


def test_cloudfront_url_when_domain_configured(settings: Settings, provisioned) -> None:
    store = _store(settings, cloudfront_domain="d111.cloudfront.net")
    stored = store.put("job-3", "my image.png", PNG)
    assert stored.url == "https://d111.cloudfront.net/out/job-3/my%20image.png"


def test_sse_kms_when_key_configured(settings: Settings, provisioned, aws: AwsSession) -> None:
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    store = _store(settings, s3_kms_key_id=key_id)
    stored = store.put("job-4", "a.png", PNG)
    head = store.head(stored.key)
    assert head["sse"] == "aws:kms"
    raw = aws.client("s3").head_object(Bucket=settings.s3_bucket, Key=stored.key)
    assert raw["SSEKMSKeyId"].endswith(key_id)


@pytest.mark.parametrize("filename", ["../escape.png", "a/../../b.png", "", "/abs.png", "a\\b.png", "x\x00.png"])
def test_unsafe_filenames_are_refused(settings: Settings, provisioned, filename: str) -> None:
    with pytest.raises(ValueError, match="safe S3 key"):
        _store(settings).put("job-5", filename, PNG)


def test_missing_key_raises_key_error(settings: Settings, provisioned) -> None:
    with pytest.raises(KeyError):
        _store(settings).get("out/nope/none.png")


def test_large_output_uses_multipart(settings: Settings, provisioned, monkeypatch: pytest.MonkeyPatch) -> None:
    import comfyd.backends.aws.s3_store as s3_store

    monkeypatch.setattr(s3_store, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    blob = bytes(range(256)) * (6 * 4096)  # 6 MiB: two parts of the 5 MiB minimum
    aws = AwsSession.from_settings(settings)
    operations: list[str] = []
    aws.boto.events.register("before-call.s3", lambda model, **kw: operations.append(model.name))
    store = build_output_store(settings, aws)
    stored = store.put("job-6", "big.bin", blob, "application/octet-stream", metadata={"seed": "1"})
    assert store.get(stored.key) == blob
    assert store.head(stored.key)["metadata"]["seed"] == "1"
    assert operations.count("UploadPart") == 2 and "CompleteMultipartUpload" in operations


# --- retries, faults and the spool -------------------------------------------------------------
def test_slowdown_is_retried_by_botocore(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    store = _store(settings)
    rule = fault_proxy.add(Fault("slowdown", service="s3", method="PUT", times=2))
    stored = store.put("job-7", "a.png", PNG)
    assert rule.hits == 2  # two refusals, then the third attempt of the same call went through
    assert store.get(stored.key) == PNG
    assert store.pending() == 0


def test_upload_refused_before_body_on_expect_100_continue(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    # botocore sends `Expect: 100-continue` with uploads; the proxy refuses at that point (no body
    # read), as S3 does, and the retry then sends the body.
    store = _store(settings)
    fault_proxy.clear()
    fault_proxy.add(Fault("slowdown", service="s3", method="PUT", times=1))
    store.put("job-8", "a.png", PNG)
    assert fault_proxy.stats.refused_before_body == 1
    # The output, then its name-index pointer (for GET /view on other hosts): one body each.
    assert fault_proxy.stats.continued == 2
    assert fault_proxy.stats.forwarded[("s3", "PUT")] == 2, fault_proxy.stats
    assert store.get("out/job-8/a.png") == PNG


@pytest.mark.parametrize("kind", ["reset", "error", "throttle"])
def test_transient_faults_are_survived(fault_proxy: FaultProxy, settings: Settings, provisioned, kind: str) -> None:
    store = _store(settings)
    fault_proxy.add(Fault(kind, service="s3", method="PUT", times=3))  # beats botocore's 3 attempts
    stored = store.put("job-9", "a.png", PNG)  # the project's backoff tries the whole call again
    assert store.get(stored.key) == PNG
    assert store.pending() == 0


def test_delay_is_only_a_delay(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    store = _store(settings)
    fault_proxy.add(Fault("delay", service="s3", method="PUT", delay_s=0.3, times=1))
    started = time.monotonic()
    store.put("job-10", "a.png", PNG)
    assert time.monotonic() - started >= 0.3
    assert store.pending() == 0


def test_outage_spools_then_put_returns_once_uploaded(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    store = _store(settings, spool_dir=settings.spool_dir)
    store.spool._min_interval_s = store.spool._interval_s = 0.1
    fault_proxy.fail_for(1.0, "slowdown", service="s3", method="PUT")
    started = time.monotonic()
    stored = store.put("job-11", "a.png", PNG)  # blocks while S3 is down, returns once stored
    assert time.monotonic() - started >= 0.9
    assert store.pending() == 0
    assert store.get(stored.key) == PNG
    assert fault_proxy.stats.injected[("slowdown", "s3")] >= 6  # 2 rounds x 3 attempts, then the spool's


def test_output_survives_outage_longer_than_the_wait(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    store = _store(settings, job_timeout_s=0.3)
    store.spool._min_interval_s = store.spool._interval_s = 0.1
    rule = fault_proxy.add(Fault("slowdown", service="s3", method="PUT"))
    with pytest.raises(OutputNotStoredError) as caught:
        store.put("job-12", "a.png", PNG)
    assert caught.value.key == "out/job-12/a.png"
    assert caught.value.spool_path.exists()
    assert store.pending() == 1
    assert store.get("out/job-12/a.png") == PNG  # readable from the spool meanwhile
    store.close()

    # The process is gone; S3 comes back; a new store on the same spool uploads the leftover.
    rule.times = 0
    successor = _store(settings)
    assert successor.flush(timeout=10)
    assert successor.pending() == 0
    assert _fetch(successor.url("out/job-12/a.png")) == PNG


def test_missing_bucket_is_not_waited_for(settings: Settings) -> None:
    store = _store(settings)  # nothing provisioned: NoSuchBucket is not transient
    with pytest.raises(OutputNotStoredError, match="NoSuchBucket"):
        store.put("job-13", "a.png", PNG)
    assert store.pending() == 1  # kept for when the bucket exists
    store.close()


def test_spool_recovers_from_crash_between_write_and_upload(settings: Settings, provisioned, tmp_path: Path) -> None:
    from comfyd.backends.aws.spool import Spool, SpoolEntry

    spool_dir = Path(settings.spool_dir)
    left = Spool(spool_dir, upload=lambda entry, data: (_ for _ in ()).throw(OSError("down")))
    left.write(SpoolEntry(bucket=settings.s3_bucket, key="out/job-14/a.png", content_type="image/png",
                          metadata={"job-id": "job-14"}, extra_args={"ContentType": "image/png",
                                                                     "Metadata": {"job-id": "job-14"}}), PNG)
    (spool_dir / ".half-written.tmp").write_bytes(b"partial")  # never committed: ignored
    left.stop()
    store = _store(settings)
    assert store.flush(timeout=10)
    assert store.get("out/job-14/a.png") == PNG
    assert store.head("out/job-14/a.png")["metadata"] == {"job-id": "job-14"}


def test_concurrent_puts(settings: Settings, provisioned) -> None:
    store = _store(settings)
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            store.put(f"job-c{i}", "a.png", PNG + bytes([i]))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(store.get(f"out/job-c{i}/a.png") == PNG + bytes([i]) for i in range(8))


def test_settings_without_bucket_are_refused(settings: Settings) -> None:
    from comfyd.backends.aws import AwsConfigError

    with pytest.raises(AwsConfigError, match="COMFYD_S3_BUCKET"):
        build_output_store(settings.model_copy(update={"s3_bucket": None}))
