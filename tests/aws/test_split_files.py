"""Split deployment, files: an upload through one API host, the job validated on another and run
by a worker on a third (each with its own folders, nothing shared but S3), then GET /view of the
output on the first. LoadImage -> SaveImage on the real nodes (no model needed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from comfyd.engine.interfaces import JobStatus
from comfyd.runtime import build_runtime, build_services
from comfyd.server import create_app
from comfyd.settings import Settings
from comfyd.worker import run_worker

# Without API keys comfyd answers only loopback Host names (TestClient sends "testserver").
LOOPBACK = "http://127.0.0.1"


def _host(settings: Settings, root: Path) -> Settings:
    return settings.model_copy(update={
        "input_dir": root / "input", "output_dir": root / "output", "temp_dir": root / "temp",
        "spool_dir": root / "spool", "db_path": root / "comfyd.db", "models_dir": root / "models",
    })


def _png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 8), color).save(out, format="PNG")
    return out.getvalue()


WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "split"}},
}


@pytest.fixture
def hosts(settings: Settings, provisioned, tmp_path: Path):
    made = {name: _host(settings, tmp_path / name) for name in ("api_a", "api_b", "worker")}
    built = {name: build_services(s, api_only=name != "worker") for name, s in made.items()}
    yield made, built
    for services in built.values():
        services.close()


def test_upload_loadimage_on_a_worker_then_view_on_another_host(hosts) -> None:
    settings, services = hosts
    with (TestClient(create_app(settings["api_a"], services["api_a"], workers=False), base_url=LOOPBACK) as api_a,
          TestClient(create_app(settings["api_b"], services["api_b"], workers=False), base_url=LOOPBACK) as api_b):
        reply = api_a.post("/upload/image", files={"image": ("photo.png", _png((200, 30, 30)), "image/png")})
        assert reply.status_code == 200 and reply.json()["name"] == "photo.png", reply.text
        assert not (settings["api_b"].input_dir / "photo.png").exists()
        submitted = api_b.post("/prompt", json={"prompt": WORKFLOW, "prompt_id": "split-1"})
        assert submitted.status_code == 200, submitted.text  # validated with the upload from api_a

        # The name is uploaded again with other content: the queued job keeps what was validated.
        api_a.post("/upload/image", data={"overwrite": "true"},
                   files={"image": ("photo.png", _png((0, 0, 255)), "image/png")})

        worker_settings = settings["worker"]
        stats = run_worker(worker_settings, services=services["worker"], runtime=build_runtime(worker_settings),
                           poll_s=1, max_jobs=1)
        job = services["worker"].job_store.get("split-1")
        assert stats.succeeded == 1 and job.status is JobStatus.SUCCEEDED, job.error
        image = job.outputs["2"]["images"][0]
        assert not (settings["api_a"].output_dir / image["filename"]).exists()

        view = api_a.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                          "type": "output"})
        assert view.status_code == 200 and view.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(view.content)) as shown:
            assert shown.size == (16, 8) and shown.convert("RGB").getpixel((3, 3)) == (200, 30, 30)
        assert api_a.get("/view", params={"filename": "nothing.png", "type": "output"}).status_code == 404


def test_a_client_cannot_pin_input_keys_of_its_own(hosts) -> None:
    settings, services = hosts
    with TestClient(create_app(settings["api_a"], services["api_a"], workers=False), base_url=LOOPBACK) as api:
        api.post("/upload/image", files={"image": ("photo.png", _png((1, 2, 3)), "image/png")})
        body = {"prompt": WORKFLOW, "prompt_id": "pinned",
                "extra_data": {"input_keys": {"photo.png": "out/other-job/secret.png"}}}
        assert api.post("/prompt", json=body).status_code == 200
    keys = services["api_a"].job_store.get("pinned").extra_data["input_keys"]
    assert keys["photo.png"].startswith("out/_inputs/sha256/")
