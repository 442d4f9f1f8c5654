"""Files never leave their directories; keys guard the websocket; open binds are refused; CORS off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import websocket

from comfyd.http.auth import InsecureBindError, check_bind_safety, is_loopback
from comfyd.server import serve
from comfyd.settings import Settings


@pytest.fixture
def secret_outside(server) -> Path:
    """A file beside the server's directories that no route may serve."""
    secret = Path(server.settings.output_dir).parent / "secret.txt"
    secret.write_text("top secret")
    return secret


@pytest.mark.parametrize(
    "params",
    [
        {"filename": "../secret.txt"},
        {"filename": "secret.txt", "subfolder": ".."},
        {"filename": "..%2Fsecret.txt"},
        {"filename": "%2e%2e/secret.txt"},
        {"filename": "secret.txt", "subfolder": "%2e%2e"},
        {"filename": "/etc/passwd"},
        {"filename": "passwd", "subfolder": "/etc"},
        {"filename": "..\\secret.txt"},
        {"filename": "secret.txt\x00.png"},
        {"filename": "../secret.txt", "type": "input"},
        {"filename": "../../secret.txt", "type": "temp", "subfolder": "a"},
    ],
)
def test_view_refuses_traversal(server, secret_outside: Path, params: dict[str, str]) -> None:
    with server.client() as http:
        answer = http.get("/view", params=params)
    assert answer.status_code == 400, answer.text
    assert "top secret" not in answer.text and answer.json()["error"]["type"] == "InvalidRequest"


def test_view_refuses_a_symlink_out_of_the_output_dir(server, secret_outside: Path) -> None:
    link = Path(server.settings.output_dir) / "link.txt"
    os.symlink(secret_outside, link)
    (Path(server.settings.output_dir) / "escape").symlink_to(secret_outside.parent, target_is_directory=True)
    with server.client() as http:
        direct = http.get("/view", params={"filename": "link.txt"})
        through_dir = http.get("/view", params={"filename": "secret.txt", "subfolder": "escape"})
    assert direct.status_code == 400 and through_dir.status_code == 400
    assert "top secret" not in direct.text + through_dir.text


def test_raw_url_encoded_traversal_in_the_path(server, secret_outside: Path) -> None:
    with server.client() as http:
        for raw in ("/view?filename=..%2Fsecret.txt", "/view?filename=%252e%252e%252fsecret.txt",
                    "/view?filename=secret.txt&subfolder=..%2F..%2F"):
            answer = http.get(raw)
            assert answer.status_code in (400, 404) and "top secret" not in answer.text, raw


@pytest.mark.parametrize(
    ("filename", "subfolder"),
    [("../evil.png", ""), ("evil.png", "../.."), ("evil.png", "/tmp"), ("a/b.png", ""), ("..", ""),
     ("evil.png", "..%2f..")],
)
def test_upload_refuses_traversal(server, png, filename: str, subfolder: str) -> None:
    with server.client() as http:
        answer = http.post("/upload/image", files={"image": (filename, png(), "image/png")},
                           data={"subfolder": subfolder})
    assert answer.status_code == 400, answer.text
    root = Path(server.settings.input_dir).parent
    assert not list(root.rglob("evil.png")) and not (root.parent / "evil.png").exists()


def test_upload_names_subfolders_and_overwrite(server, png) -> None:
    input_dir = Path(server.settings.input_dir)
    with server.client() as http:
        first = http.post("/upload/image", files={"image": ("pic.png", png(color=(1, 2, 3)), "image/png")},
                          data={"subfolder": "sub/dir"}).json()
        assert first == {"name": "pic.png", "subfolder": "sub/dir", "type": "input"}
        same = http.post("/upload/image", files={"image": ("pic.png", png(color=(1, 2, 3)), "image/png")},
                         data={"subfolder": "sub/dir"}).json()
        assert same["name"] == "pic.png"  # identical bytes: reused
        other = http.post("/upload/image", files={"image": ("pic.png", png(color=(9, 9, 9)), "image/png")},
                          data={"subfolder": "sub/dir"}).json()
        assert other["name"] == "pic (1).png"
        replaced = http.post("/upload/image", files={"image": ("pic.png", png(color=(7, 7, 7)), "image/png")},
                             data={"subfolder": "sub/dir", "overwrite": "true"}).json()
        assert replaced["name"] == "pic.png"
        assert http.get("/view", params={"filename": "pic.png", "subfolder": "sub/dir", "type": "input"}).content \
            == png(color=(7, 7, 7))
        temp = http.post("/upload/image", files={"image": ("t.png", png(), "image/png")}, data={"type": "temp"})
        assert temp.json()["type"] == "temp" and (Path(server.settings.temp_dir) / "t.png").is_file()
        not_image = http.post("/upload/image", files={"image": ("x.png", b"not a png", "image/png")})
        assert not_image.status_code == 400 and "not an image" in not_image.json()["error"]["message"]
        no_file = http.post("/upload/image", data={"subfolder": "x"}, files={"other": ("a", b"b")})
        assert no_file.status_code == 400 and no_file.json()["error"]["details"]["location"] == "image"
        not_multipart = http.post("/upload/image", json={"image": "x"})
        assert not_multipart.status_code == 415
    assert (input_dir / "sub/dir/pic (1).png").read_bytes() == png(color=(9, 9, 9))


def test_websocket_handshake_needs_the_key(start_server) -> None:
    srv = start_server(api_keys=["ws-key"])
    with pytest.raises(websocket.WebSocketBadStatusException) as missing:
        websocket.create_connection(srv.ws_url + "?clientId=x", timeout=5)
    assert missing.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as wrong:
        websocket.create_connection(srv.ws_url, timeout=5, header={"X-API-Key": "nope"})
    assert wrong.value.status_code == 403
    for ws in (websocket.create_connection(srv.ws_url, timeout=5, header={"Authorization": "Bearer ws-key"}),
               websocket.create_connection(srv.ws_url + "?clientId=b&token=ws-key", timeout=5)):
        assert '"type": "status"' in ws.recv()
        ws.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_open_binds_need_keys(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InsecureBindError, match="COMFYD_API_KEYS"):
        check_bind_safety(host, [])
    check_bind_safety(host, ["a-key"])


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_binds_may_run_without_keys(host: str) -> None:
    assert is_loopback(host)
    check_bind_safety(host, [])


def test_serve_refuses_to_start_open_without_keys(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="refusing to listen on '0.0.0.0' without API keys"):
        serve(Settings(host="0.0.0.0", api_keys=[], db_path=tmp_path / "x.db"))
    assert not (tmp_path / "x.db").exists()  # refused before anything was opened


def test_cors_off_by_default_and_on_when_configured(start_server) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    plain = start_server()
    with plain.client() as http:
        answer = http.options("/prompt", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in http.get("/queue", headers={"Origin": "https://evil.example"}).headers
    allowed = start_server(cors_origins=["https://app.example"])
    with allowed.client() as http:
        ok = http.options("/prompt", headers={**preflight, "Origin": "https://app.example"})
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = http.options("/prompt", headers=preflight)
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


def test_sha256_key_entries_must_be_well_formed() -> None:
    from comfyd.http.auth import ApiKeys

    with pytest.raises(ValueError, match="64 hex digits"):
        ApiKeys(["sha256:abc"])
    keys = ApiKeys(["sha256:" + "a" * 64, "plain"])
    assert keys.matches("plain") and not keys.matches("plai") and not keys.matches("a" * 64)
