"""`comfyd models pull` / `comfyd check --pull` against a local HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from comfyd.cli import main
from comfyd.models.pull import PullError, PullRequest, parse_target, pull

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TEMPLATE = Path(__file__).parents[1] / "workflow_formats" / "templates" / "default.json"


@dataclass
class FileServer:
    url: str
    files: dict[str, bytes]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    cut_after: int | None = None  # send only this many bytes of a GET body (a broken connection)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer("", {})

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, head: bool) -> None:
            path = self.path.split("?")[0]
            state.requests.append((self.command, path, self.headers.get("Range")))
            data = state.files.get(path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if self.headers.get("Range", "").startswith("bytes="):
                start = int(self.headers["Range"][6:].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            # What the Hugging Face hub sends, so huggingface_hub accepts this server as its endpoint.
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.end_headers()
            if not head:
                if state.cut_after is not None:
                    body = body[: state.cut_after]
                    state.cut_after = None
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(head=True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_url_download_lands_atomically(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/files/model.safetensors"] = PAYLOAD
    request = parse_target(f"{file_server.url}/files/model.safetensors", "checkpoints")
    result = pull(request, tmp_path, progress=False)
    assert result.status == "downloaded" and result.path == tmp_path / "checkpoints" / "model.safetensors"
    assert result.path.read_bytes() == PAYLOAD
    assert list((tmp_path / "checkpoints").iterdir()) == [result.path]  # no .part left behind


def test_existing_file_is_never_overwritten(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/m.safetensors"] = PAYLOAD
    target = tmp_path / "loras" / "m.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"mine")
    result = pull(parse_target(f"{file_server.url}/m.safetensors", "loras"), tmp_path, progress=False)
    assert result.status == "exists" and target.read_bytes() == b"mine"
    assert file_server.requests == []


def test_interrupted_download_resumes(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/big.safetensors"] = PAYLOAD
    file_server.cut_after = 300_000
    request = parse_target(f"{file_server.url}/big.safetensors", "vae")
    with pytest.raises(PullError, match="resume"):
        pull(request, tmp_path, progress=False)
    part = tmp_path / "vae" / "big.safetensors.part"
    assert part.stat().st_size == 300_000 and not (tmp_path / "vae" / "big.safetensors").exists()
    result = pull(request, tmp_path, progress=False)
    assert result.path.read_bytes() == PAYLOAD
    assert file_server.requests[-1] == ("GET", "/big.safetensors", "bytes=300000-")


def test_hash_and_size_are_verified(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/x.safetensors"] = PAYLOAD
    base = parse_target(f"{file_server.url}/x.safetensors", "checkpoints")
    wrong = PullRequest(base.name, base.folder, base.url, sha256="00" * 32)
    with pytest.raises(PullError, match="SHA-256"):
        pull(wrong, tmp_path, progress=False)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    with pytest.raises(PullError, match="expected 5"):
        pull(PullRequest(base.name, base.folder, base.url, size=5), tmp_path, progress=False)
    right = PullRequest(base.name, base.folder, base.url, sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert pull(right, tmp_path, progress=False).status == "downloaded"


def test_names_cannot_leave_the_folder(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        pull(PullRequest("../../etc/x", "checkpoints", url=f"{file_server.url}/x"), tmp_path, progress=False)


@pytest.fixture
def hub(file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileServer:
    """huggingface_hub pointed at the local server (as HF_ENDPOINT does), online, own cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", file_server.url)
    monkeypatch.setattr(constants, "ENDPOINT", file_server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", file_server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return file_server


def test_hugging_face_file_through_huggingface_hub(hub: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hub.files["/org/repo/resolve/main/split_files/vae/ae.safetensors"] = PAYLOAD
    code = main(["models", "pull", "org/repo/split_files/vae/ae.safetensors", "--folder", "vae",
                 "--models-dir", str(tmp_path / "models"), "-q"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "models" / "vae" / "ae.safetensors").read_bytes() == PAYLOAD
    assert any((tmp_path / "hf-cache").rglob("ae.safetensors"))  # huggingface_hub's own cache was used
    assert ("HEAD", "/org/repo/resolve/main/split_files/vae/ae.safetensors", None) in hub.requests


def test_hub_offline_mode_is_honoured(hub: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.files["/org/repo/resolve/main/a.safetensors"] = PAYLOAD
    with pytest.raises(PullError, match="offline"):
        pull(parse_target("org/repo/a.safetensors", "loras"), tmp_path, progress=False)
    assert hub.requests == []


def test_check_pull_fetches_what_the_workflow_lists(file_server: FileServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from tests.check.conftest import write_safetensors

    source = tmp_path / "served.safetensors"
    write_safetensors(source, {"model.diffusion_model.input_blocks.0.0.weight": (4, 4)})
    file_server.files["/v1-5-pruned-emaonly-fp16.safetensors"] = source.read_bytes()
    workflow = json.loads(TEMPLATE.read_text())
    loader = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")
    loader["properties"]["models"][0]["url"] = f"{file_server.url}/v1-5-pruned-emaonly-fp16.safetensors"
    path = tmp_path / "w.json"
    path.write_text(json.dumps(workflow))
    models = tmp_path / "models"
    assert main(["check", str(path), "--models-dir", str(models), "--json"]) == 3
    assert file_server.requests == []  # nothing downloads unless asked
    capsys.readouterr()
    code = main(["check", str(path), "--models-dir", str(models), "--json", "--pull"])
    report = json.loads(capsys.readouterr().out)
    assert (models / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors").read_bytes() == source.read_bytes()
    assert report["missing_models"] == [] and report["models"][0]["family"] == "sd1"
    assert code == 0, report["errors"]
