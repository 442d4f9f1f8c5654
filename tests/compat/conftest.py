"""Custom-node tests: the packs under fixtures/custom_nodes, written for these tests in the style
of real ComfyUI packs (none of a real pack's code is in the repository)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from comfyd.settings import Settings
from tests.server.conftest import start_server as start_server  # the real-server fixture

FIXTURES = Path(__file__).parent / "fixtures" / "custom_nodes"


def pack_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        custom_nodes_dirs=[FIXTURES],
        load_plugins=False,
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        models_dir=tmp_path / "models",
        db_path=tmp_path / "comfyd.db",
    )
    values.update(overrides)
    for key in ("output_dir", "input_dir", "temp_dir"):
        Path(values[key]).mkdir(parents=True, exist_ok=True)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return pack_settings(tmp_path)
