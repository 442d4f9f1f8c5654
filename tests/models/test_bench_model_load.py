"""bench/model_load.py runs offline on the tiny checkpoint and ends with its RESULT line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "model_load.py"


@pytest.mark.slow
def test_model_load_bench_tiny(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(BENCH), "--tiny", "--repeats", "1", "--cache-dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert "weights identical between the two loaders" in lines
    assert any(re.search(r"comfyd +fresh process: load [\d.]+s, peak RSS [\d.]+ GiB", line) for line in lines)
    assert re.fullmatch(r"RESULT load_ratio=\d+\.\d{3}", lines[-1])
