#!/usr/bin/env python3
"""Which torch build `scripts/setup.sh` installs, and the check that it got it.

Standard library only: it runs before the virtual environment has anything in it.

    torch_index.py want                      -> "cpu" or "cuda" (COMFYD_TORCH_CUDA, else nvidia-smi)
    torch_index.py index WANT [REPORT.json]  -> the --index-url for torch, or nothing for pip's own
                                                 resolution (REPORT: `pip install --dry-run --report`
                                                 of torch, saying what pip would pick unaided)
    torch_index.py verify WANT               -> exit 1 unless the importable torch is that build

pip's own resolution is kept when it already yields the wanted build (a local CPU wheel, a
configured mirror); otherwise the official index of that build is used. On the public index,
Linux's `torch==X` is the CUDA build (its version has no `+cpu`), so a machine without an NVIDIA
GPU gets the CPU index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # the CUDA 12.8 build, as Dockerfile.gpu pins


def has_nvidia_gpu() -> bool:
    """`nvidia-smi -L` lists at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def wanted_build(env: Mapping[str, str], gpu: bool) -> str:
    """"cuda" or "cpu": COMFYD_TORCH_CUDA=1/0 decides, else whether an NVIDIA GPU is present."""
    flag = env.get("COMFYD_TORCH_CUDA", "").strip()
    if flag in ("1", "true", "yes"):
        return "cuda"
    if flag in ("0", "false", "no"):
        return "cpu"
    return "cuda" if gpu else "cpu"


def reported_torch_version(report: Mapping[str, Any] | None) -> str | None:
    """The torch version in a `pip install --dry-run --report` JSON report, if any."""
    for item in (report or {}).get("install", []) or []:
        metadata = item.get("metadata") or {}
        if str(metadata.get("name", "")).lower() == "torch":
            return str(metadata.get("version"))
    return None


def is_cpu_version(version: str) -> bool:
    return version.endswith("+cpu") or "+cpu." in version


def is_cuda_version(version: str) -> bool:
    # Public-index Linux wheels carry no local tag and are CUDA builds; other indexes say +cuXYZ.
    local = version.partition("+")[2]
    return local.startswith("cu") or (local == "" and sys.platform.startswith("linux"))


def choose_index(want: str, env: Mapping[str, str], default_version: str | None) -> str | None:
    """The --index-url for torch, or None when pip's own resolution already gives `want`."""
    explicit = env.get("COMFYD_TORCH_INDEX_URL", "").strip()
    if explicit:
        return explicit
    if default_version is not None:
        if want == "cpu" and is_cpu_version(default_version):
            return None
        if want == "cuda" and is_cuda_version(default_version):
            return None
    return CPU_INDEX if want == "cpu" else CUDA_INDEX


def verify(want: str, version: str, cuda_version: str | None) -> str | None:
    """A reason to fail when the installed torch is not the wanted build, else None."""
    if want == "cpu" and cuda_version is not None:
        return (f"torch {version} is a CUDA build (CUDA {cuda_version}) on a machine set up for CPU: "
                f"reinstall with COMFYD_TORCH_INDEX_URL={CPU_INDEX} (or COMFYD_TORCH_CUDA=1 to keep it)")
    if want == "cuda" and cuda_version is None:
        return (f"torch {version} is a CPU build but CUDA was asked for: reinstall with "
                f"COMFYD_TORCH_INDEX_URL={CUDA_INDEX}")
    return None


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "want":
        print(wanted_build(os.environ, has_nvidia_gpu()))
        return 0
    if command == "index" and len(argv) >= 2:
        report = None
        if len(argv) >= 3:
            try:
                with open(argv[2]) as handle:
                    report = json.load(handle)
            except (OSError, json.JSONDecodeError):
                report = None  # pip could not resolve unaided (no network, say): use the index
        url = choose_index(argv[1], os.environ, reported_torch_version(report))
        print(url or "")
        return 0
    if command == "verify" and len(argv) >= 2:
        import torch

        reason = verify(argv[1], torch.__version__, torch.version.cuda)
        if reason:
            print(f"setup: error: {reason}", file=sys.stderr)
            return 1
        print(f"setup: torch {torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU'} build)")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
