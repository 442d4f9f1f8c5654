"""The T2I-Adapter style model: loading (and refusing other files), its tokens, and
StyleModelApply's two strength types on a conditioning (the full path is held to ComfyUI's
renders in tests/fidelity/test_image_prompt_parity.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyd.models.clip_vision import ClipVisionOutput
from comfyd.models.style_model import StyleModelFormatError, load_style_model
from comfyd.models.tensorfile import TensorFile
from comfyd.models.tiny_vision import write_style_model
from comfyd.nodes.conditioning.style_model import StyleModelApply


@pytest.fixture(scope="module")
def style(tmp_path_factory: pytest.TempPathFactory):
    path = write_style_model(tmp_path_factory.mktemp("style") / "style.safetensors", seed=1)
    with TensorFile(path) as tf:
        return load_style_model(tf, "k")


def _vision(batch: int = 1) -> ClipVisionOutput:
    # A few image tokens keep the adapter cheap (a ViT-L gives 257; any count goes through).
    hidden = torch.randn(batch, 5, 1024, generator=torch.Generator().manual_seed(0))
    return ClipVisionOutput(hidden, hidden, torch.zeros(batch, 768))


def _apply(style, conditioning, strength: float, strength_type: str, batch: int = 1):
    return StyleModelApply().run(None, conditioning, style, _vision(batch), strength, strength_type)[0]


def test_tokens_are_appended_and_multiply_scales_them(style) -> None:
    text = torch.randn(1, 77, 768)
    conditioning = [[text, {"pooled_output": None}]]
    full = _apply(style, conditioning, 1.0, "multiply")
    half = _apply(style, conditioning, 0.5, "multiply")
    assert full[0][0].shape == (1, 85, 768)
    assert torch.equal(full[0][0][:, :77], text)
    assert torch.allclose(half[0][0][:, 77:], 0.5 * full[0][0][:, 77:])
    assert "attention_mask" not in full[0][1] and conditioning[0][0] is text  # input untouched
    # Two images: both token sets, one after the other.
    assert _apply(style, conditioning, 1.0, "multiply", batch=2)[0][0].shape == (1, 93, 768)


def test_attn_bias_keeps_the_tokens_and_records_the_bias(style) -> None:
    conditioning = [[torch.randn(1, 77, 768), {}]]
    plain = _apply(style, conditioning, 1.0, "multiply")
    biased = _apply(style, conditioning, 0.5, "attn_bias")
    assert torch.equal(biased[0][0], plain[0][0])
    mask = biased[0][1]["attention_mask"]
    assert mask.shape == (1, 86, 86) and mask.dtype == torch.float16  # 77 text + 8 style + 1 reference
    bias = torch.tensor(math.log(0.5), dtype=torch.float16)
    assert (mask[:, :77, 77:85] == bias).all() and (mask[:, 85:, 77:85] == bias).all()
    assert not mask[:, :, :77].any() and not mask[:, 77:85, :].any()
    # A second application widens the mask it finds (the new tokens go after the text again).
    again = StyleModelApply().run(None, biased, style, _vision(), 1.0, "multiply")[0]
    assert again[0][1]["attention_mask"].shape == (1, 94, 94)
    assert _apply(style, conditioning, 1.0, "attn_bias")[0][1].get("attention_mask") is None


def test_other_files_are_refused_clearly(tmp_path: Path, style) -> None:
    save_file({"redux_down.weight": torch.zeros(2, 2)}, str(tmp_path / "redux.safetensors"))
    save_file({"something": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    save_file({"style_embedding": torch.zeros(1, 4, 1024)}, str(tmp_path / "partial.safetensors"))
    for name, message in (("redux", "Flux Redux"), ("other", "not a style model"), ("partial", "does not fit")):
        with TensorFile(tmp_path / f"{name}.safetensors") as tf, pytest.raises(StyleModelFormatError, match=message):
            load_style_model(tf, "k")
    with pytest.raises(ValueError, match="ViT-L CLIP vision output"):
        style.tokens(ClipVisionOutput(torch.zeros(1, 257, 1280), torch.zeros(1), torch.zeros(1)))
    with pytest.raises(ValueError, match="batch 1"):
        _apply(style, [[torch.zeros(2, 77, 768), {}]], 1.0, "multiply")


@pytest.mark.slow
def test_the_loaders_list_their_folders_and_explain_a_wrong_file(tmp_path: Path) -> None:
    import comfyd.nodes  # noqa: F401  (registers the nodes)
    from comfyd.engine.schema import REGISTRY
    from comfyd.models.tiny import write_random_checkpoint
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    models = tmp_path / "models"
    write_random_checkpoint(models / "checkpoints" / "sd1.safetensors", "sd1")
    for folder in ("clip_vision", "style_models"):
        (models / folder).mkdir()
        save_file({"something": torch.zeros(2)}, str(models / folder / "wrong.safetensors"))
    runner = LocalRunner(Settings(device="cpu", models_dir=models, output_dir=tmp_path / "out",
                                  temp_dir=tmp_path / "temp", input_dir=tmp_path / "in"))  # fmt: skip
    info = REGISTRY.object_info(runner.env)
    assert info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0] == ["wrong.safetensors"]
    assert info["StyleModelLoader"]["input"]["required"]["style_model_name"][0] == ["wrong.safetensors"]

    def workflow(vision_loader: str, style_loader: str) -> dict:
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd1.safetensors"}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 1]}},
            "3": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "4": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": vision_loader}},
            "5": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["4", 0], "image": ["3", 0], "crop": "center"}},
            "6": {"class_type": "StyleModelLoader", "inputs": {"style_model_name": style_loader}},
            "7": {"class_type": "StyleModelApply", "inputs": {"conditioning": ["2", 0], "style_model": ["6", 0],
                                                             "clip_vision_output": ["5", 0], "strength": 1.0,
                                                             "strength_type": "multiply"}},
            "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "9": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler",
                                                      "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                                      "positive": ["7", 0], "negative": ["2", 0], "latent_image": ["8", 0]}},
            "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["1", 2]}},
            "11": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
        }  # fmt: skip

    result = runner.run(workflow("wrong.safetensors", "wrong.safetensors"))
    assert not result.ok
    assert result.error["message"] in (
        "wrong.safetensors holds no CLIP vision model: expected vision_model.encoder.layers.* (transformers) "
        "or visual.transformer.resblocks.* (OpenCLIP)",
        "wrong.safetensors is not a style model: no style_embedding (T2I-Adapter style) tensor",
    )
