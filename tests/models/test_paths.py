"""Model folders in ComfyUI's layout: listing across roots and safe name resolution."""

from __future__ import annotations

import os
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
