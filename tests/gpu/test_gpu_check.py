"""bench/gpu_check.sh proven on CPU (its --cpu-dry-run), and the wheel set it installs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_runs_every_step(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path / "out"), TMPDIR=str(tmp_path))
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--cpu-dry-run", "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["dry_run"] is True
    assert set(steps) == {"imports", "cuda_tests", "throughput_sd1_b1", "throughput_sdxl_b2",
                          "fp16_vs_fp32", "cold_start"}
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert steps["throughput_sdxl_b2"]["results"]["gpu_its_ratio"] > 0
    assert steps["fp16_vs_fp32"]["results"]["fp16_vs_fp32_psnr_db"] == float("inf")  # cpu vs cpu
    assert steps["cold_start"]["results"]["cold_start_s"] > 0
    assert re.search(r"^RESULT gpu_check_failed_steps=0$", proc.stdout, re.MULTILINE)
    assert (tmp_path / "out" / "throughput_sd1_b1.log").read_text()


def _pins() -> dict[str, str]:
    text = (REPO / "scripts" / "device_wheels.sh").read_text()
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\s+([A-Za-z0-9_.-]+)==([\w.]+)$", text, re.M)} | {
        m.group(1).lower(): m.group(2) for m in re.finditer(r"([A-Za-z0-9_.-]+)==([\w.]+)", text.split("NO_DEPS=(")[1].split(")")[0])
    }


def test_device_wheels_pin_what_pyproject_requires_and_nothing_the_host_has() -> None:
    pins = _pins()
    host_has = {"torch", "numpy", "transformers", "accelerate", "safetensors", "tokenizers", "tqdm", "huggingface_hub"}
    assert not host_has & set(pins)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        req = Requirement(line)
        name = req.name.lower()
        if name in host_has or name in {"scipy", "boto3", "kornia", "av"}:  # on the host / imported lazily (see the script)
            continue
        assert name in pins, f"scripts/device_wheels.sh does not carry {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {req}"


def test_device_wheels_dry_run_names_the_platform_and_downloads_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", "scripts/device_wheels.sh", "--dry-run", "--dest", str(tmp_path / "w")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--python-version 3.12" in proc.stdout and "--abi cp312" in proc.stdout
    assert "diffusers==" in proc.stdout and "torchsde==" in proc.stdout
    assert not (tmp_path / "w").exists()


def test_gpu_check_refuses_a_gpu_run_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--cpu-dry-run" in proc.stderr
