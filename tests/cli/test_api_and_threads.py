"""generate_image's parameters, progress and workflow filling; CPU thread defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import comfyd
from comfyd.models.threads import auto_cpu_threads, cpu_threads_for, usable_cpus
from comfyd.runner import default_workflow
from comfyd.settings import Settings
from comfyd.workflow_params import GenerationParams, WorkflowParamError, apply_params

ROOT = Path(__file__).resolve().parents[2]


def test_params_fill_a_given_api_workflow() -> None:
    workflow = default_workflow("old")
    apply_params(workflow, GenerationParams(prompt="a fox", negative_prompt="blur", seed=9, width=64, height=48,
                                            steps=3, cfg=5.5, checkpoint="x.safetensors"))
    assert workflow["6"]["inputs"]["text"] == "a fox" and workflow["7"]["inputs"]["text"] == "blur"
    assert {k: workflow["3"]["inputs"][k] for k in ("seed", "steps", "cfg")} == {"seed": 9, "steps": 3, "cfg": 5.5}
    assert (workflow["5"]["inputs"]["width"], workflow["5"]["inputs"]["height"]) == (64, 48)
    assert workflow["4"]["inputs"]["ckpt_name"] == "x.safetensors"


def test_params_fill_the_graph_form_with_renumbered_nodes() -> None:
    graph = json.loads((ROOT / "comfyd/workflows/default_graph_form.json").read_text())
    apply_params(graph, GenerationParams(prompt="a fox", seed=4))
    assert graph["nodes"]["6"]["inputs"]["text"] == "a fox" and graph["nodes"]["3"]["inputs"]["seed"] == 4


def test_a_parameter_with_no_place_is_refused_not_ignored() -> None:
    workflow = default_workflow()
    workflow["6"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["7", 0]}}
    with pytest.raises(WorkflowParamError, match="cannot set prompt"):
        apply_params(workflow, GenerationParams(prompt="a fox"))
    two = default_workflow()
    two["30"] = dict(two["3"])
    with pytest.raises(WorkflowParamError, match="2 sampler nodes"):
        apply_params(two, GenerationParams(seed=1))
    apply_params(two, GenerationParams(seed=1), node_id="30")
    assert two["30"]["inputs"]["seed"] == 1


def test_generate_image_takes_size_steps_checkpoint_and_reports_progress(tmp_path: Path) -> None:
    from comfyd.models.tiny import make_tiny_checkpoint

    made = make_tiny_checkpoint(tmp_path / "m" / "checkpoints", family="sd1", fmt="single", seed=0)
    steps: list[tuple[int, int]] = []
    workflow = default_workflow("ignored")
    result = comfyd.generate_image(
        "a red fox", workflow=workflow, seed=3, width=64, height=48, steps=2, cfg=6.0, checkpoint=made.name,
        settings=Settings(models_dir=tmp_path / "m", output_dir=tmp_path / "out"),
        progress=lambda value, total: steps.append((value, total)),
    )
    assert result.ok, result.error
    assert steps == [(1, 2), (2, 2)]
    from PIL import Image

    with Image.open(result.paths[0]) as image:
        assert image.size == (64, 48)
        prompt = json.loads(image.text["prompt"])
    assert prompt["6"]["inputs"]["text"] == "a red fox" and prompt["3"]["inputs"]["seed"] == 3
    assert workflow["6"]["inputs"]["text"] == "ignored"  # the caller's dict is not changed


def test_auto_threads_share_the_cpus_among_concurrent_jobs(tmp_path: Path) -> None:
    assert auto_cpu_threads(8, 1) == 8 and auto_cpu_threads(8, 3) == 2 and auto_cpu_threads(2, 3) == 1
    assert cpu_threads_for(Settings(cpu_threads=5), 3, cpus=8) == 5
    assert cpu_threads_for(Settings(), 2, cpus=8) == 4
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a 1.5-CPU container quota
    assert usable_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_runner_sets_torch_threads_and_comfyd_prefers_passive_openmp_waiting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    code = (
        "import os, comfyd, torch\n"
        "from comfyd.runner import LocalRunner\n"
        "from comfyd.settings import Settings\n"
        f"LocalRunner(Settings(models_dir={str(tmp_path)!r}, device='cpu', cpu_threads=1))\n"
        "print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "1"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # the user's choice is kept
    out = subprocess.run([sys.executable, "-c", "import os, comfyd; print(os.environ['OMP_WAIT_POLICY'])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_interactive_progress_is_a_tqdm_bar_closed_at_the_last_step(capsys: pytest.CaptureFixture[str]) -> None:
    from comfyd.runner import _progress_listener

    assert _progress_listener(False) is None
    listener = _progress_listener(True)
    assert listener is not None
    for step in (1, 2, 3):
        listener("progress", {"node": "3", "value": step, "max": 3})
    listener("executing", {"node": "8"})
    listener("closed", {})
    err = capsys.readouterr().err
    assert "3/3" in err and "node 3" in err
