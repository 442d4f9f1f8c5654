"""HiDream-I1: the transformer held to ComfyUI itself, the text path's rules, and the canonical
workflow end to end on tiny files (`make-tiny --family hidream`).

ComfyUI 0.3.64 fixes every size of a HiDream transformer and of its text encoders, so it cannot
load tiny files unaided. `data/hidream_comfyui_reference.safetensors` holds the latent ComfyUI's
own HiDream model and KSampler produced (bench/hidream_comfyui_parity.py --save-reference) on a
cut transformer (2+2 blocks of 2 heads, ComfyUI's widths) with fixed conditioning tensors, at a
non-square 64x48; the test rebuilds the same seeded inputs and holds comfyd's sampler to it. The
Llama all-layers text path is held to ComfyUI's modules by `--text` of the same bench.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from comfyd.cli import main
from comfyd.models import hidream_llama
from comfyd.models.families import _hidream_tiny, hidream
from comfyd.models.families import _hidream_transformer as transformer
from comfyd.models.tiny import make_tiny
from tests.server.conftest import start_server  # noqa: F401  (the server fixture, shared)

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "hidream_comfyui_reference.safetensors"
WORKFLOW = HERE.parents[1] / "comfyd" / "workflows" / "hidream_i1_dev_api.json"
NAMES = {k: Path(v).name for k, v in _hidream_tiny.NAMES.items()}
SIZE = 64


def test_cut_transformer_and_sampler_match_comfyuis_latent(tmp_path: Path) -> None:
    import bench.hidream_comfyui_parity as parity

    parity.make_files(tmp_path, short=True)
    ours, _ = parity.comfyd_sample(tmp_path, short=True)
    theirs = load_file(str(REFERENCE))["samples"]
    assert ours.shape == theirs.shape == (1, 16, parity.HEIGHT // 8, parity.WIDTH // 8)
    assert float((ours - theirs).abs().max()) < 1e-4 * float(theirs.std())


def test_full_size_shapes_give_comfyuis_fixed_config() -> None:
    shapes = {
        "x_embedder.proj.weight": (2560, 64),
        "final_layer.linear.weight": (64, 2560),
        "p_embedder.pooled_embedder.linear_1.weight": (2560, 2048),
        "caption_projection.0.linear.weight": (2560, 4096),
        "caption_projection.48.linear.weight": (2560, 4096),
        **{f"double_stream_blocks.{i}.block.attn1.to_q.weight": (2560, 2560) for i in range(16)},
        **{f"single_stream_blocks.{i}.block.attn1.to_q.weight": (2560, 2560) for i in range(32)},
        **{f"double_stream_blocks.0.block.ff_i.experts.{e}.w1.weight": (6912, 2560) for e in range(4)},
    }
    config = transformer.infer_config({f"model.diffusion_model.{k}": v for k, v in shapes.items()}, "model.diffusion_model.")
    # comfy/model_detection.py's HiDream branch, value for value.
    assert config["num_attention_heads"] == 20 and config["attention_head_dim"] == 128
    assert (config["num_layers"], config["num_single_layers"]) == (16, 32)
    assert (config["num_routed_experts"], config["num_activated_experts"]) == (4, 2)
    assert config["caption_channels"] == [4096, 4096] and config["text_emb_dim"] == 2048
    assert config["axes_dims_rope"] == [64, 32, 32] and config["in_channels"] == config["out_channels"] == 16
    assert config["llama_layers"] == list(range(32)) + [31] * 16


def test_header_probe_names_a_hidream_file(tmp_path: Path) -> None:
    from comfyd.models.header_probe import detect_family, is_supported, read_header

    keys = ("caption_projection.0.linear.weight", "double_stream_blocks.0.block.attn1.to_q.weight", "x_embedder.proj.weight")
    for prefix in ("", "model.diffusion_model."):
        path = tmp_path / f"hidream{len(prefix)}.safetensors"
        save_file({prefix + k: torch.zeros(1, 1) for k in keys}, str(path))
        family = detect_family(read_header(path))
        assert family == "hidream" and is_supported(family)


def test_absent_encoders_are_comfyuis_zeros() -> None:
    t5 = torch.randn(1, 128, 4096)
    context, pooled = hidream.join_hidream({"t5xxl": (t5, None)})
    assert torch.equal(context, t5) and torch.equal(pooled, torch.zeros(1, 2048))
    l_pooled = torch.randn(1, 768)
    context, pooled = hidream.join_hidream({"l": (torch.randn(1, 77, 768), l_pooled)})
    assert torch.equal(context, torch.zeros(1, 128, 4096))
    assert torch.equal(pooled[:, :768], l_pooled) and not pooled[:, 768:].any()
    assert torch.equal(hidream.llama_stack({}), torch.zeros(1, 32, 1, 4096))
    stack = torch.randn(1, 4, 130, 256)
    assert hidream.FAMILY.conditioning_extras({"llama": (stack, None)})["conditioning_llama3"] is stack
    with pytest.raises(ValueError, match="HiDream CLIP"):
        hidream.hidream_inputs({"pooled_output": pooled}, (8, 8))
    # A stack shorter than the blocks' layer list repeats its last layer (a full one has 32).
    by_layer = transformer.llama_by_layer(stack, 6)
    assert by_layer.shape == (6, 1, 130, 256) and torch.equal(by_layer[5], stack[:, 3])


def test_text_sequences_follow_comfyuis_tokenizers() -> None:
    from comfyd.models.families._hunyuan_tiny import tiny_tokenizer
    from comfyd.models.text_encoding import tokenize_for_encoder

    tokenizer = tiny_tokenizer()
    begin, eot = tokenizer.token_to_id("<|begin_of_text|>"), tokenizer.token_to_id("<|eot_id|>")
    tokens = hidream_llama.tokenize(tokenizer, "a red (fox:1.2)")
    assert len(tokens) == 128 and tokens[0] == (begin, 1.0) and tokens[-1] == (eot, 1.0)
    text = [(t, w) for t, w in tokens[1:] if t != eot]
    weights = [w for _, w in text]
    assert weights[0] == 1.0 and weights[-1] == 1.2 and set(weights) == {1.0, 1.2}
    ids = [t for t, _ in tokens]
    assert hidream_llama.attention_mask(ids, eot) == [1] * (1 + len(text)) + [0] * (128 - 1 - len(text))
    assert len(hidream_llama.tokenize(tokenizer, "a red fox " * 60)) > 128  # a long prompt is not cut

    clip = SimpleNamespace(family="hidream", tokenizers={})
    [t5] = tokenize_for_encoder(clip, "t5xxl", "a red fox")  # type: ignore[arg-type]
    assert len(t5) == 128 and t5[-1] == (0, 1.0)
    [long] = tokenize_for_encoder(clip, "t5xxl", "a red fox in the snow " * 40)  # type: ignore[arg-type]
    assert len(long) == 128 and long[-1] == (1, 1.0)  # the first 127 tokens and the end token
    # A short weighted segment that does not fit moves to ComfyUI's second chunk, which HiDream
    # drops: the first ends early, unpadded (bench/hidream_comfyui_parity.py --text checks these).
    prefix = ("a small red fox runs across a snowy field at dawn under a pale winter sky, " * 9)[:430]
    [cut] = tokenize_for_encoder(clip, "t5xxl", prefix + " (bright red scarf:1.2) and more")  # type: ignore[arg-type]
    assert len(cut) == 127 and cut[-1] == (1, 1.0) and all(w == 1.0 for _, w in cut)


def test_loras_in_comfyuis_hidream_formats_patch_the_named_weights(tmp_path: Path) -> None:
    """kohya `lora_unet_*`, `diffusion_model.*`, SimpleTuner `transformer.*` (lora_A / lora_B) and
    `lycoris_*` (comfy/lora.py's HiDream keys): W + strength * up @ down * alpha / rank."""
    from comfyd.models import tiny
    from comfyd.models.keymap import to_original
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    config = {**_hidream_tiny.tiny_transformer_config(32, 64, 48), "num_attention_heads": 1}
    net = tiny.random_module(transformer.empty_transformer(config), 0, "hidream-lora")
    stored = to_original(net.state_dict(), transformer.HiDreamTranslator(""))
    (tmp_path / "diffusion_models").mkdir()
    (tmp_path / "loras").mkdir()
    save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp_path / "diffusion_models" / "hd.safetensors"))
    layers = ("double_stream_blocks.0.block.attn1.to_q", "single_stream_blocks.0.block.ff_i.experts.2.w3",
              "caption_projection.1.linear")  # fmt: skip
    manager = ModelManager(Settings(models_dir=tmp_path, home=tmp_path / "home", device="cpu", dtype="fp32"))
    model = manager.load_diffusion_model("hd.safetensors")
    base = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for fmt in ("kohya", "comfyui", "simpletuner", "lycoris"):
        tensors, deltas = {}, {}
        for layer in layers:
            out_dim, in_dim = stored[f"{layer}.weight"].shape
            down, up = torch.randn(4, in_dim, generator=gen) * 0.1, torch.randn(out_dim, 4, generator=gen) * 0.1
            if fmt == "simpletuner":
                tensors |= {f"transformer.{layer}.lora_A.weight": down, f"transformer.{layer}.lora_B.weight": up}
                deltas[f"{layer}.weight"] = up @ down
                continue
            name = {"kohya": "lora_unet_" + layer.replace(".", "_"), "lycoris": "lycoris_" + layer.replace(".", "_"),
                    "comfyui": f"diffusion_model.{layer}"}[fmt]  # fmt: skip
            tensors |= {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0)}
            deltas[f"{layer}.weight"] = up @ down * 0.5
        save_file(tensors, str(tmp_path / "loras" / f"{fmt}.safetensors"))
        with model.with_loras(manager.lora_patch(f"{fmt}.safetensors", 0.8)).patched() as patched:
            after = {k: v.detach().clone() for k, v in patched.state_dict().items()}
        for name, value in after.items():
            key = name.removeprefix("transformer.")
            if key in deltas:
                torch.testing.assert_close(value, stored[key].float() + 0.8 * deltas[key], rtol=0, atol=1e-5)
            else:
                assert torch.equal(value, base[name]), (fmt, name)
    assert all(torch.equal(v, base[k]) for k, v in model.unet.state_dict().items())  # restored


def test_long_clip_files_take_chunks_of_their_position_count(tmp_path: Path) -> None:
    """HiDream's "long" CLIP-L / CLIP-G have 248 positions; ComfyUI's CLIP loaders then chunk the
    prompt by 248 (long_clipl.py), so a 100-token prompt is one chunk and pools at its end."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from comfyd.models import tiny
    from comfyd.models.families._sd3_tiny import tiny_clip_configs
    from comfyd.models.loader import empty_text_encoder
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text, tokenize_for_encoder
    from comfyd.settings import Settings

    config = {**tiny_clip_configs()[0], "max_position_embeddings": 248}
    clip_l = tiny.random_module(empty_text_encoder(config), 0, "hidream-long-clip-l")
    state = {k: v.contiguous() for k, v in clip_l.state_dict().items() if not k.endswith("position_ids")}
    (tmp_path / "text_encoders").mkdir()
    save_file(state, str(tmp_path / "text_encoders" / "long-clip-l.safetensors"))
    manager = ModelManager(Settings(models_dir=tmp_path, home=tmp_path / "home", device="cpu", dtype="fp32"))
    clip = manager.load_clip(["long-clip-l.safetensors"], "hidream")
    prompt = "a small red fox runs across a snowy field at dawn, " * 9  # about 100 tokens
    [chunk] = tokenize_for_encoder(clip, "l", prompt)
    ids = [int(t) for t, _ in chunk]
    assert len(ids) == 248 and 77 < ids.index(49407) < 246  # one chunk, its end token past 77
    reference = CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval()
    reference.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([ids])).text_embeds
    [[_, extra]] = encode_text(clip, prompt)
    torch.testing.assert_close(extra["pooled_output"][:, :32], expected, rtol=0, atol=1e-5)


# --- the canonical workflow on tiny files ----------------------------------------------------------


@pytest.fixture(scope="module")
def hidream_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hidream") / "models"
    written = make_tiny(root, family="hidream")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_hidream_tiny.NAMES.values())
    return root


def tiny_workflow() -> dict:
    """The shipped HiDream-I1 dev workflow on the tiny files: 64x64, 2 euler steps at cfg 3 (both
    prompts run), the four encoders named in another order than ComfyUI's recipe."""
    graph = json.loads(WORKFLOW.read_text())
    graph["54"]["inputs"] = {
        "clip_name1": NAMES["t5xxl"], "clip_name2": NAMES["llama"], "clip_name3": NAMES["clip_g"],
        "clip_name4": NAMES["clip_l"],
    }  # fmt: skip
    graph["55"]["inputs"]["vae_name"] = NAMES["vae"]
    graph["69"]["inputs"]["unet_name"] = NAMES["transformer"]
    graph["53"]["inputs"].update(width=SIZE, height=SIZE)
    graph["3"]["inputs"].update(steps=2, cfg=3.0, sampler_name="euler")
    return graph


@pytest.mark.slow
def test_canonical_workflow_through_comfyd_run_and_the_server(
    hidream_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], start_server  # noqa: F811
) -> None:
    from comfyd.runtime import build_runtime

    path = tmp_path / "hidream.json"
    path.write_text(json.dumps(tiny_workflow()))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(hidream_models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    ran = np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))
    assert ran.shape == (SIZE, SIZE, 3) and ran.std() > 5

    server = start_server(runtime=build_runtime, models_dir=hidream_models)
    with server.client() as http:
        info = http.get("/object_info/QuadrupleCLIPLoader").json()["QuadrupleCLIPLoader"]
        assert NAMES["llama"] in info["input"]["required"]["clip_name4"][1]["options"]
        answer = http.post("/prompt", json={"prompt": tiny_workflow()})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        png = http.get("/view", params=entry["outputs"]["9"]["images"][0])
    assert png.status_code == 200
    served = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert np.array_equal(served, ran)


@pytest.mark.slow
def test_hidream_clips_and_text_encode(hidream_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.nodes.conditioning.hidream import CLIPTextEncodeHiDream
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=hidream_models, home=tmp_path / "home", device="cpu"))
    quad = manager.load_clip([NAMES["llama"], NAMES["clip_l"], NAMES["t5xxl"], NAMES["clip_g"]], "hidream")
    assert sorted(quad.text_encoders) == ["g", "l", "llama", "t5xxl"]
    prompt = "a red fox in the snow"
    [[cond, extra]] = encode_text(quad, prompt)
    assert cond.shape == (1, 128, 128)  # the tiny T5's width
    assert extra["pooled_output"].shape == (1, 32 + 64)  # projected CLIP-L | CLIP-G
    assert extra["conditioning_llama3"].shape == (1, 4, 128, 256)  # every layer of the tiny Llama
    assert "attention_mask" not in extra  # ComfyUI's HiDream conditioning carries none
    ctx = SimpleNamespace(check_interrupted=lambda: None, env=SimpleNamespace(embeddings=None))
    [[same, same_extra]] = CLIPTextEncodeHiDream().run(ctx, quad, prompt, prompt, prompt, prompt)[0]  # type: ignore[arg-type]
    assert torch.equal(same, cond) and torch.equal(same_extra["conditioning_llama3"], extra["conditioning_llama3"])
    [[other, other_extra]] = CLIPTextEncodeHiDream().run(ctx, quad, prompt, prompt, prompt, "a cat")[0]  # type: ignore[arg-type]
    assert torch.equal(other, cond) and not torch.equal(other_extra["conditioning_llama3"], extra["conditioning_llama3"])

    # Any subset (DualCLIPLoader / CLIPLoader type hidream): the rest are ComfyUI's zeros.
    dual = manager.load_clip([NAMES["t5xxl"], NAMES["clip_l"]], "hidream")
    [[cond, extra]] = encode_text(dual, prompt)
    assert extra["pooled_output"].shape == (1, 32 + 1280) and not extra["pooled_output"][:, 32:].any()
    assert torch.equal(extra["conditioning_llama3"], torch.zeros(1, 32, 1, 4096))

    # CLIPLoader type hidream with the Llama alone: a zero context and pooled vector, its layers.
    single = manager.load_clip([NAMES["llama"]], "hidream")
    [[cond, extra]] = encode_text(single, prompt)
    assert torch.equal(cond, torch.zeros(1, 128, 4096)) and torch.equal(extra["pooled_output"], torch.zeros(1, 2048))
    assert extra["conditioning_llama3"].shape == (1, 4, 128, 256)

    # A Llama file without Llama 3's tokenizer beside it is refused, naming where it goes.
    lone = tmp_path / "lone" / "text_encoders"
    lone.mkdir(parents=True)
    save_file(load_file(str(hidream_models / _hidream_tiny.NAMES["llama"])), str(lone / "llama.safetensors"))
    bare = ModelManager(Settings(models_dir=lone.parent, home=tmp_path / "home2", device="cpu"))
    with pytest.raises(ValueError, match="llama_tokenizer"):
        bare.load_clip(["llama.safetensors"], "hidream")
