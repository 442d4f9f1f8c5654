"""Z-Image Turbo end to end on tiny random files in ComfyUI's split layout (`make-tiny --family z-image`).

The canonical workflow (comfyd/workflows/z_image_turbo_api.json: UNETLoader, CLIPLoader type
lumina2, VAELoader, ModelSamplingAuraFlow 3, EmptySD3LatentImage, CLIPTextEncode,
ConditioningZeroOut, KSampler res_multistep / simple / cfg 1, VAEDecode, SaveImage) runs through
`comfyd run` at 64x64 and 2 steps; its picture is held to diffusers' ZImagePipeline on the same
files, prompt and initial noise (z_image_reference.py says why not ComfyUI). With two steps
res_multistep takes an Euler step and then steps to sigma 0, which both samplers do by returning
the denoised estimate, so the pipeline's Euler scheduler computes the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.cli import main
from comfyd.models import qwen3_encoder, qwen25_encoder
from comfyd.models.families import _z_image_tiny
from comfyd.models.families import _z_image_transformer as transformer
from comfyd.models.tiny import make_tiny
from tests.families.z_image_reference import SIZE, psnr, reference, tiny_workflow, z_image_pipeline

# "a red fox in the snow" inside Z-Image's chat template (Qwen2's vocabulary).
PROMPT_IDS = [151644, 872, 198, 64, 2518, 38835, 304, 279, 11794, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def z_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zimage") / "models"
    written = make_tiny(root, family="z-image")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_z_image_tiny.NAMES.values())
    return root


def _run(graph: dict, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    path = tmp_path / "z_image.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))


@pytest.mark.slow
def test_turbo_workflow_through_comfyd_run_matches_diffusers(
    z_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tiny_workflow()
    assert graph["3"]["inputs"]["sampler_name"] == "res_multistep" and graph["3"]["inputs"]["cfg"] == 1.0
    ours = _run(graph, z_models, tmp_path, capsys)
    theirs = reference(z_models, graph)
    assert ours.shape == (SIZE, SIZE, 3) and theirs.std() > 20  # noise-like: PSNR is strict
    assert psnr(ours, theirs) >= 40.0


@pytest.mark.slow
def test_prompt_conditioning_matches_diffusers(z_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=z_models, home=tmp_path / "home", device="cpu"))
    clip = manager.load_clip([Path(_z_image_tiny.NAMES["qwen3_4b"]).name], "lumina2")
    pipe = z_image_pipeline(z_models)
    for prompt in ("a red fox in the snow", 'a sign that says "Z", 中文, (not a weight:1.3)'):
        [[cond, extra]] = encode_text(clip, prompt)
        with torch.inference_mode():
            [theirs], _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
        assert extra["pooled_output"] is None
        assert cond.shape == (1, *theirs.shape)
        assert float((cond[0] - theirs).abs().max()) < 1e-5


def test_tokens_as_comfyui() -> None:
    tokenizer = qwen25_encoder.shipped_tokenizer()
    assert qwen3_encoder.tokenize(tokenizer, "a red fox in the snow") == PROMPT_IDS
    # Weights are not parsed; escaped brackets are unescaped.
    assert qwen3_encoder.tokenize(tokenizer, "\\(a\\)") == qwen3_encoder.tokenize(tokenizer, "(a)")
    assert len(qwen3_encoder.tokenize(tokenizer, "(a:1.2)")) > len(qwen3_encoder.tokenize(tokenizer, "a"))


def test_key_map_matches_diffusers_converter(z_models: Path) -> None:
    """comfyd's map from the stored keys equals diffusers' own single-file converter."""
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    from comfyd.models.keymap import apply_op

    stored = load_file(str(z_models / _z_image_tiny.NAMES["transformer"]))
    assert transformer.is_z_image_transformer(set(stored), "")
    config = transformer.infer_config({k: tuple(v.shape) for k, v in stored.items()}, "")
    assert config == {**_z_image_tiny.TINY_TRANSFORMER, "all_patch_size": (2,), "all_f_patch_size": (1,)}
    theirs = convert_z_image_transformer_checkpoint_to_diffusers(dict(stored))
    translator = transformer.ZImageTranslator(config)
    ours = {}
    for name in theirs:
        source = translator.source(name)
        assert source is not None
        ours[name] = apply_op(stored[source.key], source)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert transformer.rope_axes(128) == [32, 48, 48]


def test_bad_z_image_inputs_get_clear_errors(z_models: Path, tmp_path: Path) -> None:
    from comfyd.models.header_probe import detect_family, read_header
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    names = {k: Path(v).name for k, v in _z_image_tiny.NAMES.items()}
    assert detect_family(read_header(z_models / _z_image_tiny.NAMES["transformer"])) == "z_image"
    assert detect_family(read_header(z_models / _z_image_tiny.NAMES["qwen3_4b"])) == "qwen3"
    manager = ModelManager(Settings(models_dir=z_models, home=tmp_path / "home", device="cpu"))
    with pytest.raises(ValueError, match="has no place in a flux CLIP"):
        manager.load_clip([names["qwen3_4b"]], "flux")
    model = manager.load_diffusion_model(names["transformer"])
    with pytest.raises(ValueError, match="single images; got a latent with 3 frames"):
        with torch.inference_mode(), model.patched() as net:
            net(torch.zeros(1, 16, 3, 4, 4), torch.tensor([0.5]), torch.zeros(1, 5, 32))
    # Odd latent sizes pad to whole patches and come back at their size; fp8 storage stays close.
    x, t, context = torch.randn(1, 16, 5, 7), torch.tensor([0.5]), torch.randn(1, 5, 32)
    fp8 = manager.load_diffusion_model(names["transformer"], "fp8_e4m3fn")
    with torch.inference_mode(), model.patched() as net, fp8.patched() as net8:
        a, b = net(x, t, context)[0], net8(x, t, context)[0]
    assert a.shape == x.shape and torch.isfinite(b).all()
    assert 0 < float((a - b).abs().max()) < 0.25 * float(a.abs().max())


def test_all_in_one_checkpoint_loads_the_same_parts(z_models: Path, tmp_path: Path) -> None:
    """CheckpointLoaderSimple on one file holding the three parts under ComfyUI's prefixes."""
    from safetensors.torch import load_file, save_file

    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    combined: dict[str, torch.Tensor] = {}
    prefixes = {
        "transformer": "model.diffusion_model.",
        "qwen3_4b": "text_encoders.qwen3_4b.transformer.",
        "vae": "vae.",
    }
    for part, prefix in prefixes.items():
        combined.update(
            {prefix + k: v for k, v in load_file(str(z_models / _z_image_tiny.NAMES[part])).items()}
        )
    (z_models / "checkpoints").mkdir(exist_ok=True)
    save_file(combined, str(z_models / "checkpoints" / "z-image-aio.safetensors"))
    manager = ModelManager(Settings(models_dir=z_models, home=tmp_path / "home", device="cpu"))
    model, clip, vae = manager.load_checkpoint("z-image-aio.safetensors")
    names = {k: Path(v).name for k, v in _z_image_tiny.NAMES.items()}
    split_model = manager.load_diffusion_model(names["transformer"])
    split_clip = manager.load_clip([names["qwen3_4b"]], "lumina2")
    assert model.family == "z_image" and vae.latent_channels == 16
    [[cond, _]], [[split_cond, _]] = encode_text(clip, "a fox"), encode_text(split_clip, "a fox")
    assert torch.equal(cond, split_cond)
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.7])
    with torch.inference_mode(), model.patched() as net, split_model.patched() as split_net:
        assert torch.equal(net(x, t, cond)[0], split_net(x, t, cond)[0])


def test_full_size_configs_are_read_from_shapes() -> None:
    """The 6B transformer (cut to 3 main layers of its 30, to stay fast) and Qwen3-4B at full
    width: their stored shapes give back the configs ComfyUI fixes (dim 3840, 30 heads of 128, 2 + 2
    refiner layers, 2560-wide text; Qwen3-4B 36 layers, 32 heads of 128, 8 key/value heads)."""
    full = {
        "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 3840, "n_layers": 3,
        "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
        "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
        "axes_lens": [1536, 512, 512],
    }  # fmt: skip
    stored = transformer.original_state(transformer.empty_transformer(full).state_dict(), full)
    assert transformer.infer_config({k: tuple(v.shape) for k, v in stored.items()}, "") == full
    shapes = {
        "model.embed_tokens.weight": (151936, 2560), qwen3_encoder.MARKER: (128,),
        "model.layers.0.self_attn.q_proj.weight": (4096, 2560), "model.layers.0.self_attn.k_proj.weight": (1024, 2560),
        "model.layers.0.mlp.gate_proj.weight": (9728, 2560), "model.layers.35.input_layernorm.weight": (2560,),
    }  # fmt: skip
    config = qwen3_encoder.infer_config(shapes)
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (
        36,
        32,
        8,
    )
    assert qwen3_encoder.is_qwen3(set(shapes)) and not qwen3_encoder.is_qwen3(
        {*shapes, "model.layers.0.self_attn.k_proj.bias"}
    )


# A LoRA's layers in each naming ComfyUI maps: diffusers' names (ai-toolkit), the stored names
# under diffusion_model. and kohya's lora_unet_ spelling of them.
LORA_LAYERS = {
    "diffusers": ("diffusion_model.layers.0.attention.to_k", "diffusion_model.layers.1.feed_forward.w2"),
    "stored": ("diffusion_model.layers.0.attention.qkv", "lora_unet_noise_refiner_0_attention_out"),
}


STORED_OUT = "noise_refiner.0.attention.out"  # what lora_unet_noise_refiner_0_attention_out names


@pytest.mark.parametrize("fmt", sorted(LORA_LAYERS))
def test_lora_patches_the_stored_weights_through_the_key_map(
    fmt: str, z_models: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models.keymap import ROWS, Source, apply_op
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    stored = load_file(str(z_models / _z_image_tiny.NAMES["transformer"]))
    manager = ModelManager(Settings(models_dir=z_models, home=tmp_path / "home", device="cpu"))
    model = manager.load_diffusion_model(Path(_z_image_tiny.NAMES["transformer"]).name)
    translator = transformer.ZImageTranslator(dict(model.unet.config))
    gen = torch.Generator().manual_seed(len(fmt))
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    for layer in LORA_LAYERS[fmt]:
        if fmt == "diffusers":
            source = translator.source(layer.removeprefix("diffusion_model.") + ".weight")
        else:  # the whole stored tensor
            key = (
                layer.removeprefix("diffusion_model.") if layer.startswith("diffusion_model.") else STORED_OUT
            )
            source = Source(key + ".weight")
        assert source is not None
        base = stored[source.key]
        rows = source.stop - source.start if source.op == ROWS else base.shape[0]
        down, up = (
            torch.randn(4, base.shape[1], generator=gen) * 0.1,
            torch.randn(rows, 4, generator=gen) * 0.1,
        )
        a, b = ("lora_A", "lora_B") if fmt == "diffusers" else ("lora_down", "lora_up")
        tensors |= {
            f"{layer}.{a}.weight": down,
            f"{layer}.{b}.weight": up,
            f"{layer}.alpha": torch.tensor(2.0),
        }
        full = deltas.setdefault(source.key, torch.zeros(base.shape))
        if source.op == ROWS:
            full[source.start : source.stop] += up @ down * 0.5
        else:
            full += up @ down * 0.5
    (z_models / "loras").mkdir(exist_ok=True)
    save_file(tensors, str(z_models / "loras" / f"z-{fmt}.safetensors"))
    base_state = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    with model.with_loras(manager.lora_patch(f"z-{fmt}.safetensors", 0.8)).patched() as patched:
        after = {k: v.detach().clone() for k, v in patched.state_dict().items()}
    changed = 0
    for name, value in after.items():
        source = translator.source(name)
        assert source is not None
        delta = deltas.get(source.key)
        if delta is None:
            assert torch.equal(value, base_state[name]), name
            continue
        want = apply_op(stored[source.key].float() + 0.8 * delta, source)
        torch.testing.assert_close(value, want, rtol=0, atol=1e-6)
        changed += not torch.equal(value, base_state[name])
    # The stored qkv's LoRA changes q, k and v; a diffusers to_k LoRA only k.
    assert changed == (2 if fmt == "diffusers" else 4)
    assert all(torch.equal(v, base_state[k]) for k, v in model.unet.state_dict().items())


def test_clip_set_last_layer_picks_the_layer_as_comfyui(z_models: Path, tmp_path: Path) -> None:
    """-2 by default (the hidden layer before the last), -1 the last layer unnormalised; past the
    depth the last layer after the final norm."""
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=z_models, home=tmp_path / "home", device="cpu"))
    clip = manager.load_clip([Path(_z_image_tiny.NAMES["qwen3_4b"]).name], "lumina2")
    encoder = clip.text_encoders["qwen3_4b"]
    ids = torch.tensor([qwen3_encoder.tokenize(qwen25_encoder.shipped_tokenizer(), "a fox")])
    with torch.no_grad():
        out = encoder(input_ids=ids, output_hidden_states=True)
        last_unnormed = encoder.layers[-1](
            out.hidden_states[-2],
            position_embeddings=encoder.rotary_emb(out.hidden_states[-2], torch.arange(ids.shape[1])[None]),
            attention_mask=None,
        )
    last_unnormed = last_unnormed[0] if isinstance(last_unnormed, tuple) else last_unnormed
    for layer, want in ((None, out.hidden_states[-2]), (-2, out.hidden_states[-2]), (-1, last_unnormed),
                        (-3, out.last_hidden_state)):  # fmt: skip
        [[cond, _]] = encode_text(clip.with_layer(layer), "a fox")
        torch.testing.assert_close(cond, want.float(), rtol=0, atol=1e-5 if layer != -1 else 1e-4)


# Hugging Face Qwen3 names -> llama.cpp's (the inverse of comfyd.models.gguf_weights' table).
QWEN3_TO_LLAMA_CPP = (
    ("model.layers.", "blk."), ("input_layernorm", "attn_norm"), ("self_attn.q_norm.", "attn_q_norm."),
    ("self_attn.k_norm.", "attn_k_norm."), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"), ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"), ("mlp.gate_proj", "ffn_gate"), ("post_attention_layernorm", "ffn_norm"),
    ("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"),
)  # fmt: skip


@pytest.mark.slow
def test_turbo_workflow_from_gguf_files(
    z_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """UnetLoaderGGUF (ComfyUI-GGUF's original key names) and CLIPLoaderGGUF (llama.cpp's `qwen3`
    names), both Q8_0: the picture stays within Q8_0's rounding of diffusers' on the same weights."""
    import gguf
    from safetensors.torch import load_file

    from tests.models.gguf_files import write_gguf

    write_gguf(
        z_models / _z_image_tiny.NAMES["transformer"],
        z_models / "diffusion_models" / "z.gguf",
        "lumina2",
        "Q8_0",
    )
    writer = gguf.GGUFWriter(str(z_models / "text_encoders" / "qwen3.gguf"), "qwen3")
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, tensor in load_file(str(z_models / _z_image_tiny.NAMES["qwen3_4b"])).items():
        for old, new in QWEN3_TO_LLAMA_CPP:
            name = name.replace(old, new)
        if tensor.ndim == 2 and tensor.shape[-1] % 32 == 0:
            writer.add_tensor(name, gguf.quants.quantize(tensor.float().numpy(), q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, tensor.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    graph = tiny_workflow()
    graph["16"] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "z.gguf"}}
    graph["18"] = {"class_type": "CLIPLoaderGGUF", "inputs": {"clip_name": "qwen3.gguf", "type": "lumina2"}}
    ours = _run(graph, z_models, tmp_path, capsys)
    assert 40.0 <= psnr(ours, reference(z_models, tiny_workflow())) < 80.0  # quantized: close, not equal


def test_never_computes_in_fp16() -> None:
    """ComfyUI runs Z-Image in bf16 or fp32 only: fp16 plans become bf16 where CUDA has it, else fp32."""
    cpu = torch.device("cpu")
    assert transformer.compute_dtype(torch.float16, cpu) == torch.float32
    assert transformer.compute_dtype(torch.float32, cpu) == torch.float32
    assert transformer.compute_dtype(torch.bfloat16, cpu) == torch.bfloat16


def test_diffusers_layout_file_loads_the_same_network(z_models: Path, tmp_path: Path) -> None:
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file, save_file

    from comfyd.models.header_probe import detect_family, read_header
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    stored = load_file(str(z_models / _z_image_tiny.NAMES["transformer"]))
    converted = convert_z_image_transformer_checkpoint_to_diffusers(dict(stored))
    save_file(converted, str(z_models / "diffusion_models" / "z-diffusers.safetensors"))
    assert transformer.is_diffusers_layout(set(converted), "")
    assert detect_family(read_header(z_models / "diffusion_models" / "z-diffusers.safetensors")) == "z_image"
    manager = ModelManager(Settings(models_dir=z_models, home=tmp_path / "home", device="cpu"))
    ours = manager.load_diffusion_model("z-diffusers.safetensors")
    reference_model = manager.load_diffusion_model(Path(_z_image_tiny.NAMES["transformer"]).name)
    x, t, context = torch.randn(1, 16, 4, 4), torch.tensor([0.3]), torch.randn(1, 7, 32)
    with torch.inference_mode(), ours.patched() as net, reference_model.patched() as ref:
        assert torch.equal(net(x, t, context)[0], ref(x, t, context)[0])
