"""`comfyd check` knows the ControlNet loaders' folder: missing files are named, and a file in
either of ComfyUI's folders for it (`controlnet/`, `t2i_adapter/`) counts as present."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyd.cli import main

WORKFLOW = Path(__file__).parents[1] / "fidelity" / "workflows" / "controlnet_chain_two.json"


def _missing(capsys: pytest.CaptureFixture[str], models: Path) -> list[tuple[str, str, str]]:
    main(["check", str(WORKFLOW), "--models-dir", str(models), "--json"])
    report = json.loads(capsys.readouterr().out)
    return sorted((m["class_type"], m["name"], m["folder"]) for m in report["missing_models"])


@pytest.mark.slow
def test_missing_controlnets_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = _missing(capsys, tmp_path)
    assert ("ControlNetLoader", "comfyd-parity-controlnet.safetensors", "controlnet") in missing
    assert ("ControlNetLoader", "comfyd-parity-controlnet-bare.safetensors", "controlnet") in missing
    (tmp_path / "controlnet").mkdir()
    (tmp_path / "controlnet" / "comfyd-parity-controlnet.safetensors").write_bytes(b"x")
    (tmp_path / "t2i_adapter").mkdir()
    (tmp_path / "t2i_adapter" / "comfyd-parity-controlnet-bare.safetensors").write_bytes(b"x")
    assert [m for m in _missing(capsys, tmp_path) if m[0] == "ControlNetLoader"] == []
