"""SD3 / SD3.5 end to end on tiny random files in ComfyUI's layouts (`make-tiny --family sd3`).

The canonical SD3.5 workflow (comfyd/workflows/sd3.5_api.json: CheckpointLoaderSimple, two
CLIPTextEncodes, ModelSamplingSD3, EmptySD3LatentImage, KSampler, VAEDecode, SaveImage) runs
through `comfyd run` on the all-in-one checkpoint and on the split files (UNETLoader,
TripleCLIPLoader, VAELoader), and the split one through the server (POST /prompt -> /history ->
/view); every picture is held to diffusers' StableDiffusion3Pipeline on the same files, prompt and
initial noise (>= 40 dB; sd3_reference.py says why not ComfyUI).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.cli import main
from comfyd.models.families import _sd3_tiny
from comfyd.models.families.sd3 import join_sd3
from tests.families.sd3_reference import NAMES, SIZE, psnr, reference, tiny_workflow
from tests.server.conftest import start_server  # noqa: F401  (the server fixture, shared)


@pytest.fixture(scope="module")
def sd3_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sd3") / "models"
    assert main(["models", "make-tiny", str(root), "--family", "sd3"]) == 0  # no UNet ControlNet for it
    written = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert written == sorted(_sd3_tiny.NAMES.values())
    return root


@pytest.fixture(scope="module")
def expected(sd3_models: Path) -> np.ndarray:
    theirs = reference(sd3_models, tiny_workflow())
    assert theirs.shape == (SIZE, SIZE, 3) and theirs.std() > 20  # noise-like: PSNR is strict
    return theirs


def _run(graph: dict, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sd3.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))


@pytest.mark.slow
def test_checkpoint_workflow_through_comfyd_run_matches_diffusers(
    sd3_models: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = _run(tiny_workflow(), sd3_models, tmp_path, capsys)
    assert psnr(ours, expected) >= 40.0


@pytest.mark.slow
def test_split_files_workflow_draws_the_same_picture(
    sd3_models: Path, expected: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = _run(tiny_workflow(split=True), sd3_models, tmp_path, capsys)
    assert psnr(ours, expected) >= 40.0


@pytest.mark.slow
def test_split_workflow_through_the_server_matches_diffusers(
    sd3_models: Path, expected: np.ndarray, start_server  # noqa: F811
) -> None:
    from comfyd.runtime import build_runtime

    server = start_server(runtime=build_runtime, models_dir=sd3_models)
    with server.client() as http:
        info = http.get("/object_info/TripleCLIPLoader").json()["TripleCLIPLoader"]
        assert NAMES["clip_g"] in info["input"]["required"]["clip_name3"][1]["options"]
        answer = http.post("/prompt", json={"prompt": tiny_workflow(split=True)})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        job = server.wait_job(prompt_id, timeout=120)
        assert job.status.value == "succeeded", job
        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        png = http.get("/view", params=entry["outputs"]["9"]["images"][0])
    assert png.status_code == 200
    ours = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
    assert psnr(ours, expected) >= 40.0


def test_join_follows_comfyui_layout() -> None:
    l_out, g_out, t5_out = torch.randn(1, 77, 768), torch.randn(1, 77, 1280), torch.randn(1, 77, 4096)
    l_pooled, g_pooled = torch.randn(1, 768), torch.randn(1, 1280)
    context, pooled = join_sd3({"l": (l_out, l_pooled), "g": (g_out, g_pooled), "t5xxl": (t5_out, None)})
    assert context.shape == (1, 154, 4096) and pooled.shape == (1, 2048)
    assert torch.equal(context[:, :77, :768], l_out) and torch.equal(context[:, :77, 768:2048], g_out)
    assert not context[:, :77, 2048:].any() and torch.equal(context[:, 77:], t5_out)
    # CLIP-G alone sits after 768 zero columns; the absent CLIP-L's pooled part is zeros.
    context, pooled = join_sd3({"g": (g_out, g_pooled)})
    assert context.shape == (1, 77, 4096) and torch.equal(context[:, :, 768:2048], g_out)
    assert not pooled[:, :768].any() and torch.equal(pooled[:, 768:], g_pooled)
    # T5 alone: its output, and a zero pooled vector.
    context, pooled = join_sd3({"t5xxl": (t5_out, None)})
    assert torch.equal(context, t5_out) and not pooled.any() and pooled.shape == (1, 2048)


@pytest.mark.slow
def test_split_clip_loaders_and_sd3_text_encode(sd3_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import conditioning_from_tokens, encode_text
    from comfyd.nodes.conditioning.sd3 import sd3_tokens
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=sd3_models, home=tmp_path / "home"))
    triple = manager.load_clip([NAMES["t5xxl"], NAMES["clip_g"], NAMES["clip_l"]], "sd3")
    assert set(triple.text_encoders) == {"l", "g", "t5xxl"}
    _, ckpt_clip, _ = manager.load_checkpoint(NAMES["checkpoint"])
    prompt = "a red (fox:1.2) in the snow"
    cond, extra = encode_text(triple, prompt)[0]
    ckpt_cond, ckpt_extra = encode_text(ckpt_clip, prompt)[0]
    # 77 CLIP tokens, then T5 padded to 77 tokens; L (32) + G (64) padded to T5's width.
    assert cond.shape == (1, 154, 128) and extra["pooled_output"].shape == (1, 96)
    assert torch.equal(cond, ckpt_cond) and torch.equal(extra["pooled_output"], ckpt_extra["pooled_output"])
    # CLIPTextEncodeSD3 with the same prompt everywhere is CLIPTextEncode.
    same = conditioning_from_tokens(triple, sd3_tokens(triple, prompt, prompt, prompt, "none"))[0]
    assert torch.equal(same[0], cond)
    # empty_padding "none": empty CLIP prompts leave both CLIPs out (zero pooled), an empty T5
    # prompt is its end token alone.
    none = conditioning_from_tokens(triple, sd3_tokens(triple, "", "", "", "none"))[0]
    assert none[0].shape == (1, 1, 128) and not none[1]["pooled_output"].any()
    padded = conditioning_from_tokens(triple, sd3_tokens(triple, "", "", "", "empty_prompt"))[0]
    assert padded[0].shape == (1, 154, 128) and padded[1]["pooled_output"].any()
    # Only a G prompt with "none": L gets the empty prompt's chunk (ComfyUI pads to G's count).
    only_g = sd3_tokens(triple, "", prompt, "", "none")
    assert len(only_g["l"]) == len(only_g["g"]) == 1 and only_g["t5xxl"] == []
    # Subsets: DualCLIPLoader sd3 with CLIP-L + CLIP-G (no T5), CLIPLoader sd3 with T5 alone.
    dual = manager.load_clip([NAMES["clip_l"], NAMES["clip_g"]], "sd3")
    dual_cond, dual_extra = encode_text(dual, prompt)[0]
    assert dual_cond.shape == (1, 77, 4096) and torch.equal(dual_cond[:, :, :96], cond[:, :77, :96])
    t5_only = manager.load_clip([NAMES["t5xxl"]], "sd3")
    assert torch.equal(encode_text(t5_only, prompt)[0][0], cond[:, 77:])
    with pytest.raises(ValueError, match="has no place in a sd3 CLIP"):
        manager.load_clip([NAMES["clip_l"], NAMES["clip_l"]], "sd3")
    model = manager.load_diffusion_model(NAMES["transformer"])
    assert model.family == "sd3" and model.prediction == "const"


def test_skip_layer_guidance_patches_the_sd3_network(sd3_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.nodes.advanced.skip_layer_guidance import SkipLayerGuidanceSD3
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=sd3_models, home=tmp_path / "home"))
    model = manager.load_diffusion_model(NAMES["transformer"])
    assert SkipLayerGuidanceSD3().run(None, model, "", 3.0, 0.01, 0.15)[0] is model  # type: ignore[arg-type]
    (patched,) = SkipLayerGuidanceSD3().run(None, model, "0, x1", 3.0, 0.01, 0.15)  # type: ignore[arg-type]
    patch = patched.guidance.post_cfg[-1]
    assert patch.layers == (0, 1) and patch.scale == 3.0
    schedule = model.model_sampling.schedule
    assert (patch.sigma_start, patch.sigma_end) == (schedule.percent_to_sigma(0.01), schedule.percent_to_sigma(0.15))
    # The network skips what it is told to: a skipped block changes the prediction.
    x, t, context, pooled = torch.randn(1, 16, 8, 8), torch.tensor([500.0]), torch.randn(1, 154, 128), torch.randn(1, 96)
    with torch.inference_mode():
        full, skipped = (model.unet(x, t, context, {"pooled": pooled}, skip_layers=s)[0] for s in (None, [0]))
    assert full.shape == skipped.shape and not torch.allclose(full, skipped)


def test_scaled_fp8_t5_reads_as_its_dequantized_weights(sd3_models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models import standalone, t5_encoder
    from comfyd.models.devices import compute_plan

    # ComfyUI's scaled-fp8 layout: fp8 linear weights, a scale_weight each, a scaled_fp8 marker.
    plain = load_file(str(sd3_models / _sd3_tiny.NAMES["t5xxl"]))
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    dequantized: dict[str, torch.Tensor] = {}
    for key, tensor in plain.items():
        if key.endswith(".weight") and tensor.ndim == 2 and key != "shared.weight":
            scale = tensor.float().abs().max() / 448.0
            quantized = (tensor.float() / scale).to(torch.float8_e4m3fn)
            scaled[key], scaled[key[: -len("weight")] + "scale_weight"] = quantized, scale
            dequantized[key] = quantized.float() * scale
        else:
            scaled[key] = dequantized[key] = tensor
    save_file(scaled, str(tmp_path / "t5-scaled.safetensors"))
    save_file(dequantized, str(tmp_path / "t5-dequantized.safetensors"))
    plan = compute_plan("cpu", "fp32")
    kind, ours, _ = standalone.load_text_encoder(tmp_path / "t5-scaled.safetensors", plan, False)
    _, expected, _ = standalone.load_text_encoder(tmp_path / "t5-dequantized.safetensors", plan, False)
    assert kind == "t5"
    tokens = t5_encoder.tokenize("a red fox", 77)
    assert torch.equal(t5_encoder.encode(ours, tokens), t5_encoder.encode(expected, tokens))


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_loras_patch_the_stored_mmdit_weights_through_the_key_map(fmt: str, sd3_models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models.families._sd3_transformer import SD3NetworkTranslator
    from comfyd.models.keymap import ROWS, apply_op
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    stored = load_file(str(sd3_models / _sd3_tiny.NAMES["transformer"]))
    manager = ModelManager(Settings(models_dir=sd3_models, home=tmp_path / "home", device="cpu"))
    model = manager.load_diffusion_model(NAMES["transformer"])
    translator = SD3NetworkTranslator(dict(model.unet.config))
    gen = torch.Generator().manual_seed(len(fmt))
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    # kohya names of stored weights (a fused q/k/v, a plain one, the swapped final modulation);
    # diffusers names of the pieces (a q/k/v third of each stream).
    layers = (("joint_blocks.0.x_block.attn.qkv", "joint_blocks.1.x_block.attn.proj", "final_layer.adaLN_modulation.1")
              if fmt == "kohya" else ("transformer_blocks.0.attn.to_k", "transformer_blocks.1.attn.add_q_proj"))
    for layer in layers:
        source = translator.source(f"{layer}.weight") if fmt == "diffusers" else None
        key = source.key if source is not None else f"{layer}.weight"
        rows = source.stop - source.start if source is not None and source.op == ROWS else stored[key].shape[0]
        down, up = torch.randn(4, stored[key].shape[1], generator=gen) * 0.1, torch.randn(rows, 4, generator=gen) * 0.1
        name = f"transformer.{layer}" if fmt == "diffusers" else f"lora_unet_{layer.replace('.', '_')}"
        names = ("lora_A", "lora_B") if fmt == "diffusers" else ("lora_down", "lora_up")
        tensors |= {f"{name}.{names[0]}.weight": down, f"{name}.{names[1]}.weight": up, f"{name}.alpha": torch.tensor(2.0)}
        full = deltas.setdefault(key, torch.zeros(stored[key].shape))
        if source is not None and source.op == ROWS:
            full[source.start : source.stop] += up @ down * 0.5
        else:
            full += up @ down * 0.5
    (sd3_models / "loras").mkdir(exist_ok=True)
    save_file(tensors, str(sd3_models / "loras" / f"sd3-{fmt}.safetensors"))
    base = {k: v.detach().clone() for k, v in model.unet.state_dict().items()}
    with model.with_loras(manager.lora_patch(f"sd3-{fmt}.safetensors", 0.8)).patched() as patched:
        after = {k: v.detach().clone() for k, v in patched.state_dict().items()}
    changed = set()
    for name, value in after.items():
        source = translator.source(name)
        if source is None or source.key not in deltas:
            assert torch.equal(value, base[name]), name
            continue
        want = apply_op(stored[source.key].float() + 0.8 * deltas[source.key], source)
        torch.testing.assert_close(value, want, rtol=0, atol=1e-6)
        if not torch.equal(value, base[name]):
            changed.add(name)
    # A fused q/k/v's LoRA changes its three diffusers projections; a diffusers LoRA its own.
    assert len(changed) == (3 + 1 + 1 if fmt == "kohya" else 2), sorted(changed)
    assert all(torch.equal(v, base[k]) for k, v in model.unet.state_dict().items())  # restored bit for bit
