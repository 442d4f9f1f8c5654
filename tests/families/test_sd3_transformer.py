"""The SD3 / SD3.5 MMDiT in Stability's layout (ComfyUI's `joint_blocks.N.x_block...` keys) loads
onto diffusers' SD3Transformer2DModel: a random tiny MMDiT written in that layout reads back with
the same config and computes the same output, and diffusers' own single-file converter turns the
written keys back into the same parameters (an independent check of the layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models.families import _sd3_transformer as mmdit
from comfyd.models.keymap import to_original
from comfyd.models.loader import materialize
from comfyd.models.tensorfile import TensorFile

PREFIX = "model.diffusion_model."
# SD3.5-medium-like: RMS q/k norms and one dual-attention block; 64-wide heads, one per block.
CONFIG = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 64,
    "num_attention_heads": 2, "joint_attention_dim": 32, "caption_projection_dim": 128,
    "pooled_projection_dim": 48, "out_channels": 16, "pos_embed_max_size": 16,
    "dual_attention_layers": (0,), "qk_norm": "rms_norm",
}  # fmt: skip


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    net = SD3Transformer2DModel.from_config(CONFIG).eval()
    with torch.no_grad():  # diffusers zero-inits some modulations: make every tensor matter
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    state = to_original(net.state_dict(), mmdit.SD3Translator(CONFIG, PREFIX))
    path = tmp_path_factory.mktemp("sd3") / "tiny-sd3.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return net, path


def test_layout_matches_diffusers_single_file_converter(stored: tuple[torch.nn.Module, Path]) -> None:
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    net, path = stored
    tf = TensorFile(path)
    checkpoint = {k: tf.get(k) for k in tf.keys()}
    assert mmdit.is_sd3_transformer(set(checkpoint), PREFIX)
    assert "joint_blocks.1.context_block.mlp.fc1.weight" not in {k[len(PREFIX) :] for k in checkpoint}
    converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(checkpoint))
    expected = net.state_dict()
    assert sorted(converted) == sorted(expected)
    for name, tensor in converted.items():
        assert torch.equal(tensor, expected[name]), name


def test_loads_with_inferred_config_and_same_output(stored: tuple[torch.nn.Module, Path]) -> None:
    net, path = stored
    tf = TensorFile(path)
    config = mmdit.infer_config(tf.shapes(), PREFIX)
    assert config == CONFIG
    loaded = materialize(
        mmdit.empty_transformer(config), mmdit.SD3Translator(config, PREFIX), tf,
        torch.device("cpu"), torch.float32, what="SD3 transformer",
    )  # fmt: skip
    x, context, pooled = torch.randn(1, 16, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 48)
    t = torch.tensor([500.0])
    inputs = {
        "hidden_states": x,
        "encoder_hidden_states": context,
        "pooled_projections": pooled,
        "timestep": t,
    }
    with torch.inference_mode():
        ours, theirs = loaded(**inputs)[0], net(**inputs)[0]
    assert ours.shape == x.shape and torch.equal(ours, theirs)


def test_network_call_pads_odd_sizes_and_needs_pooled(stored: tuple[torch.nn.Module, Path]) -> None:
    net, _ = stored
    wrapped = mmdit.SD3Network(net)
    context, pooled, t = torch.randn(1, 5, 32), torch.randn(1, 48), torch.tensor([750.0])
    with torch.inference_mode():
        for height, width in ((8, 8), (7, 9)):
            x = torch.randn(1, 16, height, width)
            ours = wrapped(x, t, context, {"pooled": pooled})[0]
            padded = torch.nn.functional.pad(x, (0, width % 2, 0, height % 2), mode="circular")
            inputs = {"encoder_hidden_states": context, "pooled_projections": pooled, "timestep": t}
            theirs = net(hidden_states=padded, **inputs)[0][:, :, :height, :width]
            assert ours.shape == x.shape and torch.equal(ours, theirs)
        with pytest.raises(ValueError, match="no pooled_output"):
            wrapped(x, t, context, {})
