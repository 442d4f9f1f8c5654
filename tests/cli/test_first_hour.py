"""What a new user meets first: readable errors, checkpoint choice without writes into their
folder, the data folder, the CLI's flags and progress, the server's introduction."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from comfyd.cli import _ProgressBar, build_parser, main, runtime_error_line
from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError, validation_problems
from comfyd.engine.graph import parse_workflow
from comfyd.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "5.width=64", "--set", "5.height=64", "--set", "3.steps=2"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("user-models")
    made = make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="single", seed=0)
    data = made.read_bytes()
    made.unlink()
    for name in ("b.safetensors", "a.safetensors"):
        (root / "checkpoints" / name).write_bytes(data)
    return root


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- errors ----------------------------------------------------------------------------------


def test_invalid_workflow_prints_one_line_per_problem(two_checkpoints: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", "--models-dir", str(two_checkpoints), "--ckpt", "a.safetensors", "--output-dir", str(tmp_path),
            "--set", "3.cfg=1000", "--set", "5.width=2048", "--set", "5.height=1024", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "node 3 KSampler.cfg: value 1000.0 bigger than max of 100.0" in err
    assert "node 5 EmptyLatentImage.width: value 2048x1024 (2097152 pixels) bigger than max of 1048576 pixels " \
           "(comfyd service limit; COMFYD_MAX_LATENT_PIXELS raises it)" in err
    assert len(err.splitlines()) < 8 and "input_config" not in err

    assert main([*args, "--json"]) == 2
    body = json.loads(capsys.readouterr().out)
    assert set(body["node_errors"]) == {"3", "5"}


def test_validation_error_str_says_what_is_wrong() -> None:
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {"8": {"class_type": "VAEDecode", "dependent_outputs": ["9"], "errors": [
            {"type": "required_input_missing", "message": "Required input is missing", "details": "vae",
             "extra_info": {"input_name": "vae"}}]}},
    }
    assert str(WorkflowValidationError(body)) == \
        "Prompt outputs failed validation: node 8 VAEDecode.vae: required input is missing"
    no_nodes = {"error": {"type": "invalid_prompt", "message": "Cannot execute because node Nope does not exist.",
                          "details": "Node ID '#3'", "extra_info": {}}, "node_errors": {}}
    assert validation_problems(no_nodes) == ["Cannot execute because node Nope does not exist.: Node ID '#3'"]


def test_runtime_error_line_has_no_doubled_colon() -> None:
    line = runtime_error_line({"type": "builtins.RuntimeError", "message": "boom", "node_id": "3",
                               "node_type": "KSampler"})
    assert line == "node 3 (KSampler): RuntimeError: boom"


def test_unconvertible_ui_workflow_wrapped_in_prompt_gets_the_export_hint() -> None:
    # UI workflows are converted (tests/workflow_formats); one that cannot be gets the hint.
    ui = {"last_node_id": 9, "last_link_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 2]]}
    for body in (ui, {"prompt": ui}, {"prompt": ui, "client_id": "x"}):
        with pytest.raises(WorkflowParseError) as caught:
            parse_workflow(body)
        assert "Invalid UI workflow" in caught.value.message and "Save (API Format)" in caught.value.details


def test_save_image_prefix_escaping_the_output_folder_is_refused_before_running(tmp_path: Path) -> None:
    from comfyd.runner import LocalRunner, default_workflow

    runner = LocalRunner(Settings(models_dir=tmp_path / "m", output_dir=tmp_path / "out"))
    workflow = default_workflow()
    workflow["9"]["inputs"]["filename_prefix"] = "../../escape"
    events: list[str] = []
    with pytest.raises(WorkflowValidationError) as caught:
        runner.run(workflow, listener=lambda e, d: events.append(e))
    assert "node 9 SaveImage.filename_prefix" in str(caught.value) and "outside the output folder" in str(caught.value)
    assert events == []  # nothing ran: not the loader, not the sampler


# --- checkpoints: never write into the user's models folder ----------------------------------


def test_missing_default_checkpoint_among_others_names_them_and_writes_nothing(
    two_checkpoints: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _files(two_checkpoints)
    assert main(["run", "--models-dir", str(two_checkpoints), "--output-dir", str(tmp_path), "-q"]) == 2
    err = capsys.readouterr().err
    assert "a.safetensors, b.safetensors" in err and "--ckpt NAME" in err
    assert _files(two_checkpoints) == before


def test_ckpt_flag_picks_the_checkpoint(two_checkpoints: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--models-dir", str(two_checkpoints), "--ckpt", "b.safetensors", "--output-dir",
                 str(tmp_path), "-q", "--json", *SMALL]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    assert main(["run", "--models-dir", str(two_checkpoints), "--ckpt", "nope.safetensors", "-q"]) == 2
    assert "available: a.safetensors, b.safetensors" in capsys.readouterr().err


def test_empty_user_folder_gets_the_tiny_model_in_comfyd_home_not_in_it(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    user = tmp_path / "ComfyUI" / "models"
    (user / "loras").mkdir(parents=True)
    home = tmp_path / "home"
    os.environ["COMFYD_HOME"], saved = str(home), os.environ.get("COMFYD_HOME", "")
    try:
        code = main(["run", "--models-dir", str(user), "--output-dir", str(tmp_path / "out"), "-q", *SMALL])
    finally:
        os.environ["COMFYD_HOME"] = saved
    assert code == 0, capsys.readouterr().err
    assert "random-weight" in capsys.readouterr().err
    assert _files(user) == ["loras"]
    assert (home / "models" / "checkpoints" / "comfyd-tiny-sd1.safetensors").is_file()


# --- data folder -----------------------------------------------------------------------------


def test_paths_default_into_comfyd_home_and_explicit_ones_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COMFYD_HOME", str(tmp_path / "h"))
    settings = Settings()
    assert settings.db_path == tmp_path / "h" / "comfyd.db"
    assert settings.output_dir == tmp_path / "h" / "output" and settings.temp_dir == tmp_path / "h" / "temp"
    assert settings.models_dir == tmp_path / "h" / "models" and settings.input_dir == tmp_path / "h" / "input"
    monkeypatch.setenv("COMFYD_OUTPUT_DIR", "out")
    explicit = Settings(db_path=tmp_path / "x.db")
    assert explicit.output_dir == Path("out") and explicit.db_path == tmp_path / "x.db"
    assert explicit.is_explicit("output_dir") and not explicit.is_explicit("temp_dir")
    monkeypatch.delenv("COMFYD_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().db_path == tmp_path / "xdg" / "comfyd" / "comfyd.db"


# --- CLI flags and progress ------------------------------------------------------------------


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("path", [("serve",), ("submit",), ("aws", "local"), ("run",), ("worker",)])
def test_every_option_has_help(path: tuple[str, ...]) -> None:
    parser = _subparser(build_parser(), *path)
    missing = [a.dest for a in parser._actions if not a.help]
    assert missing == []


def test_one_name_for_the_output_folder_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for command in ("run", "serve", "worker"):
        assert parser.parse_args([command, "--output-dir", "x"]).output_dir == "x"
    assert parser.parse_args(["run", "--output", "y"]).output_dir == "y"  # the old name still works
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--version"])
    assert exited.value.code == 0
    from comfyd import __version__

    assert capsys.readouterr().out.strip() == f"comfyd {__version__}"


def test_progress_bar_closes_at_the_last_step_before_vae_decode(capsys: pytest.CaptureFixture[str]) -> None:
    bar = _ProgressBar(enabled=True, interactive=True)
    bar.on_event("executing", {"node": "3"})
    bar.on_event("progress", {"node": "3", "value": 1, "max": 2})
    assert bar._bar is not None
    bar.on_event("progress", {"node": "3", "value": 2, "max": 2})
    assert bar._bar is None  # closed before node 8 (VAEDecode) starts
    bar.on_event("progress", {"node": "3", "value": 1, "max": 5})
    bar.on_event("executing", {"node": "8"})
    assert bar._bar is None


def test_progress_lines_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    bar = _ProgressBar(enabled=True, interactive=False)
    bar.set_class_types({"3": "KSampler"})
    for step in range(1, 21):
        bar.on_event("progress", {"node": "3", "value": step, "max": 20})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "node 3 KSampler: step 1/20" and lines[-1] == "node 3 KSampler: step 20/20"
    assert len(lines) == 11


@pytest.mark.slow
def test_make_demo_renders_small_and_fast(tmp_path: Path) -> None:
    """The demo's own command line (from the Makefile) on a fresh home: a small PNG."""
    line = next(raw for raw in (ROOT / "Makefile").read_text().splitlines() if "comfyd run" in raw)
    argv = line.strip().split()
    argv = argv[argv.index("run"):]
    env = {**os.environ, "COMFYD_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "comfyd", *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    written = [ln.split(" ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("wrote ")]
    assert len(written) == 1
    with Image.open(tmp_path / written[0]) as image:
        assert max(image.size) <= 256
    assert "--models-dir" in proc.stderr  # says how to get real pictures


# --- server ----------------------------------------------------------------------------------


def _server_settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(home=tmp_path / "home", **extra)


def test_banner_names_url_folders_database_auth_and_device(tmp_path: Path) -> None:
    from comfyd.server import banner

    text = banner(_server_settings(tmp_path, port=8199))
    assert "http://127.0.0.1:8199" in text
    for expected in ("models:", "input:", "output:", "temp:", "database:", "auth:", "device:"):
        assert expected in text
    assert str(tmp_path / "home" / "comfyd.db") in text and "off" in text and "cpu" in text
    keyed = banner(_server_settings(tmp_path, api_keys=["k1"]))
    assert "on (1 key)" in keyed and "/docs" not in keyed.split("API docs:")[1].splitlines()[0]


def test_root_introduces_the_server_and_docs_serve_request_schemas(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from comfyd.server import create_app

    app = create_app(_server_settings(tmp_path))
    client = TestClient(app, base_url="http://127.0.0.1")  # without keys only loopback Host names answer
    intro = client.get("/").json()
    assert intro["name"] == "comfyd" and intro["docs"] == "/docs" and "POST /prompt" in intro["api"]["comfyui"]
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    generate = schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert generate["type"] == "object" and "ckpt_name" in generate["properties"]
    assert "requestBody" in schema["paths"]["/prompt"]["post"]
    app.state.comfyd.services.close()

    keyed = create_app(_server_settings(tmp_path / "k", api_keys=["secret"]))
    keyed_client = TestClient(keyed)
    assert keyed_client.get("/openapi.json").status_code == 404  # docs off when auth is on, unless asked
    assert keyed_client.get("/").status_code == 200
    keyed.state.comfyd.services.close()


def test_make_tiny_takes_a_family_and_names_the_known_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "make-tiny", str(tmp_path), "--family", "sdxl"]) == 0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "comfyd-tiny-sdxl-diffusers", "comfyd-tiny-sdxl.safetensors"]
    assert [p.name for p in (tmp_path / "controlnet").iterdir()] == ["comfyd-tiny-sdxl-controlnet.safetensors"]
    # A transformer family writes its own split files (no ControlNet fits it).
    assert main(["models", "make-tiny", str(tmp_path / "chroma"), "--family", "chroma"]) == 0
    assert not (tmp_path / "chroma" / "controlnet").exists()
    assert (tmp_path / "chroma" / "diffusion_models" / "comfyd-tiny-chroma.safetensors").is_file()
    assert main(["models", "make-tiny", str(tmp_path), "--family", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown family 'nope'" in err and "sd1" in err and "sdxl" in err
