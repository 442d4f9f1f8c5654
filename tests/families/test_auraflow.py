"""AuraFlow on a tiny random all-in-one checkpoint in ComfyUI's layout (`make-tiny --family
auraflow`): the stored MMDiT keys round-trip onto diffusers' AuraFlowTransformer2DModel, Pile-T5's
sequence (end 2, pad 1, 256 tokens, padding zeroed) and the canonical workflow
(comfyd/workflows/auraflow_api.json) through `comfyd run`. ComfyUI's own MMDiT holds the
transformer + sampler + VAE path in bench/auraflow_comfyui_parity.py (tests/fidelity/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from comfyd.cli import main
from comfyd.models.families import _auraflow_tiny
from comfyd.models.families import _auraflow_transformer as transformer

SIZE = 64
WORKFLOW = Path(__file__).resolve().parents[2] / "comfyd" / "workflows" / "auraflow_api.json"


@pytest.fixture(scope="module")
def auraflow_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("auraflow") / "models"
    assert main(["models", "make-tiny", str(root), "--family", "auraflow"]) == 0  # one file, no ControlNet
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == [_auraflow_tiny.NAMES["checkpoint"]]
    return root


def tiny_workflow() -> dict:
    graph = json.loads(WORKFLOW.read_text())
    graph["4"]["inputs"]["ckpt_name"] = Path(_auraflow_tiny.NAMES["checkpoint"]).name
    graph["5"]["inputs"].update(width=SIZE, height=SIZE)
    graph["3"]["inputs"].update(steps=2, sampler_name="euler")
    return graph


def test_stored_keys_are_comfyui_layout_and_config_reads_back(auraflow_models: Path) -> None:
    path = auraflow_models / _auraflow_tiny.NAMES["checkpoint"]
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    prefix = "model.diffusion_model."
    assert transformer.is_auraflow_transformer(keys, prefix)
    assert {
        f"{prefix}modF.1.weight",
        f"{prefix}single_layers.0.modCX.1.weight",
        f"{prefix}register_tokens",
    } <= keys
    assert (
        "text_encoders.pile_t5xl.transformer.encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
        in keys
    )
    from comfyd.models.header_probe import detect_family, is_supported, read_header

    assert detect_family(read_header(path)) == "auraflow" and is_supported("auraflow")
    config = transformer.infer_config(shapes, prefix)
    assert {k: config[k] for k in _auraflow_tiny.TINY_TRANSFORMER} == _auraflow_tiny.TINY_TRANSFORMER


def test_pile_t5_sequence(auraflow_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_tokens, tokenize_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=auraflow_models, home=tmp_path / "home"))
    loaded = manager.load_checkpoint(Path(_auraflow_tiny.NAMES["checkpoint"]).name)
    clip = loaded[1]
    assert clip.family == "auraflow"
    tokens = tokenize_text(clip, "a red fox")
    ids = [t for t, _ in tokens["pile_t5xl"][0]]
    assert len(ids) == 256 and ids.index(2) > 0 and set(ids[ids.index(2) + 1 :]) == {1}
    cond, pooled = encode_tokens(clip, tokens)
    assert cond.shape == (1, 256, _auraflow_tiny.TINY_PILE_T5["d_model"]) and pooled is None
    end = ids.index(2)
    assert cond[0, end + 1 :].abs().max() == 0 and cond[0, : end + 1].abs().min() >= 0
    assert cond[0, : end + 1].abs().sum() > 0


def test_canonical_workflow_through_comfyd_run(auraflow_models: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "auraflow.json"
    path.write_text(json.dumps(tiny_workflow()))
    out = tmp_path / "out"
    code = main(
        ["run", str(path), "--models-dir", str(auraflow_models), "--output-dir", str(out), "-q", "--json"]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    image = np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 5


def test_network_is_diffusers_with_comfyui_positions(auraflow_models: Path, tmp_path: Path) -> None:
    """comfyd's network is diffusers' transformer called with sigma as the timestep; only the patch
    embedding's position window differs, and only where ComfyUI's rule does: odd patch counts
    ((grid - n) // 2, diffusers grid // 2 - n // 2) and latents beyond the grid (interpolated)."""
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=auraflow_models, home=tmp_path / "home"))
    model = manager.load_checkpoint(Path(_auraflow_tiny.NAMES["checkpoint"]).name)[0]
    net = model.unet
    assert isinstance(net, transformer.AuraFlowNetwork)
    embed = net.transformer.pos_embed
    stock = type(embed).forward
    g = torch.Generator().manual_seed(0)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g)
    with torch.inference_mode():
        ours = net(x, torch.tensor([0.6]), context)[0]
        assert torch.equal(embed(x), stock(embed, x))  # 4x4 patches: both rules pick the same window
        odd = torch.randn(1, 4, 6, 6, generator=g)
        grid = embed.pos_embed.reshape(16, 16, -1)
        expected = stock(embed, odd) - grid[7:10, 7:10].reshape(1, 9, -1) + grid[6:9, 6:9].reshape(1, 9, -1)
        assert torch.allclose(embed(odd), expected, atol=1e-6)
        large = net(torch.randn(1, 4, 40, 36, generator=g), torch.tensor([0.6]), context)[0]
        embed.forward = stock.__get__(embed)
        theirs = net.transformer(hidden_states=x, encoder_hidden_states=context, timestep=torch.tensor([0.6]),
                                 return_dict=False)[0]  # fmt: skip
    assert torch.equal(ours, theirs) and ours.shape == x.shape
    assert large.shape == (1, 4, 40, 36) and torch.isfinite(large).all()


def test_tokenizer_beside_a_checkpoint_without_one(auraflow_models: Path, tmp_path: Path) -> None:
    """fal's checkpoints carry no SentencePiece model: one beside the file is read instead, and a
    checkpoint with neither is refused with a message naming where to put it."""
    from safetensors.torch import load_file, save_file

    from comfyd.models import umt5_encoder
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    state = load_file(str(auraflow_models / _auraflow_tiny.NAMES["checkpoint"]))
    spiece = state.pop(_auraflow_tiny.ENCODER_PREFIX + umt5_encoder.SPIECE_KEY)
    save_file(state, str(root / "checkpoints" / "aura.safetensors"))
    manager = ModelManager(Settings(models_dir=root, home=tmp_path / "home"))
    with pytest.raises(Exception, match=r"aura\.safetensors\.spiece\.model"):
        manager.load_checkpoint("aura.safetensors")
    (root / "checkpoints" / "aura.safetensors.spiece.model").write_bytes(spiece.numpy().tobytes())
    clip = ModelManager(Settings(models_dir=root, home=tmp_path / "home2")).load_checkpoint(
        "aura.safetensors"
    )[1]
    ids = clip.tokenizers["pile_t5xl"].encode("a red fox")
    assert ids[-1] == 2 and len(ids) > 2
