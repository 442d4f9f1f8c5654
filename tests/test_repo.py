"""Repository hygiene that CI must enforce: lint, docs in step with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from comfyd.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "comfyd", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| `(COMFYD_[A-Z0-9_]+)` \|", readme, re.M))
    expected = {f"COMFYD_{name.upper()}" for name in Settings.model_fields}
    assert expected - rows == set(), f"settings missing from the README table: {sorted(expected - rows)}"
    assert rows - expected - {"COMFYD_CONFIG"} == set(), f"README documents unknown settings: {sorted(rows - expected)}"
