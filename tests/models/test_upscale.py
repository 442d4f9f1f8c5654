"""Upscale models: spandrel reads the tiny ESRGAN, ComfyUI's tiling and OOM retry, the nodes.

The pixel-exact comparison with ComfyUI is in tests/fidelity (upscale_cases.py); these check the
pieces that a render cannot: which files are refused and why, the DataParallel prefix, the
tile-halving retry, and the full runner path with a model folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from comfyd.models.tiny_upscale import esrgan_shapes, tiny_esrgan_state, write_tiny_esrgan
from comfyd.models.upscale import (
    UpscaleModelError,
    import_spandrel,
    load_upscale_model,
    read_state_dict,
    tiled_upscale,
    upscale_image,
)

try:
    import_spandrel()
except ImportError:
    pytest.skip("the upscale extra (spandrel) is not installed", allow_module_level=True)
CPU = torch.device("cpu")


def _load(path: Path, allow_pickle: bool = False):
    return load_upscale_model(path, "k", path.name, CPU, allow_pickle)


def test_spandrel_detects_the_tiny_esrgan_from_its_keys(tmp_path: Path) -> None:
    path = write_tiny_esrgan(tmp_path / "x2.safetensors", scale=2, seed=4)
    model = _load(path)
    spandrel = import_spandrel()
    assert isinstance(model.descriptor, spandrel.ImageModelDescriptor)
    assert model.descriptor.architecture.id == "ESRGAN"
    assert model.scale == 2
    # The original ESRGAN layout, as the early releases were saved.
    assert "model.1.sub.0.RDB1.conv1.0.weight" in read_state_dict(path, False)
    x4 = _load(write_tiny_esrgan(tmp_path / "x4.safetensors", scale=4, seed=4))
    assert x4.scale == 4


def test_the_written_layout_is_spandrels_rrdbnet() -> None:
    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    for scale, blocks in ((2, 1), (4, 2)):
        built = ESRGAN(num_filters=16, num_blocks=blocks, scale=scale).state_dict()
        assert {k: tuple(v.shape) for k, v in built.items()} == esrgan_shapes(scale, 16, blocks)


def test_the_writer_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_esrgan(tmp_path / "a.safetensors", seed=4).read_bytes()
    b = write_tiny_esrgan(tmp_path / "b.safetensors", seed=4).read_bytes()
    c = write_tiny_esrgan(tmp_path / "c.safetensors", seed=5).read_bytes()
    assert a == b != c


def test_a_dataparallel_swinir_prefix_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "swinir.safetensors"
    save_file({"module.layers.0.residual_group.blocks.0.norm1.weight": torch.ones(4),
               "module.conv_first.weight": torch.ones(1)}, str(path))
    assert set(read_state_dict(path, False)) == {"layers.0.residual_group.blocks.0.norm1.weight",
                                                  "conv_first.weight"}
    # Other files keep their "module." keys: ComfyUI strips only on this SwinIR marker.
    other = tmp_path / "other.safetensors"
    save_file({"module.conv.weight": torch.ones(1)}, str(other))
    assert set(read_state_dict(other, False)) == {"module.conv.weight"}


def test_files_that_are_not_upscale_models_are_refused_clearly(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.safetensors"
    save_file({"foo.weight": torch.ones(3)}, str(unknown))
    with pytest.raises(UpscaleModelError, match="not an upscale model architecture"):
        _load(unknown)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        _load(broken)
    state = tiny_esrgan_state(seed=1)
    state["model.1.sub.0.RDB1.conv2.0.weight"] = state["model.1.sub.0.RDB1.conv2.0.weight"][:, :5].contiguous()  # a known layout with a wrong shape
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong))
    with pytest.raises(UpscaleModelError):
        _load(wrong)
    pickle = tmp_path / "model.pth"
    torch.save(tiny_esrgan_state(seed=1), pickle)
    with pytest.raises(ValueError, match="pickle|arbitrary code"):
        _load(pickle)


def test_tiles_blend_to_what_the_model_gives_on_the_whole_picture(tmp_path: Path) -> None:
    """A pointwise model makes tiling invisible: only the feathered blend itself is tested."""
    pixels = torch.rand(1, 3, 40, 600, generator=torch.Generator().manual_seed(0))

    def double(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest") * 0.5

    whole = double(pixels)
    tiled = tiled_upscale(pixels, double, 2, tile=512, overlap=32)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)


def test_out_of_memory_halves_the_tile_and_retries() -> None:
    pixels = torch.rand(1, 3, 300, 300)
    seen: list[int] = []

    def picky(x: torch.Tensor) -> torch.Tensor:
        seen.append(max(x.shape[2:]))
        if max(x.shape[2:]) > 128:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    out = tiled_upscale(pixels, picky, 2)  # 512 fits 300 in one tile, 256 tiles, 128 works
    assert out.shape == (1, 3, 600, 600)
    assert seen[0] == 300 and max(seen[-4:]) <= 128
    torch.testing.assert_close(out, pixels.repeat_interleave(2, 2).repeat_interleave(2, 3), atol=1e-6, rtol=0)

    def never(x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError):
        tiled_upscale(pixels, never, 2)


def test_other_errors_are_not_retried() -> None:
    calls = []

    def bad(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        tiled_upscale(torch.rand(1, 3, 8, 8), bad, 2)
    assert len(calls) == 1


def test_upscale_image_is_nhwc_clamped_and_leaves_the_model_on_the_cpu(tmp_path: Path) -> None:
    model = _load(write_tiny_esrgan(tmp_path / "x2.safetensors", seed=4))
    image = torch.rand(2, 20, 30, 3, generator=torch.Generator().manual_seed(1))
    out = upscale_image(model, image)
    assert out.shape == (2, 40, 60, 3)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0.05  # the random model keeps a picture, not a flat field
    assert next(model.module.parameters()).device.type == "cpu"


def test_nodes_through_the_runner(tmp_path: Path) -> None:
    import comfyd.nodes  # noqa: F401  (registers the nodes)
    from comfyd.engine.errors import WorkflowValidationError
    from comfyd.engine.schema import REGISTRY
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    write_tiny_esrgan(tmp_path / "models" / "upscale_models" / "sub" / "tiny x2.safetensors", seed=4)
    (tmp_path / "input").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "input" / "src.png")
    runner = LocalRunner(Settings(
        device="cpu", output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
        models_dir=tmp_path / "models",
    ))
    declared = REGISTRY.object_info(runner.env)["UpscaleModelLoader"]["input"]["required"]["model_name"]
    assert declared[1]["options"] == ["sub/tiny x2.safetensors"]
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "src.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "sub/tiny x2.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "ImageScaleToTotalPixels",
              "inputs": {"image": ["3", 0], "upscale_method": "area", "megapixels": 0.01}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "up"}},
    }
    result = runner.run(workflow)
    assert result.ok, result.error
    with Image.open(result.paths[0]) as saved:
        # 0.01 "megapixels" is 10485 pixels; 24x20 scaled by sqrt(10485 / 480) keeps 6:5.
        assert saved.size == (round(20 * (10485 / 480) ** 0.5), round(24 * (10485 / 480) ** 0.5))

    missing = dict(workflow)
    missing["2"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "../escape.safetensors"}}
    with pytest.raises(WorkflowValidationError, match="value not in list"):
        runner.run(missing)


def test_progress_is_reported_per_tile_and_can_stop_the_upscale() -> None:
    from comfyd.models.upscale import tile_count

    pixels = torch.rand(2, 3, 40, 600)
    reports: list[tuple[int, int]] = []

    def double(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(2, 2).repeat_interleave(2, 3)

    tiled_upscale(pixels, double, 2, progress=lambda done, total: reports.append((done, total)))
    assert tile_count(40, 600, 512, 32) == 2 and tile_count(40, 500, 512, 32) == 1
    assert reports == [(1, 4), (2, 4), (3, 4), (4, 4)]

    class Stop(Exception):
        pass

    def stop_after_first(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        tiled_upscale(pixels, double, 2, progress=stop_after_first)


def test_a_file_spandrel_does_not_know_fails_the_job_with_a_clear_message(tmp_path: Path) -> None:
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    save_file({"foo.weight": torch.ones(3)}, str(folder / "mystery.safetensors"))
    (tmp_path / "input").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "input" / "src.png")
    runner = LocalRunner(Settings(
        device="cpu", output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
        models_dir=tmp_path / "models",
    ))
    result = runner.run({
        "1": {"class_type": "LoadImage", "inputs": {"image": "src.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "mystery.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    })
    assert not result.ok
    assert "mystery.safetensors: not an upscale model architecture spandrel knows" in str(result.error)
