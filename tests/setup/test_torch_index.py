"""scripts/torch_index.py: which torch build setup installs, from where, and the final check.
No network: pip's dry-run report is given as data."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "torch_index.py"
_spec = importlib.util.spec_from_file_location("torch_index", SCRIPT)
assert _spec is not None and _spec.loader is not None
ti = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ti)


def _report(version: str) -> dict:
    return {"install": [{"metadata": {"name": "torch", "version": version}}]}


@pytest.mark.parametrize(
    ("env", "gpu", "want"),
    [({}, False, "cpu"), ({}, True, "cuda"), ({"COMFYD_TORCH_CUDA": "1"}, False, "cuda"),
     ({"COMFYD_TORCH_CUDA": "0"}, True, "cpu")],
)
def test_wanted_build(env: dict, gpu: bool, want: str) -> None:
    assert ti.wanted_build(env, gpu) == want


def test_no_gpu_and_public_index_gives_the_cuda_wheel_so_the_cpu_index_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ti.sys, "platform", "linux")
    version = ti.reported_torch_version(_report("2.13.0"))  # public PyPI on Linux: a CUDA build
    assert ti.choose_index("cpu", {}, version) == "https://download.pytorch.org/whl/cpu"


def test_no_gpu_and_a_local_cpu_wheel_keeps_pip_resolution() -> None:
    assert ti.choose_index("cpu", {}, ti.reported_torch_version(_report("2.13.0+cpu"))) is None


def test_unresolvable_default_falls_back_to_the_index_of_the_build() -> None:
    assert ti.choose_index("cpu", {}, ti.reported_torch_version(None)) == ti.CPU_INDEX
    assert ti.choose_index("cuda", {}, None) == ti.CUDA_INDEX


def test_gpu_host_gets_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ti.sys, "platform", "linux")
    assert ti.choose_index("cuda", {}, "2.13.0") is None  # public Linux wheel: CUDA already
    assert ti.choose_index("cuda", {}, "2.13.0+cu128") is None
    assert ti.choose_index("cuda", {}, "2.13.0+cpu") == "https://download.pytorch.org/whl/cu128"


def test_explicit_index_wins() -> None:
    assert ti.choose_index("cpu", {"COMFYD_TORCH_INDEX_URL": "https://mirror/x"}, "2.13.0+cpu") == "https://mirror/x"


def test_verify_refuses_the_wrong_build() -> None:
    assert ti.verify("cpu", "2.13.0+cpu", None) is None
    assert ti.verify("cuda", "2.13.0+cu128", "12.8") is None
    assert "CUDA build" in (ti.verify("cpu", "2.13.0", "12.8") or "")
    assert "CPU build" in (ti.verify("cuda", "2.13.0+cpu", None) or "")


def test_index_command_reads_a_pip_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report("2.13.0+cpu")))
    out = subprocess.run([sys.executable, str(SCRIPT), "index", "cpu", str(report)], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ""
    empty = tmp_path / "empty.json"
    empty.write_text("")  # what setup.sh leaves when pip cannot resolve unaided
    out = subprocess.run([sys.executable, str(SCRIPT), "index", "cpu", str(empty)], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ti.CPU_INDEX


def test_verify_command_fails_with_exit_1_for_the_wrong_build() -> None:
    import torch

    have = "cuda" if torch.version.cuda else "cpu"
    other = "cpu" if have == "cuda" else "cuda"
    assert subprocess.run([sys.executable, str(SCRIPT), "verify", have], capture_output=True).returncode == 0
    wrong = subprocess.run([sys.executable, str(SCRIPT), "verify", other], capture_output=True, text=True)
    assert wrong.returncode == 1 and "setup: error" in wrong.stderr


def test_setup_sh_uses_the_helper_and_fails_on_a_wrong_build() -> None:
    text = (SCRIPT.parent / "setup.sh").read_text()
    assert "torch_index.py index" in text and "--index-url" in text
    # The verify step is the last command, under `set -e`: its exit status is the script's.
    assert "set -euo pipefail" in text
    assert text.rstrip().splitlines()[-1].startswith(".venv/bin/python scripts/torch_index.py verify")
