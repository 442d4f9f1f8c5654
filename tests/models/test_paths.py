"""Model folders in ComfyUI's layout: listing across roots and safe name resolution."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from comfyd.models.paths import ModelNotFound, ModelPaths, UnknownModelFolder, UnsafeModelName


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture()
def roots(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "models", tmp_path / "extra"
    _touch(first / "checkpoints" / "b.safetensors")
    _touch(first / "checkpoints" / "sub" / "a.ckpt")
    _touch(first / "checkpoints" / "notes.txt")
    _touch(first / "checkpoints" / "pipe" / "model_index.json", b"{}")
    _touch(first / "checkpoints" / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    _touch(second / "checkpoints" / "A.safetensors")
    _touch(second / "checkpoints" / "b.safetensors", b"second")
    _touch(second / "text_encoders" / "t5.safetensors")
    return first, second


def test_list_files_merges_roots_sorted_with_diffusers_folders_as_one_entry(roots: tuple[Path, Path]) -> None:
    paths = ModelPaths(roots)
    assert paths.list_files("checkpoints") == ["A.safetensors", "b.safetensors", "pipe", "sub/a.ckpt"]
    # `clip` also answers to ComfyUI's newer folder name.
    assert paths.list_files("clip") == ["t5.safetensors"]
    assert paths.list_files("loras") == []


def test_resolve_prefers_the_first_root(roots: tuple[Path, Path]) -> None:
    paths = ModelPaths(roots)
    assert paths.resolve("checkpoints", "b.safetensors") == roots[0] / "checkpoints" / "b.safetensors"
    assert paths.resolve("checkpoints", "A.safetensors") == roots[1] / "checkpoints" / "A.safetensors"
    assert paths.resolve("checkpoints", "sub/a.ckpt").is_file()


@pytest.mark.parametrize(
    "name",
    ["../secret.safetensors", "sub/../../secret.safetensors", "/etc/passwd", "sub\\a.ckpt", "a\x00b", ""],
)
def test_resolve_refuses_unsafe_names(roots: tuple[Path, Path], name: str) -> None:
    with pytest.raises(UnsafeModelName) as info:
        ModelPaths(roots).resolve("checkpoints", name)
    assert "checkpoints" in str(info.value)


def test_symlink_escaping_the_folder_is_refused_and_not_listed(
    roots: tuple[Path, Path], tmp_path: Path
) -> None:
    outside = _touch(tmp_path / "elsewhere" / "stolen.safetensors")
    folder = roots[0] / "checkpoints"
    os.symlink(outside, folder / "link.safetensors")
    os.symlink(outside.parent, folder / "linkdir")
    os.symlink(folder / "b.safetensors", folder / "inside.safetensors")
    paths = ModelPaths(roots)
    for name in ("link.safetensors", "linkdir/stolen.safetensors"):
        with pytest.raises(UnsafeModelName, match="outside"):
            paths.resolve("checkpoints", name)
    listed = paths.list_files("checkpoints")
    assert "link.safetensors" not in listed and "linkdir/stolen.safetensors" not in listed
    # A symlink that stays inside the folder is fine.
    assert "inside.safetensors" in listed
    assert paths.resolve("checkpoints", "inside.safetensors").is_file()


def test_missing_file_and_unknown_folder_errors_name_what_and_where(roots: tuple[Path, Path]) -> None:
    paths = ModelPaths(roots)
    with pytest.raises(ModelNotFound) as info:
        paths.resolve("checkpoints", "nope.safetensors")
    assert "nope.safetensors" in str(info.value) and str(roots[0]) in str(info.value)
    with pytest.raises(UnknownModelFolder, match="knitting"):
        paths.list_files("knitting")


def _age(*paths: Path) -> None:
    """Date directories back a minute: a listing trusts only directories not changed just now."""
    old = time.time() - 60
    for path in paths:
        os.utime(path, (old, old))


def test_listing_is_reused_until_a_directory_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyd.models import paths as paths_module

    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "sub").mkdir(parents=True)
    (checkpoints / "a.safetensors").write_bytes(b"x")
    (checkpoints / "sub" / "b.safetensors").write_bytes(b"x")
    pipe = checkpoints / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    _age(checkpoints, checkpoints / "sub", pipe)
    model_paths = ModelPaths((tmp_path,))
    walks = []
    real_walk = paths_module._walk_models
    monkeypatch.setattr(paths_module, "_walk_models", lambda *a: walks.append(1) or real_walk(*a))

    assert model_paths.list_files("checkpoints") == ["a.safetensors", "pipe", "sub/b.safetensors"]
    assert model_paths.list_files("checkpoints") == ["a.safetensors", "pipe", "sub/b.safetensors"]
    assert len(walks) == 1  # nothing changed: no second walk
    (checkpoints / "sub" / "c.safetensors").write_bytes(b"x")  # a new file, one level down
    assert model_paths.list_files("checkpoints") == ["a.safetensors", "pipe", "sub/b.safetensors",
                                                     "sub/c.safetensors"]
    _age(checkpoints, checkpoints / "sub", pipe)
    model_paths.list_files("checkpoints")  # walks again (sub/ had just changed), now trusts all
    walked = len(walks)
    model_paths.list_files("checkpoints")
    assert len(walks) == walked
    (pipe / "model_index.json").unlink()  # no longer a diffusers folder: only pipe/ changed
    assert model_paths.list_files("checkpoints") == ["a.safetensors", "sub/b.safetensors", "sub/c.safetensors"]
    (checkpoints / "a.safetensors").unlink()
    assert "a.safetensors" not in model_paths.list_files("checkpoints")
