"""`generate_image` and `LocalRunner` as a library user holds them: a runner passed in keeps the
checkpoint loaded between calls, leaving its `with` block frees it, and a call without one
leaves nothing loaded behind (no module-level runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import comfyd
from comfyd import runner as runner_module
from comfyd.runner import LocalRunner, apply_sets, default_workflow
from comfyd.settings import Settings

SMALL = ["5.width=64", "5.height=48", "3.steps=2"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from comfyd.models.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    path = make_tiny_checkpoint(root / "checkpoints", family="sd1", fmt="single", seed=0)
    return root, Path(path).name


@pytest.fixture
def settings(checkpoint: tuple[Path, str], tmp_path: Path) -> Settings:
    return Settings(
        models_dir=checkpoint[0], output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", input_dir=tmp_path / "in"
    )


def _workflow(checkpoint: tuple[Path, str], seed: int) -> dict[str, Any]:
    workflow = apply_sets(default_workflow("a red fox"), SMALL)
    workflow["4"]["inputs"]["ckpt_name"] = checkpoint[1]
    workflow["3"]["inputs"]["seed"] = seed
    return workflow


def _loaded(runner: LocalRunner) -> list[str]:
    return [entry["kind"] for entry in runner.env.models.stats()["loaded"]]


def test_one_runner_loads_the_checkpoint_once(settings: Settings, checkpoint: tuple[Path, str]) -> None:
    with LocalRunner(settings) as runner:
        first = comfyd.generate_image(workflow=_workflow(checkpoint, 1), runner=runner)
        assert first.ok, first.error
        loads = runner.env.models.stats()["loads"]
        assert loads >= 1 and "checkpoint" in _loaded(runner)
        # Drop the node-output cache so the loader node really runs again and asks the manager.
        runner.executor.cache.clear()
        second = comfyd.generate_image(workflow=_workflow(checkpoint, 2), runner=runner)
        assert second.ok, second.error
        stats = runner.env.models.stats()
        assert stats["loads"] == loads and stats["hits"] >= 1
    # Leaving the block freed the models and the cached node outputs.
    assert _loaded(runner) == [] and len(runner.executor.cache) == 0


def test_a_closed_runner_loads_again_when_used(settings: Settings, checkpoint: tuple[Path, str]) -> None:
    runner = LocalRunner(settings)
    assert runner.run(_workflow(checkpoint, 1)).ok
    loads = runner.env.models.stats()["loads"]
    runner.close()
    assert _loaded(runner) == []
    assert runner.run(_workflow(checkpoint, 1)).ok
    assert runner.env.models.stats()["loads"] > loads


def test_without_a_runner_each_call_builds_and_frees_its_own(
    settings: Settings, checkpoint: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[LocalRunner] = []

    class Recording(LocalRunner):
        def __init__(self, settings: Settings | None = None) -> None:
            super().__init__(settings)
            made.append(self)

    monkeypatch.setattr(runner_module, "LocalRunner", Recording)
    for seed in (1, 2):
        result = comfyd.generate_image(workflow=_workflow(checkpoint, seed), settings=settings)
        assert result.ok, result.error
        assert result.paths[0].is_file()
    assert len(made) == 2 and made[0] is not made[1]
    assert all(r.settings is settings and _loaded(r) == [] for r in made)
    assert not any(isinstance(v, LocalRunner) for v in vars(runner_module).values())  # nothing kept


def test_settings_must_match_the_runner(settings: Settings, checkpoint: tuple[Path, str]) -> None:
    runner = LocalRunner(settings)
    with pytest.raises(ValueError, match="either settings or a runner"):
        comfyd.generate_image(workflow=_workflow(checkpoint, 1), settings=Settings(), runner=runner)
    result = comfyd.generate_image(workflow=_workflow(checkpoint, 1), settings=settings, runner=runner)
    assert result.ok, result.error


def test_local_runner_is_exported_lazily() -> None:
    assert comfyd.LocalRunner is LocalRunner
    with pytest.raises(AttributeError):
        _ = comfyd.NoSuchThing  # type: ignore[attr-defined]
