"""The second half of the parity cases (see test_parity.py and parity_check.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity_check import check_case, halves  # noqa: E402

pytestmark = pytest.mark.slow

SECOND_HALF = halves()[1]


@pytest.mark.parametrize("path", SECOND_HALF, ids=[p.stem for p in SECOND_HALF])
def test_comfyd_matches_comfyui(path: Path, parity_runner) -> None:
    check_case(path, parity_runner)
