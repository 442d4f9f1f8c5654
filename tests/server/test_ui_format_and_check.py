"""The server takes UI-format workflows everywhere a workflow is accepted, answers POST /v1/check,
and checks model files at submission unless told not to (split deployments)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

TEMPLATE = Path(__file__).parents[1] / "workflow_formats" / "templates" / "default.json"
FLUX_PAIR = Path(__file__).parents[1] / "workflow_formats" / "pairs" / "flux_dev_example.json"


@pytest.fixture(scope="module")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "checkpoints", "sd1")
    return root


def ui_default(models: Path) -> dict[str, Any]:
    """The default graph in UI format (templates/default.json) on the tiny checkpoint, 64x48, 2 steps."""
    ui = json.loads(TEMPLATE.read_text())
    tiny = next((models / "checkpoints").glob("*.safetensors")).name
    for node in ui["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = [tiny]
        elif node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 48, 1]
        elif node["type"] == "KSampler":
            node["widgets_values"][2] = 2  # steps (after seed and its control value)
    return ui


@pytest.fixture
def real_server(start_server, tiny_models_dir: Path):  # type: ignore[no-untyped-def]
    from comfyd.runtime import build_runtime

    return start_server(runtime=build_runtime, models_dir=tiny_models_dir)


def test_ui_workflow_through_prompt_predictions_and_generate(real_server, tiny_models_dir: Path) -> None:
    ui = ui_default(tiny_models_dir)
    with real_server.client() as http:
        answer = http.post("/prompt", json={"prompt": ui, "client_id": "c"})
        assert answer.status_code == 200, answer.text
        job = real_server.wait_job(answer.json()["prompt_id"], timeout=120)
        assert job.error is None, job.error
        assert job.workflow["3"]["class_type"] == "KSampler" and job.workflow["5"]["inputs"]["height"] == 48
        prediction = http.post("/predictions", headers={"Prefer": "respond-async"},
                               json={"input": {"workflow_json": json.dumps(ui), "randomise_seeds": True}})
        assert prediction.status_code == 202, prediction.text
        stored = real_server.job(prediction.json()["id"]).workflow
        assert stored["3"]["inputs"]["seed"] != job.workflow["3"]["inputs"]["seed"]  # randomised after conversion
        generated = http.post("/v1/generate", json={"prompt": "a red fox", "workflow": ui, "steps": 1},
                              headers={"Prefer": "respond-async"})
        assert generated.status_code == 202, generated.text
        assert real_server.job(generated.json()["id"]).workflow["6"]["inputs"]["text"] == "a red fox"


def test_ui_workflow_with_nodes_comfyd_lacks_is_a_400(real_server) -> None:
    merging = json.loads((FLUX_PAIR.parent / "model_merging_basic.json").read_text())["workflow"]
    for node in merging["nodes"]:  # the example keeps CheckpointSave muted; switch it on
        if node["type"] == "CheckpointSave":
            node["mode"] = 0
    with real_server.client() as http:
        answer = http.post("/prompt", json={"prompt": merging})
        assert answer.status_code == 400
        assert "CheckpointSave" in answer.json()["error"]["message"]


def test_v1_check(real_server, tiny_models_dir: Path) -> None:
    with real_server.client() as http:
        ok = http.post("/v1/check", json={"workflow": ui_default(tiny_models_dir)})
        assert ok.status_code == 200 and ok.json()["format"] == "ui", ok.text
        assert ok.json()["ok"] is True, ok.json()["errors"]
        flux = json.loads(FLUX_PAIR.read_text())["workflow"]
        report = http.post("/v1/check", json=flux).json()
        assert report["ok"] is False
        assert {m["name"] for m in report["missing_models"]} == {
            "flux1-dev.safetensors", "t5xxl_fp16.safetensors", "clip_l.safetensors", "ae.safetensors"}
        assert http.post("/v1/check", content=b"[1]", headers={"content-type": "application/json"}).status_code == 400
        assert http.post("/v1/check", json={"workflow": 3}).status_code == 400


def test_submit_model_check_can_be_turned_off(start_server, tiny_models_dir: Path, tmp_path: Path) -> None:
    from comfyd.runtime import build_runtime

    api = json.loads((Path(__file__).parents[2] / "comfyd/workflows/default_api.json").read_text())
    missing = copy.deepcopy(api)
    missing["4"]["inputs"]["ckpt_name"] = "on-the-workers-only.safetensors"
    checked = start_server(runtime=build_runtime, models_dir=tiny_models_dir)
    with checked.client() as http:
        refused = http.post("/prompt", json={"prompt": missing})
        assert refused.status_code == 400 and "4" in refused.json()["node_errors"]
    trusting = start_server(runtime=build_runtime, models_dir=tmp_path / "none", submit_model_check=False)
    with trusting.client() as http:
        missing["5"]["inputs"]["width"] = 4096  # everything but model names is still validated
        assert http.post("/prompt", json={"prompt": missing}).status_code == 400
        missing["5"]["inputs"]["width"] = 64
        accepted = http.post("/prompt", json={"prompt": missing})
        assert accepted.status_code == 200, accepted.text
        job = trusting.wait_job(accepted.json()["prompt_id"], timeout=60)
        # Accepted, then refused where it runs: this host's worker lacks the file too.
        assert job.error is not None and job.error["exception_type"] == "validation_error"


def test_submit_cli_sends_ui_json_with_sets(real_server, tiny_models_dir: Path, tmp_path: Path) -> None:
    import argparse

    from comfyd.client import submit_cli

    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui_default(tiny_models_dir)))
    args = argparse.Namespace(workflow=str(path), server=real_server.url, api_key=None,
                              set=["3.seed=11", '6.text="a red fox"'], output=str(tmp_path / "out"))
    assert submit_cli(args) == 0
    jobs = real_server.services.job_store.list()
    assert [(j.workflow["3"]["inputs"]["seed"], j.workflow["6"]["inputs"]["text"]) for j in jobs] == [(11, "a red fox")]
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
