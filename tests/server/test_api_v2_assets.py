"""Comfy API v2 assets: blake3 upload with dedup, from-hash, by-hash, delete, content with Range,
and an uploaded asset read by LoadImage through a `core/ASSET` reference (real nodes)."""

from __future__ import annotations

import io
import threading
from typing import Any

import blake3
import pytest
from comfy_sdk import Comfy

from comfyd.runtime import build_runtime


def digest(data: bytes) -> str:
    return "blake3:" + blake3.blake3(data).hexdigest()


def upload(http: Any, data: bytes, file_path: str, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    form = {"content_type": fields.pop("content_type", "image/png"), "file_path": file_path, **fields}
    return http.post("/api/v2/assets", files={"file": (file_path, data, form["content_type"])}, data=form,
                     headers=headers)


def test_upload_dedup_hash_mismatch_from_hash_and_delete(server, png) -> None:
    data = png(color=(10, 20, 30))
    with server.client() as http:
        assert http.head(f"/api/v2/assets/by-hash/{digest(data)}").status_code == 404
        first = upload(http, data, "photo.png", expected_hash=digest(data))
        assert first.status_code == 201, first.text
        asset = first.json()
        assert asset["hash"] == digest(data) and asset["size_bytes"] == len(data) and asset["created_new"] is True
        assert asset["url"].endswith(f"/api/v2/assets/{asset['id']}/content") and "job_id" not in asset
        assert (server.settings.input_dir / "photo.png").read_bytes() == data
        again = upload(http, data, "photo.png")
        assert again.status_code == 200 and again.json()["id"] == asset["id"] and again.json()["created_new"] is False
        elsewhere = upload(http, data, "copy.png")
        assert elsewhere.status_code == 200 and elsewhere.json()["id"] != asset["id"]
        assert not (server.settings.input_dir / "copy.png").exists()  # one blob, two records
        other = png(color=(1, 1, 1))
        clash = upload(http, other, "photo.png")
        assert clash.status_code == 201 and (server.settings.input_dir / "photo (1).png").read_bytes() == other
        mismatch = upload(http, b"x" * 10, "a.txt", content_type="text/plain", expected_hash=digest(b"y"))
        assert mismatch.status_code == 409 and mismatch.json()["error"]["code"] == "hash_mismatch"
        assert not (server.settings.input_dir / "a.txt").exists()

        assert http.head(f"/api/v2/assets/by-hash/{digest(data)}").status_code == 200
        minted = http.post("/api/v2/assets/from-hash", json={"hash": digest(data), "file_path": "third.png"})
        assert minted.status_code == 201 and minted.json()["size_bytes"] == len(data)
        same = http.post("/api/v2/assets/from-hash", json={"hash": digest(data), "file_path": "third.png"})
        assert same.status_code == 200 and same.json()["id"] == minted.json()["id"]
        missing = http.post("/api/v2/assets/from-hash", json={"hash": digest(b"never")})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "blob_not_found"

        content = http.get(f"/api/v2/assets/{asset['id']}/content")
        assert content.status_code == 200 and content.content == data
        part = http.get(f"/api/v2/assets/{asset['id']}/content", headers={"Range": "bytes=0-7"})
        assert part.status_code == 206 and part.content == data[:8]
        beyond = http.get(f"/api/v2/assets/{asset['id']}/content", headers={"Range": f"bytes={len(data) + 5}-"})
        assert beyond.status_code == 416

        assert http.get(f"/api/v2/assets/{asset['id']}").json()["file_path"] == "photo.png"
        assert http.delete(f"/api/v2/assets/{asset['id']}").status_code == 204
        gone = http.delete(f"/api/v2/assets/{asset['id']}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
        assert http.get(f"/api/v2/assets/{elsewhere.json()['id']}/content").content == data  # blob kept


def test_non_image_uploads_and_bad_paths(server, png) -> None:
    with server.client() as http:
        text = upload(http, b"hello", "notes/prompt.txt", content_type="text/plain")
        assert text.status_code == 201 and (server.settings.input_dir / "notes/prompt.txt").read_bytes() == b"hello"
        audio = upload(http, b"RIFF\x00\x00\x00\x00WAVEfmt ", "clip.wav", content_type="audio/wav")
        assert audio.status_code == 201
        broken = upload(http, b"not a png", "x.png")
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_request"
        for bad in ("../escape.png", "models/checkpoints/x.safetensors", "/abs.png"):
            resp = upload(http, png(), bad)
            assert resp.status_code in (400, 422) and resp.json()["error"]["code"] == "invalid_request", bad
        key = {"Idempotency-Key": "upload-1"}
        assert upload(http, png(color=(5, 5, 5)), "k.png", headers=key).status_code == 201
        reuse = upload(http, png(color=(6, 6, 6)), "k2.png", headers=key)
        assert reuse.status_code == 422 and reuse.json()["error"]["code"] == "idempotency_key_reuse"


def test_missing_asset_reference_is_422(server, workflow) -> None:
    graph = workflow()
    graph["3"]["inputs"]["tag"] = {"__type": "core/ASSET", "info": {"id": "00000000-0000-0000-0000-000000000000"}}
    with server.client() as http:
        resp = http.post("/api/v2/jobs", json={"workflow": graph}, headers={"Idempotency-Key": "m1"})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "missing_asset"
        assert resp.json()["error"]["details"] == {"node_id": "3", "input": "tag"}


def _image_graph(reference: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
    }


@pytest.mark.slow  # builds the real node registry (imports torch): ~10 s on 2 shared cores
def test_sdk_asset_upload_into_load_image_and_output_as_input(start_server, monkeypatch, png) -> None:
    server = start_server(runtime=build_runtime)
    monkeypatch.setenv("COMFY_BASE_URL", server.url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    from PIL import Image

    data = png(6, 4, (200, 100, 50))
    with Comfy() as client:
        photo = client.assets.from_bytes(data, filename="in/photo.png", content_type="image/png")
        job = client.submit(client.workflows.from_json(_image_graph(photo)))
        job.result()
        [output] = job.outputs
        inverted = Image.open(io.BytesIO(output.to_bytes())).convert("RGB")
        assert inverted.size == (6, 4)
        assert all(abs(a - b) <= 1 for a, b in zip(inverted.getpixel((0, 0)), (55, 155, 205), strict=True))
        executed = job.get_workflow().graph
        assert executed["1"]["inputs"]["image"] == "in/photo.png"  # the reference resolved to the file
        # The same bytes again: found by hash, nothing uploaded; an output feeds the next job.
        again = client.assets.from_bytes(data, filename="in/photo.png", content_type="image/png")
        assert again.commit() == photo.id
        ref = {"__type": "core/ASSET", "info": {"id": output.id}}
        second = client.submit(client.workflows.from_json(_image_graph(ref))).result()
        back = Image.open(io.BytesIO(second.outputs[0].to_bytes())).convert("RGB")
        assert all(abs(a - b) <= 2 for a, b in zip(back.getpixel((0, 0)), (200, 100, 50), strict=True))


@pytest.fixture(autouse=True)
def _no_cloud_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFY_API_KEY", raising=False)


class _CdnStore:
    """An OutputStore like S3's: keys prefixed by the job, absolute signed-looking URLs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def key_for(self, job_id: str, filename: str) -> str:
        return f"out/{job_id}/{filename}"

    def put(self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
            metadata: dict[str, str] | None = None) -> Any:
        return self.inner.put(job_id, filename, data, content_type, metadata)

    def get(self, key: str) -> bytes:
        raise AssertionError("the output is on this host: read from the output folder")

    def url(self, key: str) -> str:
        return f"https://cdn.example.test/{key}?Signature=abc"


def test_outputs_in_object_storage_redirect_to_a_signed_url(tmp_path, workflow) -> None:
    import dataclasses

    from comfyd.runtime import build_services
    from comfyd.server import create_app
    from tests.server.conftest import Recorder, fake_runtime, make_settings, start_uvicorn

    settings = make_settings(tmp_path)
    services = build_services(settings)
    services = dataclasses.replace(services, output_store=_CdnStore(services.output_store),
                                   executor_factory=lambda: fake_runtime(settings, Recorder()))
    url, server, thread = start_uvicorn(create_app(settings, services))
    try:
        import httpx

        with httpx.Client(base_url=url, timeout=30) as http:
            job_id = http.post("/api/v2/jobs", json={"workflow": workflow()}).json()["id"]
            for _ in range(500):
                body = http.get(f"/api/v2/jobs/{job_id}").json()
                if body["status"] == "succeeded":
                    break
                threading.Event().wait(0.02)
            [output] = body["outputs"]
            assert output["size_bytes"] > 0 and output["hash"].startswith("blake3:")
            resp = http.get(f"/api/v2/assets/{output['id']}/content")
            assert resp.status_code == 302
            assert resp.headers["location"] == f"https://cdn.example.test/out/{job_id}/{output['name']}?Signature=abc"
    finally:
        server.should_exit = True
        thread.join(15)
        services.close()
