"""Hostile and careless clients (the hostile-input issue): one regression test per item.

Items 8 and 9 (kill -9) are in test_hostile_crashes.py; the fuzz test in test_fuzz.py.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import websocket

from comfyd.engine.context import NodeContext
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.schema import Node, NodeSchema, OutputSpec, String
from comfyd.http.auth import InsecureBindError, check_bind_safety
from comfyd.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from conftest import Recorder, fake_runtime, sleep_workflow  # noqa: E402


def strict_json(text: str) -> Any:
    """Parse as a strict JSON client would: no NaN/Infinity, valid UTF-8 text."""
    def refuse(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    value = json.loads(text, parse_constant=refuse)
    text.encode("utf-8")  # no lone surrogates came back
    return value


def raw_post(http: httpx.Client, path: str, body: Any, **headers: str) -> httpx.Response:
    """POST a body httpx's own encoder would refuse (lone surrogates, NaN): json.dumps escapes them."""
    data = json.dumps(body).encode("ascii")
    return http.post(path, content=data, headers={"content-type": "application/json", **headers})


# ---- 1, 2: lone surrogates and non-finite numbers ------------------------------------------------


@pytest.mark.parametrize("value", ["\ud800", "ok \udfff text"])
def test_lone_surrogate_text_is_a_400_with_node_errors(server, value: str) -> None:
    with server.client() as http:
        answer = raw_post(http, "/prompt", {"prompt": sleep_workflow(tag=value)})
        assert answer.status_code == 400
        body = strict_json(answer.text)
        (error,) = body["node_errors"]["3"]["errors"]
        assert error["type"] == "invalid_input_type" and error["extra_info"]["input_name"] == "tag"
        assert http.get("/history").status_code == 200


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_number_is_a_400_with_node_errors_everywhere(server, constant: str) -> None:
    workflow = json.dumps(sleep_workflow()).replace('"seconds": 0.0', f'"seconds": {constant}')
    prediction = '{"input": {"workflow_json": ' + workflow + '}}'
    with server.client() as http:
        for path, content in (("/prompt", '{"prompt": ' + workflow + '}'), ("/predictions", prediction),
                              ("/v1/generate", '{"prompt": "x", "workflow": ' + workflow + ', "node_id": "3"}')):
            answer = http.post(path, content=content, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (path, answer.text)
            body = strict_json(answer.text)  # the echoed value did not break the body
            if path != "/v1/generate":
                assert body["node_errors"]["3"]["errors"][0]["extra_info"]["input_name"] == "seconds"
            else:
                assert "node_errors" in body or body["error"]["type"] == "InvalidRequest"
    assert server.services.job_store.list(limit=10) == []  # no job was created, so no retry duplicates


def test_non_finite_or_surrogate_outside_the_nodes_is_a_400(server) -> None:
    with server.client() as http:
        for extra in ({"x": float("nan")}, {"note": "\ud800"}, {"\udc00": 1}):
            answer = raw_post(http, "/prompt", {"prompt": sleep_workflow(), "extra_data": extra})
            assert answer.status_code == 400, answer.text
            strict_json(answer.text)


def _poisoned(job_id: str, status: JobStatus) -> JobRecord:
    bad = {"text": "\ud800", "cfg": float("nan"), "big": float("inf")}
    return JobRecord(
        id=job_id, status=status, number=7, workflow={"3": {"class_type": "TestSleep", "inputs": bad}},
        extra_data={"client_id": "\udfff", "extra_pnginfo": bad}, started_at=time.time() - 1,
        finished_at=time.time() if status.terminal else None,
        outputs={"9": {"images": [{"filename": "a\ud800.png", "subfolder": "", "type": "output"}]}},
        error={"type": "execution_error", "message": "bad \ud800 text", "node_id": "3"}, progress={"value": math.nan},
        node_timings={"3": float("nan")}, messages=[["execution_error", {"exception_message": "\ud800"}]],
    )


def test_a_stored_record_with_anything_in_it_never_breaks_a_read_route(server) -> None:
    """Records written before validation refused such input (or by another process) still read."""
    store = server.services.job_store
    store.create(_poisoned("poison-done", JobStatus.FAILED))
    store.create(_poisoned("poison-waiting", JobStatus.QUEUED))
    with server.client() as http:
        for path in ("/history", "/history/poison-done", "/predictions/poison-done", "/v1/status", "/queue",
                     "/predictions/poison-waiting", "/prompt"):
            answer = http.get(path)
            assert answer.status_code == 200, (path, answer.text)
            strict_json(answer.text)
        assert "poison-done" in http.get("/history").json()
        # A good job still runs and reads back afterwards.
        good = http.post("/prompt", json={"prompt": sleep_workflow()}).json()["prompt_id"]
    assert server.wait_job(good).status is JobStatus.SUCCEEDED


# ---- 3: other fuzzing 500s ----------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    {"preview_method": ["auto"]}, {"preview_method": {"a": 1}}, {"webhook_events_filter": {"a": 1}},
    {"webhook_events_filter": [["start"]]}, {"webhook_events_filter": "start"},
])
def test_malformed_extra_data_keys_are_400(server, extra: dict[str, Any]) -> None:
    with server.client() as http:
        answer = http.post("/prompt", json={"prompt": sleep_workflow(), "extra_data": extra})
    assert answer.status_code == 400, answer.text


@pytest.mark.parametrize("depth", [70, 500, 900, 5000])
def test_deeply_nested_json_is_a_400(server, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    with server.client() as http:
        for path in ("/prompt", "/predictions", "/queue"):
            content = '{"prompt": {}, "extra_data": {"x": ' + nested + '}}'
            answer = http.post(path, content=content, headers={"content-type": "application/json"})
            assert answer.status_code == 400, (path, answer.text[:200])


@pytest.mark.parametrize("dangling", [False, True])
def test_upload_onto_a_symlink_in_input_is_refused(server, png, dangling: bool) -> None:
    input_dir = Path(server.settings.input_dir)
    target = input_dir / "real.png"
    if not dangling:
        target.write_bytes(png())
    (input_dir / "link.png").symlink_to(target)
    with server.client() as http:
        answer = http.post("/upload/image", files={"image": ("link.png", png(4, 4), "image/png")},
                           data={"overwrite": "true"})
    assert answer.status_code == 400, answer.text
    assert (input_dir / "link.png").is_symlink()
    assert not dangling or not target.exists()


# ---- 4: blank keys ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ['[""]', '[" "]', '["good", ""]', '["sha256:xyz"]'])
def test_blank_or_malformed_api_keys_refuse_to_start(keys: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYD_API_KEYS", keys)
    with pytest.raises(ValueError, match="api_keys"):
        Settings(host="0.0.0.0")


def test_serve_with_a_blank_key_exits_with_a_clear_error(tmp_path: Path) -> None:
    import subprocess

    env = {**os.environ, "COMFYD_API_KEYS": '[" "]', "COMFYD_CONFIG": os.devnull,
           "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-m", "comfyd", "serve", "--host", "0.0.0.0", "--port", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "api_keys[0] is blank" in done.stderr and "Traceback" not in done.stderr


def test_only_real_keys_satisfy_the_bind_check() -> None:
    settings = Settings(api_keys=" a-key ,", host="0.0.0.0")
    assert settings.api_keys == ["a-key"]
    check_bind_safety(settings.host, settings.api_keys)
    with pytest.raises(InsecureBindError):
        check_bind_safety("0.0.0.0", Settings(api_keys=" , ").api_keys)


# ---- 5: cross-site requests without keys --------------------------------------------------------------


def test_cross_site_requests_are_refused_without_keys(server) -> None:
    with server.client() as http:
        as_text = http.post("/prompt", content=json.dumps({"prompt": sleep_workflow()}),
                            headers={"content-type": "text/plain"})
        as_form = http.post("/prompt", data={"prompt": "x"})
        foreign = http.post("/interrupt", json={}, headers={"origin": "https://evil.example"})
        clear = http.post("/queue", json={"clear": True}, headers={"origin": "null"})
        rebinding = http.get("/history", headers={"host": "evil.example:8188"})
        same_origin = http.post("/interrupt", json={}, headers={"origin": server.url})
        bodyless = http.post("/interrupt")
    assert as_text.status_code == 415 and as_form.status_code == 415
    assert foreign.status_code == 403 and foreign.json()["error"]["type"] == "ForbiddenOrigin"
    assert clear.status_code == 403
    assert rebinding.status_code == 403 and rebinding.json()["error"]["type"] == "InvalidHost"
    assert same_origin.status_code == 200 and bodyless.status_code == 200
    assert server.services.job_store.list(limit=10) == []
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(server.ws_url, timeout=5, origin="https://evil.example")
    ws = websocket.create_connection(server.ws_url, timeout=5, origin=server.url)
    ws.close()


def test_listed_origins_and_hosts_are_allowed(start_server) -> None:
    srv = start_server(cors_origins=["https://ui.example"], allowed_hosts=["comfy.lan"])
    with srv.client() as http:
        assert http.post("/interrupt", json={}, headers={"origin": "https://ui.example"}).status_code == 200
        assert http.get("/queue", headers={"host": "comfy.lan:8188"}).status_code == 200


def test_with_keys_the_key_is_the_guard(start_server) -> None:
    srv = start_server(api_keys=["k1"])
    with srv.client(headers={"x-api-key": "k1"}) as http:
        assert http.get("/queue", headers={"host": "comfyd.internal"}).status_code == 200


# ---- 6: decompression bombs ------------------------------------------------------------------------


def gif_bomb(side: int = 4096, frames: int = 200) -> bytes:
    """A few KB of GIF: a side x side canvas and `frames` one-pixel frames."""
    out = bytearray(b"GIF89a" + struct.pack("<HH", side, side) + bytes([0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff")
    for _ in range(frames):
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control extension
        out += b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return bytes(out + b"\x3b")


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_upload_bombs_are_413_image_too_large(server) -> None:
    bomb = gif_bomb()
    assert len(bomb) < 5000
    with server.client() as http:
        gif = http.post("/upload/image", files={"image": ("bomb.gif", bomb, "image/gif")})
        huge = http.post("/upload/image", files={"image": ("huge.png", png_header_only(30000, 30000), "image/png")})
    assert gif.status_code == 413 and gif.json()["error"]["type"] == "ImageTooLarge"
    assert gif.json()["error"]["details"]["frames"] == 200
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "ImageTooLarge"
    assert not (Path(server.settings.input_dir) / "bomb.gif").exists()


def test_load_image_bounds_frames_before_decoding(tmp_path: Path) -> None:
    from comfyd.nodes.image.save_load import load_image_file

    path = tmp_path / "bomb.gif"
    path.write_bytes(gif_bomb())
    with pytest.raises(ValueError, match="200 frames"):
        load_image_file(path, max_pixels=4096 * 4096, max_frame_pixels=4096 * 4096 * 4)
    small = tmp_path / "small.gif"
    small.write_bytes(gif_bomb(side=8, frames=3))
    images, masks = load_image_file(small, max_pixels=4096 * 4096, max_frame_pixels=4096 * 4096 * 4)
    assert tuple(images.shape) == (3, 8, 8, 3) and masks.shape[0] == 3


# ---- 7: text length, slots of timed-out jobs, loading outside the budget -------------------------


def test_prompt_text_longer_than_the_limit_is_a_400(start_server) -> None:
    srv = start_server(max_text_chars=1000)
    with srv.client() as http:
        fits = http.post("/prompt", json={"prompt": sleep_workflow(tag="x" * 1000)})
        too_long = http.post("/prompt", json={"prompt": sleep_workflow(tag="x" * 1001)})
    assert fits.status_code == 200
    assert too_long.status_code == 400
    (error,) = too_long.json()["node_errors"]["3"]["errors"]
    assert error["type"] == "value_bigger_than_max" and "1001" in error["message"]


def _runtime_with_loading_node(settings: Settings) -> Any:
    runtime = fake_runtime(settings, Recorder())

    @runtime.registry.register
    class TestSlowLoad(Node):
        schema = NodeSchema(class_type="TestSlowLoad", inputs=(String("tag", ""),), outputs=(OutputSpec("INT"),))

        def run(self, ctx: NodeContext, tag: str) -> tuple[int]:
            with ctx.loading():  # a cold model load, longer than the whole budget
                time.sleep(2.5)
            return (1,)

    return runtime


def test_model_loading_does_not_count_against_the_budget(start_server) -> None:
    srv = start_server(runtime=_runtime_with_loading_node, job_timeout_s=1.0)
    workflow = {"1": {"class_type": "TestSlowLoad", "inputs": {"tag": ""}},
                "9": {"class_type": "TestSave", "inputs": {"value": ["1", 0], "filename_prefix": "l",
                                                           "folder": "output"}}}
    with srv.client() as http:
        job_id = http.post("/prompt", json={"prompt": workflow}).json()["prompt_id"]
    assert srv.wait_job(job_id).status is JobStatus.SUCCEEDED


def test_a_hard_timed_out_job_frees_its_slot(start_server) -> None:
    srv = start_server(job_timeout_s=1.0, max_concurrent_jobs=1)
    with srv.client() as http:
        stuck = http.post("/prompt", json={"prompt": sleep_workflow(hang=30.0)}).json()["prompt_id"]
        assert srv.wait_job(stuck, timeout=15).status is JobStatus.TIMED_OUT
        after = http.post("/prompt", json={"prompt": sleep_workflow()}).json()["prompt_id"]
        # The hung node sleeps 30 s; the next job runs now, on a replacement worker.
        assert srv.wait_job(after, timeout=15).status is JobStatus.SUCCEEDED
        assert http.get("/health-check").json()["status"] == "READY"


# ---- 10: websocket backlog in bytes, connection cap ---------------------------------------------


class _StuckSocket:
    """A websocket whose client never reads: every send blocks forever."""

    def __init__(self) -> None:
        self.closed_with: int | None = None
        self.never = asyncio_event()

    async def send_bytes(self, data: bytes) -> None:
        await self.never.wait()

    async def send_text(self, data: str) -> None:
        await self.never.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed_with = code


def asyncio_event() -> Any:
    import asyncio

    return asyncio.Event()


def test_a_client_that_never_reads_is_bounded_in_bytes_then_closed() -> None:
    import asyncio

    from comfyd.http.websocket import CLOSE_OVERLOADED, WebSocketHub, _Connection

    async def scenario() -> tuple[int | None, int, int]:
        hub = WebSocketHub(max_backlog_bytes=10 * 1024 * 1024)
        hub.bind_loop(asyncio.get_running_loop())
        socket = _StuckSocket()
        connection = _Connection("c1", socket, hub.max_backlog_bytes)  # type: ignore[arg-type]
        hub._connections["c1"] = {connection}
        sender = asyncio.create_task(hub._sender(connection))
        frame = b"\x00" * (3 * 1024 * 1024)  # a SaveImageWebsocket frame is ~3 MB
        peak = 0
        for _ in range(100):
            hub._offer("c1", frame)
            peak = max(peak, connection.backlog_bytes)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        sender.cancel()
        return socket.closed_with, peak, connection.outbox.qsize()

    closed_with, peak, left = asyncio.run(scenario())
    assert closed_with == CLOSE_OVERLOADED
    assert peak <= 10 * 1024 * 1024
    assert left <= 1  # the backlog was released, not kept until the socket closes


def test_websocket_connections_are_capped(start_server) -> None:
    srv = start_server(max_ws_connections=2)
    first = websocket.create_connection(srv.ws_url, timeout=5)
    second = websocket.create_connection(srv.ws_url, timeout=5)
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(srv.ws_url, timeout=5)
        assert refused.value.status_code == 503
    finally:
        first.close()
        second.close()
    srv.wait_until(lambda: srv.state.hub.client_count == 0, what="sockets closed")
    websocket.create_connection(srv.ws_url, timeout=5).close()


# ---- 11: queue bound and Retry-After -------------------------------------------------------------------


def test_the_queue_never_overshoots_its_limit(start_server) -> None:
    srv = start_server(queue_max_depth=5, max_concurrent_jobs=1)
    with srv.client() as http:
        blocker = http.post("/prompt", json={"prompt": sleep_workflow(seconds=30, steps=300)}).json()["prompt_id"]
        srv.wait_until(lambda: (srv.job(blocker) or blocker).status is JobStatus.RUNNING, what="blocker running")
    barrier = threading.Barrier(16)
    codes: list[int] = []

    def submit(index: int) -> None:
        with srv.client() as http:
            barrier.wait()
            codes.append(http.post("/prompt", json={"prompt": sleep_workflow(tag=f"t{index}")}).status_code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(200) == 5 and codes.count(503) == 11
    assert srv.services.queue.depth() == 5
    with srv.client() as http:
        http.post("/interrupt", json={})


def test_retry_after_follows_the_measured_drain_rate(server) -> None:
    manager = server.state.manager
    now = time.monotonic()
    manager.drain._finished_at.extend(now - 5 + i * 0.05 for i in range(100))  # 100 jobs drained in 5 s
    assert manager.retry_after_s(100) in (5, 6)  # 100 jobs at ~20 jobs/s
    manager.drain._finished_at.clear()
    assert manager.retry_after_s(100) == 34  # no measurement yet: the old estimate


# ---- 12: smaller items ------------------------------------------------------------------------------------


def test_a_reused_id_with_a_different_body_is_409(server) -> None:
    with server.client() as http:
        first = http.post("/prompt", json={"prompt": sleep_workflow(tag="a"), "prompt_id": "same-id"})
        again = http.post("/prompt", json={"prompt": sleep_workflow(tag="a"), "prompt_id": "same-id"})
        other = http.post("/prompt", json={"prompt": sleep_workflow(tag="b"), "prompt_id": "same-id"})
        assert first.status_code == 200 and again.status_code == 200 and other.status_code == 409
        body = {"input": {"workflow_json": sleep_workflow(tag="p")}}
        headers = {"prefer": "respond-async"}
        assert http.put("/predictions/pred-1", json=body, headers=headers).status_code == 202
        assert http.put("/predictions/pred-1", json=body, headers=headers).status_code in (200, 202)
        changed = {"input": {"workflow_json": sleep_workflow(tag="q")}}
        assert http.put("/predictions/pred-1", json=changed, headers=headers).status_code == 409


def test_extra_data_is_capped(start_server) -> None:
    srv = start_server(max_extra_data_bytes=4096)
    with srv.client() as http:
        answer = http.post("/prompt", json={"prompt": sleep_workflow(), "extra_data": {"blob": "x" * 5000}})
    assert answer.status_code == 413 and answer.json()["error"]["details"]["location"] == "extra_data"


def test_failed_authentication_is_throttled_per_client(start_server) -> None:
    srv = start_server(api_keys=["right"], auth_failures_per_minute=3)
    with srv.client(headers={"x-api-key": "wrong"}) as http:
        codes = [http.get("/queue").status_code for _ in range(5)]
    assert codes[:3] == [403, 403, 403] and codes[3:] == [429, 429]
    with srv.client(headers={"x-api-key": "right"}) as http:
        assert http.get("/queue").status_code == 429  # the same address waits, even with the key


def test_free_is_rate_limited(start_server) -> None:
    srv = start_server(rate_limit_per_minute=2)
    with srv.client() as http:
        codes = [http.post("/free", json={"unload_models": True}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_save_image_traversal_prefix_is_refused_at_validation(start_server) -> None:
    from comfyd.nodes.image.save_load import SaveImage

    def runtime(settings: Settings) -> Any:
        built = fake_runtime(settings, Recorder())
        built.registry.register(SaveImage)
        return built

    srv = start_server(runtime=runtime)
    workflow = {"3": {"class_type": "TestSleep", "inputs": {"seconds": 0.0, "steps": 1, "tag": ""}},
                "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "../../escape"}}}
    with srv.client() as http:
        answer = http.post("/prompt", json={"prompt": workflow})
    assert answer.status_code == 400
    errors = answer.json()["node_errors"]["9"]["errors"]
    custom = [e for e in errors if e["type"] == "custom_validation_failed"]
    assert custom and "outside the output folder" in custom[0]["details"]
    assert srv.services.job_store.list(limit=5) == []


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "/prompt", {"GET", "POST"}), ("GET", "/interrupt", {"POST"}), ("PATCH", "/history", {"GET", "POST"}),
])
def test_405_lists_every_allowed_method(server, method: str, path: str, allowed: set[str]) -> None:
    with server.client() as http:
        answer = http.request(method, path, headers={"content-type": "application/json"})
    assert answer.status_code == 405
    assert allowed <= {m.strip() for m in answer.headers["allow"].split(",")}


def test_images_in_websocket_and_png_bytes_helpers_are_sane() -> None:
    # guards the helpers above: the GIF bomb really declares 200 frames of 4096x4096
    from PIL import Image

    with Image.open(io.BytesIO(gif_bomb())) as img:
        assert img.size == (4096, 4096) and img.n_frames == 200
    assert os.path.basename(__file__).startswith("test_")


# ---- the whole probe ---------------------------------------------------------------------------------------


def test_the_reproduction_probe_finds_no_5xx_and_no_poisoned_route(server) -> None:
    from hostile_probe import probe

    report = probe(server.url)
    assert report.attacks >= 30
    assert report.server_errors == [] and report.poisoned == []
    with server.client() as http:
        good = http.post("/prompt", json={"prompt": sleep_workflow()}).json()["prompt_id"]
    assert server.wait_job(good).status is JobStatus.SUCCEEDED
