"""The parity model files and the runner the parity test modules share (once per session,
that is once per worker in a parallel run)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_cases import write_models  # noqa: E402


@pytest.fixture(scope="session")
def parity_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity-models")
    write_models(root)
    return root


@pytest.fixture(scope="session")
def parity_runner(parity_models: Path, tmp_path_factory: pytest.TempPathFactory):
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    work = tmp_path_factory.mktemp("parity-run")
    return LocalRunner(
        Settings(  # the references are CPU renders: a GPU's fp16 would be another comparison
            device="cpu",
            allow_pickle=True,  # the hypernetwork case: A1111's format is a (weights-only) pickle
            models_dir=parity_models,
            input_dir=HERE / "inputs",
            output_dir=work / "output",
            temp_dir=work / "temp",
        )
    )
