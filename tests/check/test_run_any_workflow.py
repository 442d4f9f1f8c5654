"""`comfyd run` on a PNG ComfyUI wrote, on a PNG carrying only a UI graph, and on UI JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyd.cli import main
from comfyd.workflow_formats.embedded import read_embedded
from tests.workflow_formats.test_templates_and_images import _png_with_chunks

HERE = Path(__file__).parent
REFERENCE_PNG = HERE.parent / "fidelity" / "references" / "cfg_1_euler.png"
TEMPLATES = HERE.parent / "workflow_formats" / "templates"


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    code = main(["run", *args, "-q", "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out.strip() else {}), captured.err


def test_png_written_by_comfyui_reruns(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = next((tiny_models / "checkpoints").glob("*.safetensors")).name
    code, result, err = _run(capsys, str(REFERENCE_PNG), "--set", f"4.ckpt_name={tiny}", "--set", "3.steps=2",
                             "--models-dir", str(tiny_models), "--output", str(tmp_path))
    assert code == 0, err
    written = read_embedded(result["images"][0])["prompt"]
    original = read_embedded(REFERENCE_PNG)["prompt"]
    assert written["4"]["inputs"]["ckpt_name"] == tiny and written["3"]["inputs"]["steps"] == 2
    assert written["6"]["inputs"]["text"] == original["6"]["inputs"]["text"]
    assert written["3"]["inputs"]["seed"] == original["3"]["inputs"]["seed"]


@pytest.mark.slow
def test_png_with_only_the_ui_graph_runs(tiny_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = next((tiny_models / "checkpoints").glob("*.safetensors")).name
    picture = tmp_path / "shared.png"
    _png_with_chunks(picture, {"workflow": (TEMPLATES / "default.json").read_text()})
    sets = [f"4.ckpt_name={tiny}", "5.width=64", "5.height=48", "3.steps=2"]
    code, result, err = _run(capsys, str(picture), *[a for s in sets for a in ("--set", s)],
                             "--models-dir", str(tiny_models), "--output", str(tmp_path / "out"))
    assert code == 0, err
    chunks = read_embedded(result["images"][0])
    written = chunks["prompt"]
    assert written["5"]["inputs"] == {"width": 64, "height": 48, "batch_size": 1}
    assert chunks["workflow"] == json.loads((TEMPLATES / "default.json").read_text())  # as ComfyUI writes it
    assert written["3"]["inputs"]["sampler_name"] == "euler" and written["3"]["inputs"]["cfg"] == 8


def test_ui_json_with_nodes_comfyd_lacks_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pair = json.loads((HERE.parent / "workflow_formats" / "pairs" / "model_merging_basic.json").read_text())
    path = tmp_path / "merge.json"
    for node in pair["workflow"]["nodes"]:  # the example keeps CheckpointSave muted; switch it on
        if node["type"] == "CheckpointSave":
            node["mode"] = 0
    path.write_text(json.dumps(pair["workflow"]))
    code, _result, err = _run(capsys, str(path), "--models-dir", str(tmp_path))
    assert code == 2
    assert "CheckpointSave" in err and "built-in ComfyUI node that comfyd does not implement yet" in err


@pytest.mark.slow
def test_generate_image_takes_a_ui_workflow(tiny_models: Path, tmp_path: Path) -> None:
    import comfyd
    from comfyd.settings import Settings

    ui = json.loads((TEMPLATES / "default.json").read_text())
    tiny = next((tiny_models / "checkpoints").glob("*.safetensors")).name
    for node in ui["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = [tiny]
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 48, 1]
        elif node["type"] == "KSampler":
            node["widgets_values"][2] = 2
    settings = Settings(models_dir=tiny_models, output_dir=tmp_path)
    result = comfyd.generate_image(prompt="ignored for a custom workflow", workflow=ui, settings=settings)
    assert result.ok and len(result.paths) == 1
