"""ControlNet and T2I-Adapter files: every layout comfyd reads loads to the weights written, and
files it cannot read get a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models.control_detect import CONTROLNET, T2I_ADAPTER, UnknownControlLayout
from comfyd.models.control_model import load_control_model
from comfyd.models.devices import compute_plan
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import tiny_configs
from comfyd.models.tiny_control import random_controlnet_state, write_tiny_controlnet, write_tiny_t2i_adapter

from .conftest import FAMILIES, controlnet_name

PLAN = compute_plan("cpu", "auto")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("layout", "prefix"), [("original", "control_model."), ("original", ""), ("diffusers", "")])
def test_every_layout_loads_the_weights_written(tmp_path: Path, family: str, layout: str, prefix: str) -> None:
    unet = tiny_configs(family).unet
    path = write_tiny_controlnet(tmp_path / "cn.safetensors", unet, family, seed=3, layout=layout, prefix=prefix)
    handle = load_control_model(path, "key", path.name, PLAN)
    assert handle.kind == CONTROLNET and handle.family == family and handle.hint_channels == 3
    written = random_controlnet_state(unet, seed=3)
    loaded = handle.module.state_dict()
    assert set(loaded) == set(written)
    assert all(torch.equal(loaded[k], written[k].float()) for k in written)
    # The ControlNet has the UNet's down half: same levels, blocks, depths and vector input.
    config = handle.module.config
    assert list(config.block_out_channels) == list(unet["block_out_channels"])
    assert config.layers_per_block == unet["layers_per_block"]
    assert config.addition_embed_type == unet.get("addition_embed_type")


def test_shuffle_files_pool_their_residuals(tmp_path: Path) -> None:
    unet = tiny_configs("sd1").unet
    path = write_tiny_controlnet(tmp_path / "control_v11e_sd15_shuffle.safetensors", unet, "sd1")
    assert load_control_model(path, "k", path.name, PLAN).global_average_pooling
    other = write_tiny_controlnet(tmp_path / "control_v11p_sd15_canny.safetensors", unet, "sd1")
    assert not load_control_model(other, "k", other.name, PLAN).global_average_pooling


@pytest.mark.parametrize("layout", ["original", "diffusers"])
def test_t2i_adapter_loads_through_the_controlnet_loader(tmp_path: Path, layout: str) -> None:
    path = write_tiny_t2i_adapter(tmp_path / "t2i.safetensors", seed=1, layout=layout)
    handle = load_control_model(path, "k", path.name, PLAN)
    assert handle.kind == T2I_ADAPTER and handle.hint_channels == 3
    features = handle.module(torch.rand(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2), (1, 128, 1, 1)]


def test_unknown_layouts_are_refused_clearly(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    save_file({"encoder.down.0.weight": torch.zeros(2, 2)}, str(junk))
    with pytest.raises(UnknownControlLayout, match="not a ControlNet or T2I-Adapter layout.*encoder"):
        load_control_model(junk, "k", junk.name, PLAN)
    light = tmp_path / "light.safetensors"
    save_file({"body.0.in_conv.weight": torch.zeros(2, 2)}, str(light))
    with pytest.raises(UnknownControlLayout, match="light T2I-Adapter"):
        load_control_model(light, "k", light.name, PLAN)


def test_manager_lists_both_folders_and_reports_missing_files(cn_manager: ModelManager, cn_root: Path) -> None:
    names = cn_manager.list_files("controlnet")
    assert controlnet_name("sd1") in names and controlnet_name("sdxl", "diffusers") in names
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        cn_manager.load_control_model("nope.safetensors")
    handle = cn_manager.load_control_model(controlnet_name("sd2"))
    assert handle.family == "sd2" and cn_manager.load_control_model(controlnet_name("sd2")) is handle


def test_t2i_adapter_folder_is_listed(tmp_path: Path) -> None:
    from comfyd.settings import Settings

    write_tiny_t2i_adapter(tmp_path / "t2i_adapter" / "adapter.safetensors")
    manager = ModelManager(Settings(models_dir=tmp_path, output_dir=tmp_path / "o", temp_dir=tmp_path / "t",
                                    input_dir=tmp_path / "i", device="cpu"))
    assert manager.list_files("controlnet") == ["adapter.safetensors"]
    assert manager.load_control_model("adapter.safetensors").kind == T2I_ADAPTER


def test_diff_controlnet_adds_the_model_weights(cn_manager: ModelManager, tmp_path: Path) -> None:
    model, _, _ = cn_manager.load_checkpoint("comfyd-tiny-sd1.safetensors")
    unet_state = model.unet.state_dict()
    config = tiny_configs("sd1").unet
    path = write_tiny_controlnet(tmp_path / "diff.safetensors", config, "sd1", seed=4, difference_from=unet_state)
    with_model = load_control_model(path, "k", path.name, PLAN, base_unet=model.unet).module.state_dict()
    alone = load_control_model(path, "k", path.name, PLAN).module.state_dict()
    written = random_controlnet_state(config, seed=4)
    name = "down_blocks.0.resnets.0.conv1.weight"
    assert not torch.equal(alone[name], with_model[name])
    assert torch.allclose(with_model[name], written[name].float(), atol=2e-3)
    # Tensors only the ControlNet has are not touched.
    assert torch.equal(with_model["controlnet_mid_block.weight"], written["controlnet_mid_block.weight"].float())
