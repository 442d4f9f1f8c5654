"""A models folder with a tiny SD1 checkpoint, and files whose headers look like Flux's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="single", seed=0)
    return root


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A real (small) safetensors file with these keys and shapes."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
