"""The default workflow end to end on tiny models: CLI, Python API, both checkpoint formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyd.runner import LocalRunner, apply_sets, default_workflow
from comfyd.settings import Settings

SMALL = ["5.width=64", "5.height=48", "3.steps=3"]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="single", seed=0)
    make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="diffusers", seed=0)
    return root


@pytest.fixture(scope="module")
def runner(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalRunner:
    out = tmp_path_factory.mktemp("out")
    return LocalRunner(Settings(models_dir=models_dir, output_dir=out, temp_dir=out / "temp", input_dir=out / "in"))


def _small_workflow(ckpt: str, seed: int = 1) -> dict:
    workflow = apply_sets(default_workflow("cyberpunk city"), SMALL)
    workflow["4"]["inputs"]["ckpt_name"] = ckpt
    workflow["3"]["inputs"]["seed"] = seed
    return workflow


def _checkpoint_names(runner: LocalRunner) -> tuple[str, str]:
    names = runner.env.models.list_files("checkpoints")
    single = next(n for n in names if n.endswith(".safetensors") and "/" not in n)
    folder = next(n for n in names if n != single)
    return single, folder


def test_default_workflow_writes_png_with_metadata(runner: LocalRunner) -> None:
    single, _ = _checkpoint_names(runner)
    workflow = _small_workflow(single)
    result = runner.run(workflow, extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}})
    assert result.ok, result.error
    assert len(result.images) == 1
    path = result.images[0].path
    assert path.name.endswith("_.png") and path.is_file()
    with Image.open(path) as image:
        assert image.size == (64, 48)
        assert json.loads(image.text["prompt"])["6"]["inputs"]["text"] == "cyberpunk city"
        assert json.loads(image.text["workflow"]) == {"nodes": []}
    assert set(result.node_timings) >= {"3", "4", "8", "9"}


def test_seed_only_rerun_reuses_loader_and_text_encoders(runner: LocalRunner) -> None:
    single, _ = _checkpoint_names(runner)
    events: list[tuple[str, dict]] = []
    runner.run(_small_workflow(single, seed=11))
    result = runner.run(_small_workflow(single, seed=12), listener=lambda e, d: events.append((e, d)))
    assert result.ok
    cached = next(d["nodes"] for e, d in events if e == "execution_cached")
    assert {"4", "5", "6", "7"} <= set(cached)
    executed = [d["node"] for e, d in events if e == "executing"]
    assert "4" not in executed and "6" not in executed and "3" in executed


def test_single_file_and_diffusers_folder_give_identical_images(runner: LocalRunner) -> None:
    single, folder = _checkpoint_names(runner)
    pixels = []
    for name in (single, folder):
        result = runner.run(_small_workflow(name, seed=5))
        assert result.ok, result.error
        pixels.append(np.asarray(Image.open(result.images[0].path)))
    assert np.array_equal(pixels[0], pixels[1])


def test_parallel_mode_matches_sequential_bit_for_bit(runner: LocalRunner) -> None:
    single, _ = _checkpoint_names(runner)
    images = []
    for mode in ("sequential", "parallel"):
        # A fresh cache-free runner per mode so both really execute every node.
        fresh = LocalRunner(runner.settings)
        result = fresh.run(_small_workflow(single, seed=9), execution_mode=mode)
        assert result.ok, result.error
        images.append(np.asarray(Image.open(result.images[0].path)))
    assert np.array_equal(images[0], images[1])


def test_graph_form_runs(runner: LocalRunner) -> None:
    single, _ = _checkpoint_names(runner)
    graph = json.loads(Path(__file__).parents[2].joinpath("comfyd/workflows/default_graph_form.json").read_text())
    graph["nodes"]["4"]["inputs"]["ckpt_name"] = single
    apply_sets(graph, SMALL)
    result = runner.run(graph)
    assert result.ok, result.error
    assert "3" in result.values  # the followed node's output is part of the result


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyd", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_cli_run_default_creates_tiny_model_and_reports(tmp_path: Path) -> None:
    sets = [a for s in SMALL for a in ("--set", s)]
    proc = _cli("run", "--models-dir", "m", "--output", "o", "-q", *sets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "random" in proc.stderr and "noise" in proc.stderr  # says plainly what the tiny model is
    # Never written into the models folder the user named: into comfyd's own home instead.
    assert not (tmp_path / "m" / "checkpoints" / "comfyd-tiny-sd1.safetensors").exists()
    home = Path(os.environ["COMFYD_HOME"])
    assert (home / "models" / "checkpoints" / "comfyd-tiny-sd1.safetensors").is_file()
    pngs = list((tmp_path / "o").glob("ComfyUI_*_.png"))
    assert len(pngs) == 1
    assert "KSampler" in proc.stdout and "wrote" in proc.stdout


def test_cli_run_invalid_workflow_exits_nonzero_with_node_errors(tmp_path: Path) -> None:
    workflow = default_workflow()
    workflow["3"]["inputs"]["steps"] = "abc"
    workflow["3"]["inputs"].pop("positive")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(workflow))
    proc = _cli("run", str(path), "--models-dir", "m", "--output", "o", cwd=tmp_path)
    assert proc.returncode == 2
    assert "node 3 KSampler.positive: required input is missing" in proc.stderr
    assert "node 3 KSampler.steps: " in proc.stderr
    raw = _cli("run", str(path), "--models-dir", "m", "--output", "o", "--json", cwd=tmp_path)
    assert raw.returncode == 2
    types = {e["type"] for e in json.loads(raw.stdout)["node_errors"]["3"]["errors"]}
    assert {"required_input_missing", "invalid_input_type"} <= types
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.png"))
