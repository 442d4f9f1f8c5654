"""Fixtures for the image tests: a tiny random VAE, and a node environment in temporary folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.models.handles import VaeHandle
from comfyd.settings import Settings


def make_tiny_vae(seed: int = 0) -> VaeHandle:
    """An SD-shaped AutoencoderKL (4 blocks: factor 8, 4 latent channels) with a few channels."""
    torch.manual_seed(seed)
    module = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()
    return VaeHandle(
        key="tiny-vae", family="sd1", vae=module, device=torch.device("cpu"), dtype=torch.float32
    )


@pytest.fixture(scope="session")
def tiny_vae() -> VaeHandle:
    return make_tiny_vae()


@pytest.fixture
def env(tmp_path: Path) -> NodeEnvironment:
    settings = Settings(
        output_dir=tmp_path / "output",
        input_dir=tmp_path / "input",
        temp_dir=tmp_path / "temp",
        models_dir=tmp_path / "models",
    )
    for folder in (settings.output_dir, settings.input_dir, settings.temp_dir):
        Path(folder).mkdir(parents=True)
    return NodeEnvironment(settings)


@pytest.fixture
def make_ctx(env: NodeEnvironment) -> Callable[..., NodeContext]:
    def factory(class_type: str = "SaveImage", **kw: Any) -> NodeContext:
        return NodeContext(
            env=env,
            job_id=kw.pop("job_id", "job-1"),
            node_id=kw.pop("node_id", "9"),
            class_type=class_type,
            **kw,
        )

    return factory
