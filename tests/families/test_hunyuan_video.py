"""HunyuanVideo text-to-video on tiny random files in ComfyUI's split layout
(`make-tiny --family hunyuan-video`).

The canonical workflow (comfyd/workflows/hunyuan_video_t2v_api.json: UNETLoader, DualCLIPLoader
type hunyuan_video, VAELoader, CLIPTextEncode, FluxGuidance, EmptyHunyuanLatentVideo,
ModelSamplingSD3, SamplerCustomAdvanced, VAEDecodeTiled, CreateVideo, SaveVideo) runs through
`comfyd run` at 9 frames of 64x64 and the mp4 decodes (PyAV) to 9 frames of 64x64. What the
transformer, the VAE and the Llama text path compute is held to ComfyUI's own modules by
bench/hunyuan_comfyui_parity.py (tests/fidelity/README.md); here the key maps, the config reading,
the template crop and the error paths are checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from comfyd.cli import main
from comfyd.models import llama_encoder
from comfyd.models.families import _hunyuan_tiny, _hunyuan_transformer, _hunyuan_vae
from comfyd.models.keymap import to_original
from tests.families.video_serve import video_through_server
from tests.server.conftest import start_server  # noqa: F401  (the fixture)

WORKFLOW = Path(__file__).resolve().parents[2] / "comfyd" / "workflows" / "hunyuan_video_t2v_api.json"
SIZE, FRAMES = 64, 9
# ComfyUI's names -> Tencent's original ones (the renames ComfyUI undoes when it loads them).
TENCENT = (
    ("_attn.qkv.", "_attn_qkv."),
    ("_mod.lin.", "_mod.linear."),
    ("_attn.proj.", "_attn_proj."),
    ("img_attn.norm.query_norm.scale", "img_attn_q_norm.weight"),
    ("txt_attn.norm.key_norm.scale", "txt_attn_k_norm.weight"),
    ("modulation.lin.", "modulation.linear."),
    ("time_in.in_layer.", "time_in.mlp.0."),
    ("txt_in.t_embedder.in_layer.", "txt_in.t_embedder.mlp.0."),
    ("txt_in.c_embedder.out_layer.", "txt_in.c_embedder.linear_2."),
    ("_mlp.0.", "_mlp.fc1."),
)


def tiny_workflow() -> dict:
    """The canonical T2V workflow on the tiny files: 9 frames of 64x64, 2 steps."""
    graph = json.loads(WORKFLOW.read_text())
    names = {k: Path(v).name for k, v in _hunyuan_tiny.NAMES.items()}
    graph["10"]["inputs"]["vae_name"] = names["vae"]
    graph["11"]["inputs"].update(clip_name1=names["llama"], clip_name2=names["clip_l"])  # either order
    graph["12"]["inputs"]["unet_name"] = names["t2v"]
    graph["45"]["inputs"].update(width=SIZE, height=SIZE, length=FRAMES)
    graph["17"]["inputs"]["steps"] = 2
    return graph


@pytest.fixture(scope="module")
def hunyuan_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from comfyd.models.tiny import make_tiny

    root = tmp_path_factory.mktemp("hunyuan") / "models"
    written = make_tiny(root, family="hunyuan-video")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_hunyuan_tiny.NAMES.values())
    return root


def _meta_transformer_state() -> tuple[dict, dict[str, torch.Tensor]]:
    config = _hunyuan_tiny.tiny_transformer_config(256, 32)
    with torch.device("meta"):
        net = _hunyuan_transformer.empty_transformer(config)
    state = {k: torch.empty(v.shape, device="meta") for k, v in net.state_dict().items()}
    return config, state


def test_transformer_names_are_comfyuis_and_config_is_read_back() -> None:
    config, state = _meta_transformer_state()
    stored = to_original(state, _hunyuan_transformer.HunyuanTranslator(config, [], ""))
    # ComfyUI's names (comfy/ldm/hunyuan_video/model.py and Flux's blocks).
    for key in (
        "img_in.proj.weight",
        "txt_in.input_embedder.weight",
        "txt_in.t_embedder.in_layer.weight",
        "txt_in.c_embedder.out_layer.bias",
        "txt_in.individual_token_refiner.blocks.1.self_attn.qkv.weight",
        "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight",
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.0.txt_attn.norm.key_norm.scale",
        "single_blocks.0.linear1.weight",
        "guidance_in.out_layer.weight",
        "vector_in.in_layer.weight",
        "final_layer.adaLN_modulation.1.weight",
    ):
        assert key in stored, key
    assert tuple(stored["txt_in.individual_token_refiner.blocks.1.self_attn.qkv.weight"].shape) == (768, 256)
    assert tuple(stored["single_blocks.0.linear1.weight"].shape) == (3 * 256 + 1024, 256)
    shapes = {k: tuple(v.shape) for k, v in stored.items()}
    assert _hunyuan_transformer.infer_config(shapes, "") == config
    # Every parameter finds its tensor under Tencent's spellings too.
    tencent = {}
    for key in stored:
        renamed = key
        for ours, theirs in TENCENT:
            renamed = renamed.replace(ours, theirs)
        tencent[renamed] = key
    assert len(tencent) == len(stored) and set(tencent) != set(stored)
    prefixed = [f"model.diffusion_model.{k}" for k in tencent]
    translator = _hunyuan_transformer.HunyuanTranslator(config, prefixed, "model.diffusion_model.")
    for name in state:
        source = translator.source(name)
        assert source is not None and source.key in prefixed, name


def test_vae_names_are_comfyuis_and_config_is_read_back() -> None:
    with torch.device("meta"):
        vae = _hunyuan_vae.empty_vae(_hunyuan_tiny.TINY_VAE)
    state = {k: torch.empty(v.shape, device="meta") for k, v in vae.state_dict().items()}
    stored = to_original(state, _hunyuan_vae.translator(_hunyuan_tiny.TINY_VAE))
    for key in (
        "encoder.conv_in.conv.weight",
        "encoder.down.0.block.0.conv1.conv.weight",
        "encoder.down.2.downsample.conv.conv.weight",
        "encoder.down.2.block.0.nin_shortcut.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "decoder.up.3.upsample.conv.conv.weight",
        "decoder.up.0.block.1.conv2.conv.weight",
        "decoder.mid.block_2.norm1.weight",
        "decoder.norm_out.weight",
        "post_quant_conv.weight",
    ):
        assert key in stored, key
    shapes = {k: tuple(v.shape) for k, v in stored.items()}
    assert _hunyuan_vae.is_hunyuan_vae(set(shapes))
    assert _hunyuan_vae.infer_config(shapes) == _hunyuan_tiny.TINY_VAE


def test_llama_prompt_goes_into_comfyuis_template_and_the_user_part_is_kept() -> None:
    tokenizer = _hunyuan_tiny.tiny_tokenizer()
    tokens = llama_encoder.tokenize(tokenizer, "a red fox (runs:1.2) at dawn")
    ids = [t for t, _ in tokens]
    assert ids[0] == tokenizer.token_to_id(llama_encoder.BEGIN)
    assert ids[-1] == tokenizer.token_to_id(llama_encoder.EOT)  # no end token, no padding after it
    weights = {tokenizer.id_to_token(t): w for t, w in tokens if w != 1.0}
    assert weights and all(w == pytest.approx(1.2) for w in weights.values())
    text = tokenizer.decode(ids, skip_special_tokens=False)
    assert "Describe the video by detailing" in text and "(runs:1.2)" not in text
    start, end = llama_encoder.user_span(tokenizer, ids)
    assert tokenizer.decode(ids[start:end], skip_special_tokens=False) == "a red fox runs at dawn<|eot_id|>"
    assert tokenizer.id_to_token(ids[start - 1]) == llama_encoder.BLANK_LINE
    # No user header: everything is kept (ComfyUI's fallback), less a leading blank line.
    assert llama_encoder.user_span(tokenizer, ids[:5]) == (0, 5)


def test_llama_config_is_read_from_the_shapes() -> None:
    shapes = {
        "model.embed_tokens.weight": (128320, 4096),
        "model.layers.0.self_attn.q_proj.weight": (4096, 4096),
        "model.layers.0.self_attn.k_proj.weight": (1024, 4096),
        "model.layers.0.mlp.gate_proj.weight": (14336, 4096),
        "model.layers.31.input_layernorm.weight": (4096,),
        "model.norm.weight": (4096,),
    }
    assert llama_encoder.find_prefix(set(shapes)) == "model."
    config = llama_encoder.infer_config(shapes, "model.")
    assert (config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"]) == (32, 32, 8)
    assert config["intermediate_size"] == 14336 and config["rope_theta"] == 500000.0


@pytest.mark.slow
def test_t2v_workflow_through_comfyd_run_gives_a_playable_mp4(
    hunyuan_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import av
    import numpy as np

    graph = tiny_workflow()
    path = tmp_path / "hunyuan_t2v.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(hunyuan_models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success"
    videos = sorted(out.rglob("*.mp4"))
    assert [p.name for p in videos] == ["hunyuan_video_00001_.mp4"]
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3)
    assert not np.array_equal(frames[0], frames[-1])  # a video, not one picture repeated


def test_tencent_layout_loads_the_same_weights(hunyuan_models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models import families
    from comfyd.models.devices import compute_plan
    from comfyd.models.tensorfile import TensorFile

    stored = load_file(str(hunyuan_models / _hunyuan_tiny.NAMES["t2v"]))
    tencent = {}
    for key, value in stored.items():
        for ours, theirs in TENCENT:
            key = key.replace(ours, theirs)
        tencent[key] = value
    save_file(tencent, str(tmp_path / "tencent.safetensors"))
    plan = compute_plan("cpu", "fp32")
    family = families.get("hunyuan-video")
    nets = []
    for path in (hunyuan_models / _hunyuan_tiny.NAMES["t2v"], tmp_path / "tencent.safetensors"):
        with TensorFile(path) as tf:
            nets.append(family.load_diffusion_model(tf, family.diffusion_model_prefix(set(tf.keys())), plan, "default")[0])
    first, second = (n.state_dict() for n in nets)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_bad_hunyuan_inputs_get_clear_errors(hunyuan_models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models import families
    from comfyd.models.devices import compute_plan
    from comfyd.models.manager import ModelManager
    from comfyd.models.tensorfile import TensorFile
    from comfyd.settings import Settings

    # A Llama encoder without Llama 3's tokenizer beside it: told where to put one.
    models = tmp_path / "models"
    shutil.copytree(hunyuan_models, models)
    shutil.rmtree(models / "text_encoders" / llama_encoder.TOKENIZER_FOLDER)
    manager = ModelManager(Settings(models_dir=models, home=tmp_path / "home"))
    names = [Path(_hunyuan_tiny.NAMES[k]).name for k in ("clip_l", "llama")]
    with pytest.raises(ValueError, match="llama_tokenizer/tokenizer.json"):
        manager.load_clip(names, "hunyuan_video")
    # Two CLIP-Ls: the second has no place (the CLIP takes one of each kind).
    with pytest.raises(ValueError, match="clip text encoder\\) has no place in a hunyuan-video CLIP"):
        manager.load_clip([names[0], names[0]], "hunyuan_video")
    # An image-to-video transformer (33 input channels) is refused by name.
    state = dict(load_file(str(hunyuan_models / _hunyuan_tiny.NAMES["t2v"])))
    state["img_in.proj.weight"] = torch.zeros(256, 33, 1, 2, 2)
    save_file(state, str(tmp_path / "i2v.safetensors"))
    with TensorFile(tmp_path / "i2v.safetensors") as tf, pytest.raises(ValueError, match="image-to-video"):
        families.get("hunyuan-video").load_diffusion_model(tf, "", compute_plan("cpu", "fp32"), "default")


def test_header_probe_names_the_files_for_comfyd_check(hunyuan_models: Path) -> None:
    from comfyd.models.header_probe import detect_family, is_supported, read_header

    found = {k: detect_family(read_header(hunyuan_models / _hunyuan_tiny.NAMES[k])) for k in ("t2v", "llama", "vae")}
    assert found == {"t2v": "hunyuan_video", "llama": "llama_text_encoder", "vae": "hunyuan_video_vae"}
    assert all(is_supported(family) for family in found.values())


def test_fp8_scaled_llama_file_is_dequantized(hunyuan_models: Path, tmp_path: Path) -> None:
    """llava_llama3_fp8_scaled's layout: fp8 linear weights, each with a `scale_weight`, and a
    `scaled_fp8` marker; the weights comfyd builds are stored x scale."""
    from safetensors.torch import load_file, save_file

    from comfyd.models.devices import compute_plan
    from comfyd.models.tensorfile import TensorFile

    state = load_file(str(hunyuan_models / _hunyuan_tiny.NAMES["llama"]))
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith("_proj.weight"):
            scale = value.float().abs().max() / 448.0
            scaled[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            scaled[key.removesuffix(".weight") + ".scale_weight"] = scale.reshape(())
        else:
            scaled[key] = value
    save_file(scaled, str(tmp_path / "llama_fp8_scaled.safetensors"))
    shutil.copytree(hunyuan_models / "text_encoders" / llama_encoder.TOKENIZER_FOLDER,
                    tmp_path / llama_encoder.TOKENIZER_FOLDER)  # fmt: skip
    plan = compute_plan("cpu", "fp32")
    with TensorFile(hunyuan_models / _hunyuan_tiny.NAMES["llama"]) as tf:
        plain = llama_encoder.load(tf, "model.", plan.device, torch.float32)
    with TensorFile(tmp_path / "llama_fp8_scaled.safetensors") as tf:
        fp8 = llama_encoder.load(tf, "model.", plan.device, torch.float32)
    name = "layers.0.self_attn.q_proj.weight"
    original = plain.state_dict()[name]
    restored = fp8.state_dict()[name]
    assert restored.dtype == torch.float32
    assert float((restored - original).abs().max()) <= 0.07 * float(original.abs().max())  # fp8's 3 mantissa bits
    assert not torch.equal(restored, original)  # it went through fp8, and came back scaled
    tokens = llama_encoder.tokenize(llama_encoder.require_tokenizer(fp8), "a red fox")
    assert llama_encoder.encode(fp8, tokens).shape == llama_encoder.encode(plain, tokens).shape


@pytest.mark.slow
def test_t2v_workflow_through_the_server_gives_a_playable_mp4(hunyuan_models: Path, start_server) -> None:  # noqa: F811
    from comfyd.runtime import build_runtime

    server = start_server(runtime=build_runtime, models_dir=hunyuan_models)
    video_through_server(server, tiny_workflow(), "75", FRAMES, SIZE)
