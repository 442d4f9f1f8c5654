"""Fixtures shared by the family tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyd.models.families import _wan_tiny, _wan_tiny_clip
from comfyd.models.tiny import make_tiny


@pytest.fixture(scope="session")
def wan_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Wan files (`make-tiny --family wan`), written once for the T2V and I2V tests."""
    root = tmp_path_factory.mktemp("wan") / "models"
    written = make_tiny(root, family="wan")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted([*_wan_tiny.NAMES.values(), *_wan_tiny_clip.NAMES.values()])
    return root
