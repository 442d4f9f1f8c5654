"""Fixtures for the model tests: tiny checkpoints of every family, written once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny_checkpoint
from comfyd.settings import Settings

FAMILIES = ("sd1", "sd2", "sdxl")


@pytest.fixture(scope="session")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ComfyUI-layout models folder with every family as a single file and a diffusers folder."""
    root = tmp_path_factory.mktemp("models")
    for family in FAMILIES:
        make_tiny_checkpoint(root / "checkpoints", family, "single", seed=0)
        make_tiny_checkpoint(root / "checkpoints", family, "diffusers", seed=0)
    return root


def single_name(family: str) -> str:
    return f"comfyd-tiny-{family}.safetensors"


def diffusers_name(family: str) -> str:
    return f"comfyd-tiny-{family}-diffusers"


def share_checkpoint(models_root: Path, root: Path, name: str) -> Path:
    """The session's tiny checkpoint `name` also in `root/checkpoints` (a hard link: no copy, no
    symlink for the path checks to refuse), for tests that need their own models folder."""
    target = root / "checkpoints" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(models_root / "checkpoints" / name, target)
    except OSError:
        shutil.copyfile(models_root / "checkpoints" / name, target)
    return target


def make_settings(root: Path, **overrides: object) -> Settings:
    return Settings(
        models_dir=root, output_dir=root / "out", temp_dir=root / "temp", input_dir=root / "in", **overrides
    )


@pytest.fixture(scope="session")
def manager(models_root: Path) -> ModelManager:
    """One manager shared by the read-only tests (loaded models stay cached between them)."""
    return ModelManager(make_settings(models_root, device="cpu"))


def node_context(manager: ModelManager, class_type: str = "CheckpointLoaderSimple") -> NodeContext:
    env = NodeEnvironment(manager.settings, models=manager)
    return NodeContext(env=env, job_id="job", node_id="1", class_type=class_type)
