"""LoadImage's names, as ComfyUI's VALIDATE_INPUTS accepts them: subfolders, `[output]` /
`[input]` / `[temp]` annotations, ComfyUI's error body for missing files, and no way out.

`comfyui_load_image_validation.json` holds what ComfyUI 0.3.64's `validate_prompt` answered for
the same names and files (see its `captured_with`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from comfyd.engine.context import NodeEnvironment
from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.graph import parse_workflow
from comfyd.engine.schema import REGISTRY
from comfyd.engine.validate import validate_workflow
from comfyd.nodes.image.save_load import LoadImage, check_image_name
from comfyd.safepath import UnsafePathError

CAPTURED = json.loads((Path(__file__).parent / "comfyui_load_image_validation.json").read_text())


def _workflow(name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def _validate(env: NodeEnvironment, name: str) -> dict[str, Any] | None:
    """None when the workflow validates, else the 400 body (through JSON, as HTTP sends it)."""
    try:
        validate_workflow(parse_workflow(_workflow(name)), REGISTRY, env)
    except WorkflowValidationError as exc:
        return json.loads(json.dumps(exc.body))
    return None


def _image_error(body: dict[str, Any] | None) -> dict[str, Any]:
    assert body is not None and body["error"]["type"] == "prompt_outputs_failed_validation"
    [error] = body["node_errors"]["1"]["errors"]
    return error


@pytest.fixture
def files(env: NodeEnvironment) -> NodeEnvironment:
    """The files of the capture: input/top.png, input/sub/x.png, output/made_00001_.png, temp/t.png."""
    (env.input_dir / "sub").mkdir()
    Image.new("RGB", (2, 2), (255, 0, 0)).save(env.input_dir / "top.png")
    Image.new("RGB", (3, 2), (0, 255, 0)).save(env.input_dir / "sub" / "x.png")
    Image.new("RGB", (4, 2), (0, 0, 255)).save(env.output_dir / "made_00001_.png")
    Image.new("RGB", (5, 2), (9, 9, 9)).save(env.temp_dir / "t.png")
    return env


@pytest.mark.parametrize("name", sorted(CAPTURED["responses"]))
def test_validation_matches_captured_comfyui(files: NodeEnvironment, name: str) -> None:
    assert _validate(files, name) == CAPTURED["responses"][name]


def test_choice_list_matches_comfyui_top_level_images_only(files: NodeEnvironment) -> None:
    info = REGISTRY.get("LoadImage").schema.object_info(files)
    assert info["input"]["required"] == CAPTURED["input_types"]["required"]


@pytest.mark.parametrize(
    ("name", "width"),
    [
        ("top.png", 2),
        ("top.png [input]", 2),
        ("sub/x.png", 3),
        ("./sub//x.png", 3),
        ("sub/x.png [input]", 3),
        ("made_00001_.png [output]", 4),
        ("t.png [temp]", 5),
    ],
)
def test_accepted_names_load_the_right_file(files: NodeEnvironment, make_ctx, name: str, width: int) -> None:
    assert _validate(files, name) is None
    image, _mask = LoadImage().run(make_ctx("LoadImage"), image=name)
    assert image.shape == (1, 2, width, 3)


def test_names_the_comfyui_frontend_sends(env: NodeEnvironment) -> None:
    # Paste uploads to input/pasted; the mask editor to input/clipspace and names it "[input]".
    for sub, name in (("pasted", "image.png"), ("clipspace", "clipspace-mask-123.png")):
        (env.input_dir / sub).mkdir()
        Image.new("RGBA", (2, 2)).save(env.input_dir / sub / name)
    assert _validate(env, "pasted/image.png") is None
    assert _validate(env, "clipspace/clipspace-mask-123.png [input]") is None


@pytest.mark.parametrize("name", ["nope.png", "sub/nope.png", "nope.png [temp]", "top.png [output]", "sub"])
def test_missing_files_and_folders_are_comfyui_custom_validation_errors(files: NodeEnvironment, name: str) -> None:
    # "sub" is a folder: ComfyUI lets it through validation and fails when the node runs.
    assert _image_error(_validate(files, name)) == {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": f"image - Invalid image file: {name}",
        "extra_info": {"input_name": "image"},
    }


def _escape_attempts(env: NodeEnvironment) -> list[str]:
    """Names that would reach root/secret.png (beside the three folders) if they were followed."""
    root = env.input_dir.parent
    Image.new("RGB", (2, 2)).save(root / "secret.png")
    (root / "elsewhere").mkdir()
    Image.new("RGB", (2, 2)).save(root / "elsewhere" / "secret.png")
    os.symlink(root / "secret.png", env.input_dir / "link.png")
    os.symlink(root / "elsewhere", env.input_dir / "linkdir")
    return [
        "../secret.png",
        str(root / "secret.png"),
        "sub/../../secret.png",
        "../secret.png [output]",
        "../input/../secret.png [temp]",
        "link.png",
        "linkdir/secret.png",
        "%2e%2e/secret.png",
        "..\\secret.png",
    ]


def test_paths_out_of_the_folders_are_refused(files: NodeEnvironment, make_ctx) -> None:
    for name in _escape_attempts(files):
        error = _image_error(_validate(files, name))
        assert error["type"] == "custom_validation_failed", name
        assert error["details"].startswith(f"image - Invalid image file: {name} ("), error
        with pytest.raises(UnsafePathError):
            LoadImage().run(make_ctx("LoadImage"), image=name)


def test_a_symlink_inside_the_folder_is_followed(files: NodeEnvironment) -> None:
    os.symlink(files.input_dir / "sub" / "x.png", files.input_dir / "alias.png")
    assert check_image_name(files, "alias.png") is None


def test_non_string_and_no_environment(files: NodeEnvironment) -> None:
    assert check_image_name(files, 7) == "Invalid image file: 7"
    assert check_image_name(None, "top.png") == "Invalid image file: top.png"


def test_a_linked_image_name_is_left_to_the_node(files: NodeEnvironment) -> None:
    # A COMBO-typed link (ComfyUI's primitive nodes) carries the value only at run time.
    workflow = _workflow("unused")
    workflow["1"]["inputs"]["image"] = ["3", 0]
    workflow["3"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}}
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(parse_workflow(workflow), REGISTRY, files)
    # The link's type is checked; the name is not (no custom_validation_failed).
    assert [e["type"] for e in info.value.body["node_errors"]["1"]["errors"]] == ["return_type_mismatch"]


def test_save_image_output_read_back_with_output_annotation(tmp_path: Path) -> None:
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    settings = Settings(
        output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
        models_dir=tmp_path / "models",
    )
    (tmp_path / "input").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "input" / "src.png")
    runner = LocalRunner(settings)
    save = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "src.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "made/fox"}},
    }
    first = runner.run(save)
    assert first.ok, first.error
    [saved] = first.images
    assert (saved.subfolder, saved.filename) == ("made", "fox_00001_.png")

    again = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"{saved.subfolder}/{saved.filename} [output]"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}},
    }
    second = runner.run(again)
    assert second.ok, second.error
    with Image.open(second.paths[0]) as copy:
        np.testing.assert_array_equal(np.asarray(copy), pixels)
