"""The loader nodes' schemas match ComfyUI's, and their choice lists are the files present."""

from __future__ import annotations

from pathlib import Path

from comfyd.engine.context import NodeEnvironment
from comfyd.engine.schema import REGISTRY
from comfyd.models.manager import ModelManager
from comfyd.nodes.loaders.checkpoints import CLIPSetLastLayer

from .conftest import FAMILIES, diffusers_name, node_context, single_name

STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


def _info(manager: ModelManager, class_type: str) -> dict:
    env = NodeEnvironment(manager.settings, models=manager)
    return REGISTRY.object_info(env)[class_type]


def test_checkpoint_loader_lists_files_and_diffusers_folders(manager: ModelManager) -> None:
    info = _info(manager, "CheckpointLoaderSimple")
    choices, options = info["input"]["required"]["ckpt_name"]
    assert choices == sorted([single_name(f) for f in FAMILIES] + [diffusers_name(f) for f in FAMILIES])
    assert options == {}
    assert info["output"] == ["MODEL", "CLIP", "VAE"] and info["category"] == "loaders"
    assert info["description"].startswith("Loads a diffusion model checkpoint")


def test_lora_and_vae_loaders_match_comfyui(manager: ModelManager, models_root: Path) -> None:
    lora = _info(manager, "LoraLoader")
    assert lora["input_order"]["required"] == [
        "model",
        "clip",
        "lora_name",
        "strength_model",
        "strength_clip",
    ]
    for name in ("strength_model", "strength_clip"):
        kind, options = lora["input"]["required"][name]
        assert kind == "FLOAT" and {k: options[k] for k in STRENGTH} == STRENGTH
    assert lora["output"] == ["MODEL", "CLIP"] and lora["category"] == "loaders"
    model_only = _info(manager, "LoraLoaderModelOnly")
    assert model_only["input_order"]["required"] == ["model", "lora_name", "strength_model"]
    assert model_only["input"]["required"]["strength_model"] == ["FLOAT", STRENGTH]
    assert model_only["output"] == ["MODEL"]
    vae = _info(manager, "VAELoader")
    assert vae["input_order"]["required"] == ["vae_name"] and vae["output"] == ["VAE"]
    assert vae["category"] == "loaders"


def test_clip_set_last_layer(manager: ModelManager) -> None:
    info = _info(manager, "CLIPSetLastLayer")
    assert info["input"]["required"]["stop_at_clip_layer"] == [
        "INT",
        {"default": -1, "min": -24, "max": -1, "step": 1},
    ]
    assert info["category"] == "conditioning" and info["output"] == ["CLIP"]
    _, clip, _ = manager.load_checkpoint(single_name("sd1"))
    (skipped,) = CLIPSetLastLayer().run(node_context(manager, "CLIPSetLastLayer"), clip, -2)
    assert skipped.layer_idx == -2 and clip.layer_idx is None
    assert skipped.text_encoders is clip.text_encoders


def test_loader_fingerprint_follows_the_file(manager: ModelManager) -> None:
    node = REGISTRY.get("CheckpointLoaderSimple")()
    ctx = node_context(manager)
    assert node.fingerprint(ctx, ckpt_name=single_name("sd1")) == manager.fingerprint(
        "checkpoints", single_name("sd1")
    )
    assert node.fingerprint(ctx, ckpt_name="missing.safetensors") is None
