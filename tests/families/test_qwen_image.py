"""Qwen-Image end to end on tiny random files in ComfyUI's split layout (`make-tiny --family qwen-image`).

The canonical workflow (comfyd/workflows/qwen_image_api.json: UNETLoader, CLIPLoader type
qwen_image, VAELoader, ModelSamplingAuraFlow 3.1, EmptySD3LatentImage, KSampler, VAEDecode,
SaveImage) runs through `comfyd run`; at cfg 1 its picture is held to diffusers' QwenImagePipeline
on the same files, prompt and initial noise, and the prompt's conditioning to the pipeline's
(qwen_image_reference.py says why not ComfyUI; bench/qwen_image_comfyui_parity.py holds the
transformer, sampler, VAE and text path to ComfyUI's own modules).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.cli import main
from comfyd.models import qwen25_encoder
from comfyd.models.families import _qwen_image_tiny
from comfyd.models.families._qwen_image_transformer import ComfyRope
from comfyd.models.tiny import make_tiny
from tests.families.qwen_image_reference import SIZE, psnr, qwen_pipeline, reference, tiny_workflow

PROMPT_IDS = [64, 2518, 38835, 304, 279, 11794]  # "a red fox in the snow", ComfyUI's QwenImageTokenizer


@pytest.fixture(scope="module")
def qwen_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("qwen") / "models"
    written = make_tiny(root, family="qwen-image")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_qwen_image_tiny.NAMES.values())
    return root


def _run(graph: dict, models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    path = tmp_path / "qwen_image.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))


@pytest.mark.slow
def test_canonical_workflow_through_comfyd_run_matches_diffusers(
    qwen_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tiny_workflow(KSampler={"cfg": 1.0})
    ours = _run(graph, qwen_models, tmp_path, capsys)
    theirs = reference(qwen_models, graph)
    assert ours.shape == (SIZE, SIZE, 3) and theirs.std() > 20  # noise-like: PSNR is strict
    assert psnr(ours, theirs) >= 40.0


@pytest.mark.slow
def test_prompt_conditioning_matches_diffusers(qwen_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=qwen_models, home=tmp_path / "home", device="cpu"))
    clip = manager.load_clip([Path(_qwen_image_tiny.NAMES["qwen25_7b"]).name], "qwen_image")
    pipe = qwen_pipeline(qwen_models)
    for prompt in ("a red fox in the snow", 'a sign that says "Qwen", 中文, (not a weight:1.3)'):
        [[cond, extra]] = encode_text(clip, prompt)
        with torch.inference_mode():
            theirs, mask = pipe.encode_prompt(prompt, device="cpu")
        assert extra["pooled_output"] is None and mask is None
        assert cond.shape == theirs.shape
        assert float((cond - theirs).abs().max()) < 1e-5


@pytest.mark.slow
def test_canonical_workflow_with_negative_prompt_runs(
    qwen_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # cfg 2.5 with the template's negative prompt: a context of another length, run in its own batch.
    image = _run(tiny_workflow(), qwen_models, tmp_path, capsys)
    assert image.shape == (SIZE, SIZE, 3) and image.std() > 5


def test_tokens_and_template_as_comfyui() -> None:
    tokenizer = qwen25_encoder.shipped_tokenizer()
    ids = qwen25_encoder.tokenize(tokenizer, "a red fox in the snow")
    assert qwen25_encoder.template_end(ids) == 34  # diffusers' prompt_template_encode_start_idx
    assert ids[34:40] == PROMPT_IDS and ids[-5:] == [151645, 198, 151644, 77091, 198]
    own = "<|im_start|>user\na red fox in the snow<|im_end|>"  # a template of one's own is kept
    own_ids = qwen25_encoder.tokenize(tokenizer, own)
    assert own_ids[:3] == [151644, 872, 198] and qwen25_encoder.template_end(own_ids) == 3
    assert qwen25_encoder.tokenize(tokenizer, "\\(a\\)") == qwen25_encoder.tokenize(tokenizer, "(a)")
    assert qwen25_encoder.template_end([64, 2518]) == -1  # no <|im_start|>: ComfyUI keeps the last token


def test_rotary_positions_centre_odd_grids_as_comfyui() -> None:
    rope = ComfyRope([4, 14, 14])
    image, text = rope([[(1, 5, 3)]], max_txt_seq_len=2)
    rows, cols = torch.meshgrid(torch.arange(5) - 2, torch.arange(3) - 1, indexing="ij")
    ids = torch.stack([torch.zeros(15), rows.reshape(-1), cols.reshape(-1)], dim=-1).double()
    angles = []
    for axis, dim in enumerate((4, 14, 14)):
        omega = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles.append(ids[:, axis : axis + 1] * omega)
    expected = torch.polar(torch.ones(15, 16, dtype=torch.float64), torch.cat(angles, dim=-1))
    assert image.shape == (15, 16) and torch.allclose(image, expected.to(torch.complex64), atol=1e-6)
    # Text tokens at (t, t, t) from max(5 // 2, 3 // 2) = 2 on: the first angle of each axis is t.
    assert text.shape == (2, 16)
    for first in (0, 2, 9):
        assert torch.allclose(text[:, first].angle(), torch.tensor([2.0, 3.0]), atol=1e-6)


def test_prompts_of_different_lengths_never_share_a_batch() -> None:
    from comfyd.sampling.cfg import CFGGuider, prepare_conds
    from comfyd.sampling.denoiser import UNetDenoiser
    from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule

    class Net(torch.nn.Module):
        exact_context_batches = True

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[int, ...]] = []

        def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, **_: object):
            self.calls.append(tuple(encoder_hidden_states.shape))
            return (x * encoder_hidden_states.mean(),)

    schedule = FlowModelSampling(TimeShiftSchedule(shift=3.1, multiplier=1.0)).schedule
    positive, negative = [[torch.ones(1, 4, 8), {}]], [[torch.ones(1, 8, 8) * 2, {}]]
    x = torch.randn(1, 16, 1, 4, 4)
    for exact, calls in ((True, [(1, 4, 8), (1, 8, 8)]), (False, [(2, 8, 8)])):
        net = Net()
        net.exact_context_batches = exact
        entries = prepare_conds(positive, negative, x.shape, schedule, "cpu", torch.float32)
        guider = CFGGuider(UNetDenoiser(net, schedule, "const", torch.float32, "cpu"), entries, 2.5)
        guider(x, 0.5)
        assert net.calls == calls


def test_bad_qwen_inputs_get_clear_errors(qwen_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=qwen_models, home=tmp_path / "home", device="cpu"))
    names = {k: Path(v).name for k, v in _qwen_image_tiny.NAMES.items()}
    with pytest.raises(ValueError, match="has no place in a flux CLIP"):
        manager.load_clip([names["qwen25_7b"]], "flux")
    (qwen_models / "text_encoders" / "vae-misplaced.safetensors").write_bytes(
        (qwen_models / _qwen_image_tiny.NAMES["vae"]).read_bytes()
    )
    with pytest.raises(ValueError, match="not a text encoder comfyd can load"):
        manager.load_clip(["vae-misplaced.safetensors"], "qwen_image")
    model = manager.load_diffusion_model(names["transformer"])
    with pytest.raises(ValueError, match="single images; got a latent with 3 frames"):
        with torch.inference_mode(), model.patched() as net:
            net(torch.zeros(1, 16, 3, 4, 4), torch.tensor([0.5]), torch.zeros(1, 5, 32))
    # UNETLoader's fp8 storage: the same network within fp8's rounding; odd latent sizes pad.
    x, t, context = torch.randn(1, 16, 1, 5, 7), torch.tensor([0.5]), torch.randn(1, 5, 32)
    fp8 = manager.load_diffusion_model(names["transformer"], "fp8_e4m3fn")
    with torch.inference_mode(), model.patched() as net, fp8.patched() as net8:
        a, b = net(x, t, context)[0], net8(x, t, context)[0]
    assert a.shape == x.shape and torch.isfinite(b).all()
    assert 0 < float((a - b).abs().max()) < 0.25 * float(a.abs().max())


@pytest.mark.slow
def test_scaled_fp8_text_encoder_is_dequantized(qwen_models: Path, tmp_path: Path) -> None:
    """ComfyUI's qwen_2.5_vl_7b_fp8_scaled layout: fp8 weights, a scale per layer, a marker."""
    from safetensors.torch import load_file, save_file

    from comfyd.models import standalone
    from comfyd.models.devices import compute_plan

    state = load_file(str(qwen_models / _qwen_image_tiny.NAMES["qwen25_7b"]))
    scaled: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("proj.weight"):
            scale = value.float().abs().max() / 448.0
            quantized = (value.float() / scale).to(torch.float8_e4m3fn)
            scaled[key], scaled[key.removesuffix("weight") + "scale_weight"] = quantized, scale.reshape(())
            plain[key] = quantized.float() * scale
        else:
            scaled[key] = plain[key] = value.float()
    save_file(scaled, str(tmp_path / "scaled.safetensors"))
    save_file(plain, str(tmp_path / "plain.safetensors"))
    plan = compute_plan("cpu", "fp32")
    ids = qwen25_encoder.tokenize(qwen25_encoder.shipped_tokenizer(), "a red fox in the snow")
    (_, a, _), (_, b, _) = (
        standalone.load_text_encoder(tmp_path / f, plan, False)
        for f in ("scaled.safetensors", "plain.safetensors")
    )
    assert torch.allclose(qwen25_encoder.encode(a, ids), qwen25_encoder.encode(b, ids), atol=1e-5)
    weight = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(a.layers[0].mlp.up_proj.weight, plain[weight])  # scaled: not the raw fp8 values
    assert not torch.equal(a.layers[0].mlp.up_proj.weight, scaled[weight].float())
    vision = "visual.blocks.0.mlp.up_proj.weight"  # the vision tower's layers are scaled too
    assert torch.equal(a.visual.blocks[0].mlp.up_proj.weight, plain[vision])


def test_reference_latents_reach_the_transformer(qwen_models: Path, tmp_path: Path) -> None:
    """A conditioning's `reference_latents` (ReferenceLatent / Qwen-Image-Edit) are normalised as
    ComfyUI's process_latent_in does and appended to the image tokens (bench/qwen_image_comfyui_parity.py
    holds a whole run with one to ComfyUI's)."""
    from comfyd.models.families import wan
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=qwen_models, home=tmp_path / "home", device="cpu"))
    model = manager.load_diffusion_model(Path(_qwen_image_tiny.NAMES["transformer"]).name)
    build = model.vector_conditioning
    reference = torch.randn(1, 16, 1, 3, 5)
    added = build({"reference_latents": [reference]}, (4, 4))
    mean = torch.tensor(wan.LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(wan.LATENTS_STD).view(1, -1, 1, 1, 1)
    assert set(added) == {"ref_latent_0"} and torch.allclose(added["ref_latent_0"], (reference - mean) / std)
    assert build({}, (4, 4)) == {}
    x, t, context = torch.randn(1, 16, 1, 4, 4), torch.tensor([0.5]), torch.randn(1, 5, 32)
    with torch.inference_mode(), model.patched() as net:
        plain, referenced = net(x, t, context, {})[0], net(x, t, context, added)[0]
    assert plain.shape == referenced.shape == x.shape and not torch.allclose(plain, referenced)
    with pytest.raises(ValueError, match="method 'offset' is not supported yet"):
        build({"reference_latents": [reference], "reference_latents_method": "offset"}, (4, 4))
    with pytest.raises(ValueError, match="reference latent must be"):
        build({"reference_latents": [torch.zeros(1, 4, 8, 8)]}, (4, 4))


@pytest.mark.slow
def test_all_in_one_checkpoint_loads_what_the_split_files_load(qwen_models: Path, tmp_path: Path) -> None:
    """ComfyUI's all-in-one layout (supported_models.QwenImage): the transformer under
    `model.diffusion_model.`, the encoder under `text_encoders.qwen25_7b.transformer.`, the VAE under `vae.`."""
    from safetensors.torch import load_file, save_file

    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.settings import Settings

    parts = {
        "transformer": "model.diffusion_model.",
        "qwen25_7b": "text_encoders.qwen25_7b.transformer.",
        "vae": "vae.",
    }
    combined = {
        prefix + key: value
        for part, prefix in parts.items()
        for key, value in load_file(str(qwen_models / _qwen_image_tiny.NAMES[part])).items()
    }
    (qwen_models / "checkpoints").mkdir(exist_ok=True)
    save_file(combined, str(qwen_models / "checkpoints" / "qwen-image-aio.safetensors"))
    manager = ModelManager(Settings(models_dir=qwen_models, home=tmp_path / "home", device="cpu"))
    model, clip, vae = manager.load_checkpoint("qwen-image-aio.safetensors")
    names = {k: Path(v).name for k, v in _qwen_image_tiny.NAMES.items()}
    split_model = manager.load_diffusion_model(names["transformer"])
    split_clip = manager.load_clip([names["qwen25_7b"]], "qwen_image")
    assert model.family == clip.family == "qwen_image" and vae.latent_channels == 16
    [[cond, _]], [[split_cond, _]] = encode_text(clip, "a fox"), encode_text(split_clip, "a fox")
    assert torch.equal(cond, split_cond)
    x, t = torch.randn(1, 16, 1, 4, 4), torch.tensor([0.5])
    with torch.inference_mode(), model.patched() as net, split_model.patched() as split_net:
        assert torch.equal(net(x, t, cond, {})[0], split_net(x, t, cond, {})[0])
