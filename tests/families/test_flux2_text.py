"""Flux.2's text encoders on tiny files: Mistral Small 3.x ([dev]) and Qwen3 ([klein]) found by their
keys, tokenized in ComfyUI's templates, encoded as diffusers' Flux2Pipeline / Flux2KleinPipeline
encode (tests/families/flux2_reference.py), and the [klein] base graph (CFG) through `comfyd run`
held to Flux2KleinPipeline. The [dev] graph through `comfyd run`: tests/families/test_flux2.py;
both graphs through the server: tests/server/test_flux2_workflow.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.models import flux2_text, mistral3_encoder, standalone
from comfyd.models.families import _flux2_tiny
from comfyd.models.manager import ModelManager
from comfyd.models.tensorfile import TensorFile
from comfyd.models.text_encoding import encode_text, tokenize_text
from comfyd.models.tiny import make_tiny
from comfyd.settings import Settings
from tests.families.flux2_reference import (
    GUIDANCE,
    PROMPT,
    cfg_workflow,
    diffusers_prompt_embeds,
    psnr,
    reference,
)


@pytest.fixture(scope="module")
def flux2_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux2te") / "models"
    make_tiny(root, family="flux2")
    return root


@pytest.fixture(scope="module")
def manager(flux2_models: Path) -> ModelManager:
    root = flux2_models
    return ModelManager(Settings(models_dir=root, output_dir=root / "out", temp_dir=root / "temp",
                                 input_dir=root / "in", device="cpu"))  # fmt: skip


def _clip(manager: ModelManager, variant: str):
    return manager.load_clip([Path(_flux2_tiny.NAMES[_flux2_tiny.ENCODER_OF[variant]]).name], "flux2")


def _keys_and_shapes(path: Path) -> tuple[set[str], dict[str, tuple[int, ...]]]:
    with TensorFile(path) as tf:
        return set(tf.keys()), tf.shapes()


def test_mistral_is_told_from_llama_and_qwen_under_every_prefix(flux2_models: Path) -> None:
    keys, shapes = _keys_and_shapes(flux2_models / _flux2_tiny.NAMES["mistral"])
    assert mistral3_encoder.find_prefix(keys, shapes) == "model."
    for prefix in ("language_model.model.", "model.language_model.", "text_model.model."):
        moved = {prefix + k.removeprefix("model."): v for k, v in shapes.items()}
        assert mistral3_encoder.find_prefix(set(moved), moved) == prefix
    llama = dict(shapes, **{"model.embed_tokens.weight": (128256, _flux2_tiny.ENCODER_WIDTH)})
    assert mistral3_encoder.find_prefix(set(llama), llama) is None  # a Llama 3 vocabulary
    qwen_keys, qwen_shapes = _keys_and_shapes(flux2_models / _flux2_tiny.NAMES["qwen3"])
    assert mistral3_encoder.find_prefix(qwen_keys, qwen_shapes) is None  # q/k norms: a Qwen3
    assert mistral3_encoder.infer_config(shapes, "model.") == _flux2_tiny.tiny_mistral_config()


def test_each_encoder_makes_a_flux2_clip_and_others_are_refused(manager: ModelManager) -> None:
    dev, klein = _clip(manager, "dev"), _clip(manager, "klein")
    assert (dev.family, list(dev.text_encoders)) == ("flux2", ["mistral3_24b"])
    assert (klein.family, list(klein.text_encoders)) == ("flux2", ["qwen3"])
    with pytest.raises(ValueError, match="no place in a flux2 CLIP"):
        manager.load_clip([Path(_flux2_tiny.NAMES["mistral"]).name, Path(_flux2_tiny.NAMES["mistral"]).name], "flux2")


def test_prompts_are_tokenized_in_comfyuis_templates(manager: ModelManager) -> None:
    dev = [t for t, _ in tokenize_text(_clip(manager, "dev"), "a (red:1.5) fox \\(x\\)")["mistral3_24b"][0]]
    tekken = mistral3_encoder.tokenizer_for(_clip(manager, "dev").text_encoders["mistral3_24b"])
    system = tekken.encode(mistral3_encoder.SYSTEM_MESSAGE, bos=False, eos=False)
    assert dev[:2] == [1, 17] and dev[2 : 2 + len(system)] == system and dev[2 + len(system) : 4 + len(system)] == [18, 3]
    assert dev[-1] == 4 and tekken.decode(dev[4 + len(system) : -1]) == "a (red:1.5) fox (x)"  # weights not parsed
    typed = mistral3_encoder.encode_text(tekken, "a [INST] b<pad>")  # control tokens typed in are read as such
    assert typed[2] == 3 and typed[-1] == 11 and len(typed) == 5  # "a", " ", [INST], " b", <pad>
    klein = [t for t, _ in tokenize_text(_clip(manager, "klein"), "a red fox")["qwen3"][0]]
    tokenizer = _clip(manager, "klein").tokenizers["qwen3"]
    real = klein[: klein.index(flux2_text.KLEIN_PAD)]
    assert tokenizer.decode(real) == flux2_text.KLEIN_TEMPLATE.format("a red fox")
    assert len(klein) == 512 and set(klein[len(real) :]) == {flux2_text.KLEIN_PAD}


def test_tekken_beside_the_file_or_in_it_is_preferred(flux2_models: Path, tmp_path: Path) -> None:
    from comfyd.models.devices import compute_plan

    source = flux2_models / _flux2_tiny.NAMES["mistral"]
    (tmp_path / "enc.safetensors").write_bytes(source.read_bytes())
    (tmp_path / "tekken.json").write_bytes(b"{not json")
    module = standalone.load_text_encoder(tmp_path / "enc.safetensors", compute_plan("cpu", "fp32"), False)[1]
    assert module.comfyd_tekken == b"{not json"
    with pytest.raises(ValueError, match="Tekken tokenizer cannot be read"):
        mistral3_encoder.tokenizer_for(module)
    from safetensors.torch import load_file, save_file

    embedded = load_file(str(source))  # ComfyUI's spelling: the JSON's bytes as a uint8 tensor
    embedded[mistral3_encoder.TEKKEN_KEY] = torch.frombuffer(bytearray(b'{"in": "file"}'), dtype=torch.uint8)
    save_file(embedded, str(tmp_path / "enc.safetensors"))
    module = standalone.load_text_encoder(tmp_path / "enc.safetensors", compute_plan("cpu", "fp32"), False)[1]
    assert module.comfyd_tekken == b'{"in": "file"}'  # preferred over tekken.json beside the file


@pytest.mark.parametrize("variant", ["dev", "klein"])
def test_conditioning_is_diffusers_encode_prompt(manager: ModelManager, flux2_models: Path, variant: str) -> None:
    clip = _clip(manager, variant)
    encoder = next(iter(clip.text_encoders.values()))  # diffusers drives the very module comfyd loaded
    ours = encode_text(clip, PROMPT)[0][0]
    theirs = diffusers_prompt_embeds(flux2_models, variant, encoder=encoder)
    assert ours.shape == theirs.shape == (1, ours.shape[1], _flux2_tiny.CONTEXT_DIM)
    assert (ours.shape[1] == 512) == (variant == "klein")  # [dev] is not padded (ComfyUI's model pads)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)
    if variant == "dev":  # the comparison can fail: another prompt at the same length differs
        other = diffusers_prompt_embeds(flux2_models, variant, "a blue fox", length=ours.shape[1], encoder=encoder)
        assert not torch.allclose(ours, other, atol=1e-3)


def test_a_too_shallow_encoder_is_refused_with_a_message(manager: ModelManager) -> None:
    encoder = _clip(manager, "klein").text_encoders["qwen3"]
    with pytest.raises(ValueError, match="needs hidden state 60, but this one has 28 layers"):
        flux2_text.encode(encoder, [1, 2, 3], 3, (9, 18, 60))


def _run(graph: dict, models: Path, tmp_path: Path) -> np.ndarray:
    from comfyd.cli import main

    workflow = tmp_path / "flux2.json"
    workflow.write_text(json.dumps(graph))
    out = tmp_path / "out"
    assert main(["run", str(workflow), "--models-dir", str(models), "--output-dir", str(out), "-q"]) == 0
    with Image.open(next(out.glob("*.png"))) as png:
        return np.asarray(png.convert("RGB"))


@pytest.mark.slow
def test_klein_base_prompt_to_picture_is_flux2_klein_pipeline(flux2_models: Path, tmp_path: Path) -> None:
    """The [klein] base template (CFGGuider, empty negative prompt) against the undistilled
    pipeline's CFG; the distilled graph (BasicGuider) runs in bench/flux2_diffusers_parity.py."""
    ours = _run(cfg_workflow("klein", GUIDANCE), flux2_models, tmp_path)
    assert ours.std() > 5
    assert psnr(ours, reference(flux2_models, "klein", cfg=GUIDANCE)) >= 40.0


def test_mistral_small_31_sizes_are_read_from_its_shapes() -> None:
    """The released text model's layout (Mistral3ForConditionalGeneration's language model, built
    empty): 5120 wide, 40 layers, 32 query and 8 key/value heads of 128, MLP 32768."""
    real = dict(_flux2_tiny.tiny_mistral_config(), hidden_size=5120, num_hidden_layers=40, head_dim=128,
                num_attention_heads=32, num_key_value_heads=8, intermediate_size=32768)  # fmt: skip
    shapes = {
        f"language_model.model.{k}": tuple(v.shape)
        for k, v in mistral3_encoder.empty_encoder(real).state_dict().items()
    }
    shapes["vision_tower.transformer.layers.0.attention.q_proj.weight"] = (1024, 1024)
    prefix = mistral3_encoder.find_prefix(set(shapes), shapes)
    assert prefix == "language_model.model."
    assert mistral3_encoder.infer_config(shapes, prefix) == real


def test_scaled_fp8_weights_are_dequantized(manager: ModelManager, flux2_models: Path, tmp_path: Path) -> None:
    """A file whose weights carry `weight_scale` (a scalar or one per row) or `scale_weight` loads as
    the unscaled file; a 4-bit file is refused."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(flux2_models / _flux2_tiny.NAMES["mistral"]))
    scaled = dict(state)
    for i, (part, suffix) in enumerate([("self_attn.q_proj", ".weight_scale"), ("mlp.down_proj", ".scale_weight")]):
        weight = state[f"model.layers.3.{part}.weight"].float()
        scale = torch.full((weight.shape[0],), 4.0) if i == 0 else torch.tensor(0.5)
        scaled[f"model.layers.3.{part}.weight"] = weight / (scale.reshape(-1, 1) if scale.ndim else scale)
        scaled[f"model.layers.3.{part}{suffix}"] = scale
    folder = flux2_models / "text_encoders"
    save_file(scaled, str(folder / "scaled-mistral.safetensors"))
    ours = encode_text(manager.load_clip(["scaled-mistral.safetensors"], "flux2"), PROMPT)[0][0]
    assert torch.allclose(ours, encode_text(_clip(manager, "dev"), PROMPT)[0][0], atol=1e-5)
    save_file({**state, "model.layers.0.mlp.up_proj.weight_scale_2": torch.tensor(1.0)},
              str(folder / "nvfp4-mistral.safetensors"))  # fmt: skip
    with pytest.raises(ValueError, match="nvfp4"):
        manager.load_clip(["nvfp4-mistral.safetensors"], "flux2")


@pytest.mark.slow
def test_klein_qwen3_from_a_gguf_file(manager: ModelManager, flux2_models: Path) -> None:
    """CLIPLoaderGGUF's path: llama.cpp's `qwen3` names (unquantized here, so exactly equal)."""
    import gguf
    from safetensors.torch import load_file

    from tests.families.test_z_image import QWEN3_TO_LLAMA_CPP

    writer = gguf.GGUFWriter(str(flux2_models / "text_encoders" / "klein-qwen3.gguf"), "qwen3")
    for name, tensor in load_file(str(flux2_models / _flux2_tiny.NAMES["qwen3"])).items():
        for old, new in QWEN3_TO_LLAMA_CPP:
            name = name.replace(old, new)
        writer.add_tensor(name, tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    clip = manager.load_clip(["klein-qwen3.gguf"], "flux2")
    assert torch.equal(encode_text(clip, PROMPT)[0][0], encode_text(_clip(manager, "klein"), PROMPT)[0][0])
