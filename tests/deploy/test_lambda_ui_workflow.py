"""The Lambda handler's direct invocation takes a UI-format workflow (what ComfyUI's Save writes)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from comfyd.lambda_handler import handler
from comfyd.workflow_formats.embedded import read_embedded

TEMPLATE = Path(__file__).parents[1] / "workflow_formats" / "templates" / "default.json"


def test_direct_invocation_with_a_ui_workflow(
    lambda_env: dict[str, str], tiny_models: Path, fake_context: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("COMFYD_MODELS_DIR", str(tiny_models))
    ui = json.loads(TEMPLATE.read_text())
    tiny = next((tiny_models / "checkpoints").glob("*.safetensors")).name
    values = {"CheckpointLoaderSimple": [tiny], "EmptyLatentImage": [64, 48, 1]}
    for node in ui["nodes"]:
        node["widgets_values"] = values.get(node["type"], node.get("widgets_values"))
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 2
    result = handler({"workflow": ui, "job_id": "direct-ui", "inline_images": True}, fake_context)
    assert result["status"] == "succeeded", result.get("error")
    (image,) = result["images"]
    picture = tmp_path / "out.png"
    picture.write_bytes(base64.b64decode(image["data"]))
    chunks = read_embedded(picture)
    assert chunks["prompt"]["5"]["inputs"]["height"] == 48 and chunks["workflow"] == ui

    broken = handler({"workflow": {"nodes": [{"id": 1, "type": "UltimateSDUpscale"}], "links": []}}, fake_context)
    assert broken["status"] == "invalid" and "ssitu/ComfyUI_UltimateSDUpscale" in json.dumps(broken)
