"""HypernetworkLoader: the key/value inputs of every transformer-block attention pass through the
file's layers (the formula written out here), stacking with LoRAs; everything restores exactly;
pickles need COMFYD_ALLOW_PICKLE. ComfyUI's own render is tests/fidelity's
hypernetwork_after_lora case."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from comfyd.models import hypernetwork
from comfyd.models.hypernetwork import HypernetworkAttnProcessor, HypernetworkError
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny_lora
from comfyd.models.tiny_hypernetwork import make_tiny_hypernetwork
from comfyd.nodes.loaders.hypernetwork import HypernetworkLoader

from .conftest import make_settings, node_context, share_checkpoint, single_name


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, models_root: Path) -> Path:
    root = tmp_path_factory.mktemp("hypernetwork-models")
    sd1 = share_checkpoint(models_root, root, single_name("sd1"))
    make_tiny_lora(root / "loras", sd1, "kohya", seed=1, name="plain.safetensors")
    # The tiny UNet's widths (32, 64) and its context width (32).
    make_tiny_hypernetwork(root / "hypernetworks" / "tiny.pt", (32, 64), seed=1)
    make_tiny_hypernetwork(root / "hypernetworks" / "other.pt", (32,), seed=2, activation="tanh", layer_norm=False)
    make_tiny_hypernetwork(root / "hypernetworks" / "odd.pt", (32,), seed=3, activation="gelu")
    return root


@pytest.fixture(scope="module")
def mm(root: Path) -> ModelManager:
    return ModelManager(make_settings(root, device="cpu", allow_pickle=True))


@pytest.fixture(scope="module")
def model(mm: ModelManager):
    return mm.load_checkpoint("comfyd-tiny-sd1.safetensors")[0]


def _run(unet, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn((2, 4, 8, 8), generator=g)
    context = torch.randn((2, 5, unet.config.cross_attention_dim), generator=g)
    with torch.no_grad():
        return unet(sample, torch.tensor([500.0, 20.0]), encoder_hidden_states=context).sample


def test_the_processor_at_strength_zero_is_the_plain_attention(mm: ModelManager, model) -> None:
    net = hypernetwork.load_hypernetwork(mm.resolve("hypernetworks", "tiny.pt"), allow_pickle=True)
    base = _run(model.unet)
    saved = hypernetwork.install(model.unet, [(net, 0.0)])
    try:
        assert sum(isinstance(p, HypernetworkAttnProcessor) for p in model.unet.attn_processors.values()) > 0
        torch.testing.assert_close(_run(model.unet), base, rtol=1e-5, atol=1e-5)
    finally:
        hypernetwork.restore(model.unet, saved)


def test_one_attention_by_the_formula(mm: ModelManager, model) -> None:
    net = hypernetwork.load_hypernetwork(mm.resolve("hypernetworks", "tiny.pt"), allow_pickle=True)
    attn = next(m for n, m in model.unet.named_modules() if n.endswith("transformer_blocks.0.attn1"))
    x = torch.randn((2, 16, attn.to_q.in_features), generator=torch.Generator().manual_seed(3))
    strength = 0.6
    with torch.no_grad():
        got = HypernetworkAttnProcessor([(net.layers, strength)], None)(attn, x)
        k_net, v_net = net.layers[x.shape[-1]]
        q, k, v = attn.to_q(x), attn.to_k(x + k_net(x) * strength), attn.to_v(x + v_net(x) * strength)
        heads, d = attn.heads, q.shape[-1] // attn.heads
        split = [t.reshape(2, -1, heads, d).permute(0, 2, 1, 3) for t in (q, k, v)]
        weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(d), dim=-1)
        want = attn.to_out[0]((weights @ split[2]).permute(0, 2, 1, 3).reshape(2, -1, heads * d))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The self-attention's queries are left alone: at strength 0 nothing changes.
    with torch.no_grad():
        plain = HypernetworkAttnProcessor([(net.layers, 0.0)], None)(attn, x)
        assert not torch.allclose(plain, got)


def test_the_node_patches_while_held_stacks_with_a_lora_and_restores(mm: ModelManager, model) -> None:
    ctx = node_context(mm, "HypernetworkLoader")
    base = _run(model.unet)
    processors = dict(model.unet.attn_processors)
    weights = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with_lora = model.with_loras(mm.lora_patch("plain.safetensors", 0.5))
    (patched,) = HypernetworkLoader().run(ctx, with_lora, "tiny.pt", 0.8)
    (twice,) = HypernetworkLoader().run(ctx, patched, "other.pt", -1.5)
    outputs = {}
    for label, handle in (("lora", with_lora), ("hyper", patched), ("twice", twice)):
        with handle.patched() as unet:
            outputs[label] = _run(unet)
    assert not torch.allclose(outputs["lora"], base)
    assert not torch.allclose(outputs["hyper"], outputs["lora"])
    assert not torch.allclose(outputs["twice"], outputs["hyper"])
    # Back exactly: the same processor objects, the same weights, the same output.
    assert dict(model.unet.attn_processors) == processors
    assert all(torch.equal(v, weights[k]) for k, v in model.unet.state_dict().items())
    assert torch.equal(_run(model.unet), base)


def test_pickles_need_allowing_and_unknown_activations_leave_the_model(root: Path, model) -> None:
    strict = ModelManager(make_settings(root, device="cpu"))
    with pytest.raises(HypernetworkError, match="COMFYD_ALLOW_PICKLE"):
        strict.hypernetwork_patch("tiny.pt", 1.0)
    relaxed = ModelManager(make_settings(root, device="cpu", allow_pickle=True))
    (same,) = HypernetworkLoader().run(node_context(relaxed, "HypernetworkLoader"), model, "odd.pt", 1.0)
    assert same is model
