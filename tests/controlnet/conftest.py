"""Tiny checkpoints and ControlNets for the ControlNet tests, written once per module run."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny_checkpoint, tiny_configs
from comfyd.models.tiny_control import write_tiny_controlnet
from comfyd.settings import Settings

FAMILIES = ("sd1", "sd2", "sdxl")


def controlnet_name(family: str, layout: str = "original") -> str:
    return f"tiny-{family}-controlnet-{layout}.safetensors"


@pytest.fixture(scope="package")
def cn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cn-models")
    for family in FAMILIES:
        make_tiny_checkpoint(root / "checkpoints", family, "single", seed=0)
        unet = tiny_configs(family).unet
        write_tiny_controlnet(root / "controlnet" / controlnet_name(family), unet, family, seed=1)
        write_tiny_controlnet(
            root / "controlnet" / controlnet_name(family, "diffusers"), unet, family, seed=2, layout="diffusers"
        )
    return root


@pytest.fixture(scope="package")
def cn_manager(cn_root: Path) -> ModelManager:
    return ModelManager(
        Settings(models_dir=cn_root, output_dir=cn_root / "out", temp_dir=cn_root / "temp",
                 input_dir=cn_root / "in", device="cpu")
    )
