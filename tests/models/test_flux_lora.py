"""LoRAs on Flux (kohya BFL names, BFL names under diffusion_model., diffusers / ai-toolkit names)
patch comfyd's diffusers FluxTransformer2DModel as ComfyUI patches the BFL-layout weights: the
expected weights are computed in the BFL layout and mapped through the same key map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from comfyd.models.families import _flux_tiny
from comfyd.models.families._flux_transformer import FluxTranslator
from comfyd.models.header_probe import detect_family, is_supported, read_header
from comfyd.models.keymap import ROWS, SWAP_HALVES, apply_op
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny
from tests.families.flux_reference import tiny_workflow

from .conftest import make_settings

SCHNELL = Path(_flux_tiny.NAMES["schnell"]).name
STRENGTH = 0.8
RANK = 4
# BFL weights a LoRA changes: fused q/k/v, fused q/k/v/mlp, plain, and the swapped final modulation.
BFL_LAYERS = (
    "double_blocks.0.img_attn.qkv",
    "double_blocks.0.txt_attn.qkv",
    "double_blocks.0.img_mlp.0",
    "single_blocks.0.linear1",
    "single_blocks.1.linear2",
    "final_layer.adaLN_modulation.1",
)
DIFFUSERS_LAYERS = (
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.ff.net.0.proj",
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.1.attn.to_q",
    "norm_out.linear",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux-lora")
    make_tiny(root, family="flux")
    return root


@pytest.fixture(scope="module")
def stored(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / _flux_tiny.NAMES["schnell"])


@pytest.fixture(scope="module")
def mm(root: Path) -> ModelManager:
    return ModelManager(make_settings(root, device="cpu"))


def _pair(out_dim: int, in_dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    down = torch.randn(RANK, in_dim, generator=gen) * 0.1
    up = torch.randn(out_dim, RANK, generator=gen) * 0.1
    return down, up, torch.tensor(2.0)


def _write_lora(root: Path, fmt: str, stored: dict[str, torch.Tensor], config: dict, seed: int):
    """The LoRA file of `fmt` and its change of each BFL weight (in the BFL layout, unscaled)."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    if fmt == "diffusers":
        translator = FluxTranslator(config)
        for layer in DIFFUSERS_LAYERS:
            source = translator.source(f"{layer}.weight")
            assert source is not None
            base = stored[source.key]
            rows = source.stop - source.start if source.op == ROWS else base.shape[0]
            down, up, alpha = _pair(rows, base.shape[1], gen)
            tensors |= {f"transformer.{layer}.lora_A.weight": down, f"transformer.{layer}.lora_B.weight": up,
                        f"transformer.{layer}.alpha": alpha}  # fmt: skip
            delta = up @ down * (float(alpha) / RANK)
            full = deltas.setdefault(source.key, torch.zeros(base.shape))
            if source.op == ROWS:
                full[source.start : source.stop] += delta
            elif source.op == SWAP_HALVES:
                full += torch.cat(list(reversed(delta.chunk(2, dim=0))), dim=0)
            else:
                full += delta
    else:
        for layer in BFL_LAYERS:
            base = stored[f"{layer}.weight"]
            down, up, alpha = _pair(base.shape[0], base.shape[1], gen)
            name = f"lora_unet_{layer.replace('.', '_')}" if fmt == "kohya" else f"diffusion_model.{layer}"
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": alpha}
            deltas[f"{layer}.weight"] = up @ down * (float(alpha) / RANK)
    (root / "loras").mkdir(exist_ok=True)
    save_file(tensors, str(root / "loras" / f"flux-{fmt}.safetensors"))
    return deltas


@pytest.mark.parametrize("fmt", ["kohya", "bfl", "diffusers"])
def test_each_format_patches_the_bfl_weights_through_the_key_map(fmt, root, stored, mm: ModelManager) -> None:
    model = mm.load_diffusion_model(SCHNELL)
    network = model.unet
    config = dict(network.config)
    deltas = _write_lora(root, fmt, stored, config, seed=len(fmt))
    translator = FluxTranslator(config)
    base = {k: v.detach().clone() for k, v in network.state_dict().items()}
    with model.with_loras(mm.lora_patch(f"flux-{fmt}.safetensors", STRENGTH)).patched() as patched:
        after = {k: v.detach().clone() for k, v in patched.state_dict().items()}
    changed = set()
    for name, value in after.items():
        source = translator.source(name.removeprefix("transformer."))
        assert source is not None, name
        delta = deltas.get(source.key)
        if delta is None:
            assert torch.equal(value, base[name]), name
            continue
        want = apply_op(stored[source.key].float() + STRENGTH * delta, source)
        torch.testing.assert_close(value, want, rtol=0, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        if not torch.equal(value, base[name]):
            changed.add(name)
    # A fused BFL weight's LoRA changes all its diffusers pieces; a diffusers LoRA only its own.
    want = {f"transformer.{layer}.weight" for layer in DIFFUSERS_LAYERS} if fmt == "diffusers" else None
    assert len(changed) == 13 if want is None else changed == want, sorted(changed)
    # Restored bit for bit.
    assert all(torch.equal(v, base[k]) for k, v in network.state_dict().items())
    # `comfyd check` counts the file as a Flux LoRA it can run.
    header = read_header(root / "loras" / f"flux-{fmt}.safetensors")
    assert detect_family(header) == "flux_lora" and is_supported("flux_lora")


def _run(root: Path, graph: dict, out: Path) -> np.ndarray:
    from comfyd.cli import main

    path = out / "workflow.json"
    out.mkdir(parents=True)
    path.write_text(json.dumps(graph))
    assert main(["run", str(path), "--models-dir", str(root), "--output-dir", str(out), "--device", "cpu", "-q"]) == 0
    (png,) = sorted(out.rglob("*.png"))
    return np.asarray(Image.open(png).convert("RGB")).astype(np.int16)


def test_lora_loader_model_only_changes_the_image_deterministically(root, stored, mm, tmp_path: Path) -> None:
    config = dict(mm.load_diffusion_model(SCHNELL).unet.config)
    _write_lora(root, "kohya", stored, config, seed=3)
    plain = tiny_workflow("schnell")
    graph = json.loads(json.dumps(plain))
    graph["90"] = {"class_type": "LoraLoaderModelOnly",
                   "inputs": {"model": ["12", 0], "lora_name": "flux-kohya.safetensors", "strength_model": 1.0}}  # fmt: skip
    graph["3"]["inputs"]["model"] = ["90", 0]
    without = _run(root, plain, tmp_path / "plain")
    first = _run(root, graph, tmp_path / "lora-1")
    second = _run(root, graph, tmp_path / "lora-2")
    assert np.array_equal(first, second)
    assert np.abs(first - without).mean() > 1.0
    # LoraLoader's model part does the same; this LoRA has no text-encoder layers.
    graph["90"] = {"class_type": "LoraLoader", "inputs": {"model": ["12", 0], "clip": ["11", 0],
                   "lora_name": "flux-kohya.safetensors", "strength_model": 1.0, "strength_clip": 1.0}}  # fmt: skip
    for node in ("6", "33"):
        graph[node]["inputs"]["clip"] = ["90", 1]
    assert np.array_equal(_run(root, graph, tmp_path / "lora-loader"), first)


def test_a_text_encoder_layer_patches_flux_clip_l(root: Path, mm: ModelManager) -> None:
    clip = mm.load_clip([Path(_flux_tiny.NAMES[n]).name for n in ("t5xxl", "clip_l")], "flux")
    name = "encoder.layers.0.self_attn.q_proj.weight"
    weight = dict(clip.text_encoders["l"].named_parameters())[name]
    gen = torch.Generator().manual_seed(4)
    down, up = torch.randn(2, weight.shape[1], generator=gen), torch.randn(weight.shape[0], 2, generator=gen)
    layer = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    (root / "loras").mkdir(exist_ok=True)
    save_file({f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up}, str(root / "loras" / "te.safetensors"))
    base = weight.detach().clone()
    with clip.with_loras(mm.lora_patch("te.safetensors", 0.5)).patched() as encoders:
        after = dict(encoders["l"].named_parameters())[name].detach().clone()
    torch.testing.assert_close(after, base + 0.5 * up @ down, rtol=0, atol=1e-5)
    assert torch.equal(weight, base)
