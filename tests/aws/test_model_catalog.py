"""The shared model catalog: a worker publishes what it holds; an API host with an empty models
folder validates and lists against it; `comfyd models sync` fills a models folder from S3."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from comfyd.backends.aws.model_catalog import sync_models
from comfyd.backends.aws.session import AwsSession
from comfyd.runtime import build_services
from comfyd.server import create_app
from comfyd.settings import Settings
from comfyd.worker import run_worker

# Without API keys comfyd answers only loopback Host names (TestClient sends "testserver").
LOOPBACK = "http://127.0.0.1"

TINY = "comfyd-tiny-sd1.safetensors"


def _host(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(update={
        "input_dir": root / "input", "output_dir": root / "output", "temp_dir": root / "temp",
        "spool_dir": root / "spool", "db_path": root / "comfyd.db", "models_dir": root / "models",
        "device": "cpu",
    })


def _workflow(ckpt: str) -> dict:
    from comfyd.runner import default_workflow

    workflow = default_workflow("a fox")
    workflow["4"]["inputs"]["ckpt_name"] = ckpt
    workflow["5"]["inputs"].update(width=64, height=64)
    return workflow


def test_api_without_models_validates_against_what_workers_published(settings: Settings, provisioned,
                                                                       tmp_path: Path) -> None:
    from comfyd.models.tiny import make_tiny_checkpoint

    api_settings, worker_settings = _host(settings, tmp_path / "api"), _host(settings, tmp_path / "worker")
    make_tiny_checkpoint(worker_settings.models_dir / "checkpoints", family="sd1", fmt="single", seed=0)
    worker_services = build_services(worker_settings)
    api_services = build_services(api_settings, api_only=True)
    try:
        run_worker(worker_settings, services=worker_services, worker_id="gpu-1", max_jobs=0)  # publishes at start
        [entry] = [e for e in api_services.model_catalog.entries() if e["folder"] == "checkpoints"]
        data = (worker_settings.models_dir / "checkpoints" / TINY).read_bytes()
        assert entry["name"] == TINY and entry["size"] == len(data) and entry["family"] == "sd1"
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["hosts"] == ["gpu-1"]

        with TestClient(create_app(api_settings, api_services, workers=False), base_url=LOOPBACK) as api:
            assert api.get("/models/checkpoints").json() == [TINY]
            info = api.get("/object_info/CheckpointLoaderSimple").json()
            assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == [TINY]
            accepted = api.post("/prompt", json={"prompt": _workflow(TINY)})
            assert accepted.status_code == 200, accepted.text
            refused = api.post("/prompt", json={"prompt": _workflow("sdxl-nobody-has.safetensors")})
            assert refused.status_code == 400
            [error] = refused.json()["node_errors"]["4"]["errors"]
            assert error["type"] == "value_not_in_list" and TINY in error["details"]
    finally:
        worker_services.close()
        api_services.close()


def test_sync_fills_a_models_folder_with_checksums(settings: Settings, tmp_path: Path) -> None:
    aws = AwsSession.from_settings(settings)
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="models")
    good, plain = b"weights" * 1000, b"lora" * 100
    s3.put_object(Bucket="models", Key="sd/checkpoints/a.safetensors", Body=good,
                  Metadata={"sha256": hashlib.sha256(good).hexdigest()})
    s3.put_object(Bucket="models", Key="sd/loras/b.safetensors", Body=plain)  # no checksum: size only
    dest = tmp_path / "models"
    first = sync_models(aws, "s3://models/sd", dest)
    assert sorted(first["downloaded"]) == ["checkpoints/a.safetensors", "loras/b.safetensors"]
    assert first["unverified"] == ["loras/b.safetensors"]
    assert (dest / "checkpoints" / "a.safetensors").read_bytes() == good
    again = sync_models(aws, "s3://models/sd/", dest)
    assert again["downloaded"] == [] and sorted(again["kept"]) == sorted(first["downloaded"])

    (dest / "checkpoints" / "a.safetensors").write_bytes(b"damaged" * 1000)  # same size, other bytes
    assert sync_models(aws, "s3://models/sd", dest)["downloaded"] == ["checkpoints/a.safetensors"]
    assert (dest / "checkpoints" / "a.safetensors").read_bytes() == good

    s3.put_object(Bucket="models", Key="bad/checkpoints/c.safetensors", Body=good, Metadata={"sha256": "0" * 64})
    with pytest.raises(ValueError, match="SHA-256"):
        sync_models(aws, "s3://models/bad", dest)
    assert not (dest / "checkpoints" / "c.safetensors").exists()
    assert not list(dest.rglob("*.part"))
