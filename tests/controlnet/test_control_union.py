"""Union ControlNets (ControlNet++) on tiny files: loading, ComfyUI's union math and
SetUnionControlNetType reaching the model. tests/fidelity holds a parity-size one to ComfyUI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models.control_detect import UnknownControlLayout
from comfyd.models.control_link import ControlLink
from comfyd.models.control_model import load_control_model
from comfyd.models.control_union import fuse_hint, type_embedding, union_controlnet_forward
from comfyd.models.devices import compute_plan
from comfyd.models.tiny import tiny_configs
from comfyd.models.tiny_control import random_controlnet_state, random_union_state, write_tiny_controlnet

PLAN = compute_plan("cpu", "auto")
HINT = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 3, 64, 64)


def _union(tmp_path: Path, family: str = "sd1", types: int = 8, layout: str = "diffusers"):
    unet = tiny_configs(family).unet
    path = write_tiny_controlnet(tmp_path / f"union-{family}.safetensors", unet, family, seed=4, layout=layout,
                                 union_types=types)
    return load_control_model(path, "k", path.name, PLAN)


def _inputs(family: str):
    unet = tiny_configs(family).unet
    torch.manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8), torch.full((1,), 500.0)
    context = torch.randn(1, 5, unet["cross_attention_dim"])
    added = None
    if unet.get("addition_embed_type"):
        pooled = unet["projection_class_embeddings_input_dim"] - 6 * unet["addition_time_embed_dim"]
        added = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    return x, t, context, added


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_union_file_loads_every_tensor_written(tmp_path: Path, family: str) -> None:
    handle = _union(tmp_path, family)
    assert handle.union_types == 8
    unet = tiny_configs(family).unet
    written = {**random_controlnet_state(unet, seed=4), **random_union_state(unet, 4, 8)}
    loaded = handle.module.state_dict()
    assert set(loaded) == set(written)
    assert all(torch.equal(loaded[k], written[k].float()) for k in written)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_without_its_type_embedding_a_union_model_on_auto_is_a_plain_controlnet(tmp_path: Path, family: str) -> None:
    """The union forward reruns the ControlNet's own blocks: with the control-type embedding
    zeroed and no type set, it must give what diffusers' ControlNetModel gives."""
    module = _union(tmp_path, family).module
    x, t, context, added = _inputs(family)
    with torch.no_grad():
        union_down, union_mid = union_controlnet_forward(module, x, t, context, HINT, [], added)
        module.control_add_embedding.linear_2.weight.zero_()
        module.control_add_embedding.linear_2.bias.zero_()
        plain_down_union, plain_mid_union = union_controlnet_forward(module, x, t, context, HINT, [], added)
        down, mid = module(x, t, encoder_hidden_states=context, controlnet_cond=HINT, added_cond_kwargs=added,
                           return_dict=False)
    assert torch.allclose(plain_mid_union, mid, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain_down_union, down, strict=True))
    # The type embedding is always added, "auto" included (ComfyUI adds an all-zero one-hot's).
    assert not torch.allclose(union_mid, mid, atol=1e-3)


def test_type_embedding_is_the_mlp_of_the_one_hot_sinusoids(tmp_path: Path) -> None:
    module = _union(tmp_path).module
    embed = module.control_add_embedding
    one_hot = torch.zeros(8)
    one_hot[2] = 1.0
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(128) / 128)
    args = one_hot[:, None] * freqs[None]
    sinusoids = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(1, -1)
    expected = embed.linear_2(torch.nn.functional.silu(embed.linear_1(sinusoids)))
    with torch.no_grad():
        assert torch.allclose(type_embedding(module, [2], torch.float32, torch.device("cpu")), expected, atol=1e-6)


def test_a_set_type_adds_the_transformed_task_token_to_the_hint_features(tmp_path: Path) -> None:
    module = _union(tmp_path).module
    features = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        fused = fuse_hint(module, features, [5])
        # One token per sample: attention over one token is its value projection, out-projected.
        token = features.mean(dim=(2, 3)) + module.task_embedding[5]
        layer = module.transformer_layes[0]
        width = token.shape[1]
        normed = layer.ln_1(token)
        value = normed @ layer.attn.in_proj_weight[2 * width:].T + layer.attn.in_proj_bias[2 * width:]
        token = token + layer.attn.out_proj(value)
        token = token + layer.mlp(layer.ln_2(token))
        alpha = module.spatial_ch_projs(token)
    assert torch.allclose(fused, features + alpha[:, :, None, None], atol=1e-5)


def test_set_union_type_reaches_the_model_and_unknown_types_are_refused(tmp_path: Path) -> None:
    handle = _union(tmp_path, types=6)
    x, t, context, _ = _inputs("sd1")
    link = ControlLink(handle).with_hint(HINT.movedim(1, -1), 0.5, (0.0, 1.0), None)
    results = {}
    with torch.no_grad():
        for name, types in (("auto", []), ("depth", [1]), ("canny", [3])):
            run = link.with_extra_arg("control_type", types).for_run(lambda p: 1e9 if p == 0 else 0.0)
            results[name] = run(x, t, 1.0, context, None, 1)
        down, mid = union_controlnet_forward(handle.module, x, t, context, HINT, [1], None)
    assert torch.allclose(results["depth"].middle[0], mid * 0.5, atol=1e-6)
    assert not torch.allclose(results["depth"].middle[0], results["canny"].middle[0], atol=1e-4)
    assert not torch.allclose(results["depth"].middle[0], results["auto"].middle[0], atol=1e-4)
    # No SetUnionControlNetType at all is "auto", as in ComfyUI.
    plain = link.for_run(lambda p: 1e9 if p == 0 else 0.0)(x, t, 1.0, context, None, 1)
    assert torch.equal(plain.middle[0], results["auto"].middle[0])
    tile = link.with_extra_arg("control_type", [6]).for_run(lambda p: 1e9 if p == 0 else 0.0)
    with pytest.raises(ValueError, match=r"tile \(6\) is out of range.*6 control types"):
        tile(x, t, 1.0, context, None, 1)


def test_union_parts_in_the_original_layout_are_ignored_as_comfyui_ignores_them(tmp_path: Path) -> None:
    unet = tiny_configs("sd1").unet
    plain = write_tiny_controlnet(tmp_path / "plain.safetensors", unet, "sd1", seed=4)
    path = tmp_path / "original-union.safetensors"
    save_file({**load_file(str(plain)), **random_union_state(unet, 4, 8)}, str(path))
    handle = load_control_model(path, "k", path.name, PLAN)
    assert handle.union_types == 0 and not hasattr(handle.module, "task_embedding")


def test_broken_union_parts_are_refused_clearly(tmp_path: Path) -> None:
    unet = tiny_configs("sd1").unet
    written = write_tiny_controlnet(tmp_path / "u.safetensors", unet, "sd1", seed=4, layout="diffusers",
                                    union_types=8)
    state = load_file(str(written))
    del state["spatial_ch_projs.weight"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    with pytest.raises(UnknownControlLayout, match="union ControlNet needs.*spatial_ch_projs"):
        load_control_model(broken, "k", broken.name, PLAN)


def test_a_diffusers_controlnet_union_model_state_loads(tmp_path: Path) -> None:
    """diffusers' ControlNetUnionModel saves the names ComfyUI reads: its files load as they are."""
    import inspect

    from diffusers import ControlNetUnionModel

    from comfyd.models.tiny_control import controlnet_config

    accepted = set(inspect.signature(ControlNetUnionModel.__init__).parameters)
    config = {k: v for k, v in controlnet_config(tiny_configs("sd1").unet).items() if k in accepted}
    torch.manual_seed(0)
    model = ControlNetUnionModel(**config, num_control_type=8, addition_time_embed_dim=256, num_trans_channel=32,
                                 num_trans_head=8, num_proj_channel=32)
    path = tmp_path / "diffusers-union.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    handle = load_control_model(path, "k", path.name, PLAN)
    assert handle.union_types == 8
    loaded = handle.module.state_dict()
    assert set(loaded) == set(model.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
