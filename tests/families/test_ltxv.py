"""LTX-Video 0.9 on tiny random files in ComfyUI's layout (`make-tiny --family ltxv`).

Held to ComfyUI itself: `data/ltxv_comfyui_reference.safetensors` holds what ComfyUI 0.3.64's own
modules computed on these same files (bench/ltxv_comfyui_parity.py --save-reference): its LTXV
transformer's velocities (text-to-video at three sigmas, and image-to-video with per-token
timesteps), its 0.9 VAE's decoded frames and encoded latent, its LTXV T5 tokens and conditioning,
its LTXVScheduler sigmas, and its whole SamplerCustom sampling (T2V and I2V) on the same
conditioning tensors. The canonical text-to-video workflow (comfyd/workflows/
ltxv_t2v_api.json) and an image-to-video one run through `comfyd run` to an mp4 that PyAV decodes.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from comfyd.cli import main
from comfyd.models import standalone, t5_encoder
from comfyd.models.devices import compute_plan
from comfyd.models.families import _ltxv_tiny, _ltxv_transformer, _ltxv_vae
from comfyd.models.tiny import make_tiny
from comfyd.nodes.sampling.ltxv_scheduler import ltxv_sigmas

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "ltxv_comfyui_reference.safetensors"
WORKFLOW = HERE.parents[1] / "comfyd" / "workflows" / "ltxv_t2v_api.json"
SIZE, FRAMES = 64, 9


def _reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(REFERENCE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["sha256"])


@pytest.fixture(scope="module")
def ltxv_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ltxv") / "models"
    written = make_tiny(root, family="ltxv")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_ltxv_tiny.NAMES.values())
    return root


def test_transformer_names_are_comfyuis_and_invert_diffusers_conversion() -> None:
    net = _ltxv_transformer.empty_transformer(_ltxv_tiny.TINY_TRANSFORMER)
    stored = {_ltxv_transformer.original_name(n): n for n in net.state_dict()}
    assert _ltxv_transformer.diffusers_names(list(stored)) == {v: k for k, v in stored.items()}
    for key in ("patchify_proj.weight", "adaln_single.linear.weight", "transformer_blocks.1.attn1.q_norm.weight",
                "transformer_blocks.0.attn2.k_norm.weight", "caption_projection.linear_2.bias", "scale_shift_table"):  # fmt: skip
        assert key in stored, key
    shapes = {k: tuple(net.state_dict()[v].shape) for k, v in stored.items()}
    assert _ltxv_transformer.infer_config(shapes, "") == _ltxv_tiny.TINY_TRANSFORMER


def test_vae_names_are_comfyuis_and_invert_diffusers_conversion() -> None:
    vae = _ltxv_vae.empty_vae(_ltxv_tiny.tiny_vae_config())
    stored = {_ltxv_vae.original_name(n): n for n in vae.state_dict()}
    assert _ltxv_vae.diffusers_names(list(stored)) == {v: k for k, v in stored.items()}
    for key in ("encoder.down_blocks.1.conv.weight", "encoder.down_blocks.2.norm3.norm.weight",
                "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight", "decoder.up_blocks.8.conv.conv.bias",
                "per_channel_statistics.std-of-means"):  # fmt: skip
        assert key in stored, key
    shapes = {k: tuple(vae.state_dict()[v].shape) for k, v in stored.items()}
    assert _ltxv_vae.infer_config(shapes) == _ltxv_tiny.tiny_vae_config()
    missing = {k: v for k, v in shapes.items() if ".down_blocks.3." not in k}
    with pytest.raises(ValueError, match="a residual stage is missing"):
        _ltxv_vae.infer_config(missing)


@pytest.mark.parametrize(
    ("version", "keys"),
    [
        ("0.9.1", ("decoder.last_time_embedder.timestep_embedder.linear_1.weight", "decoder.last_scale_shift_table",
                   "decoder.up_blocks.0.time_embedder.timestep_embedder.linear_2.bias",
                   "decoder.up_blocks.1.conv.conv.weight", "decoder.up_blocks.2.res_blocks.0.per_channel_scale1",
                   "decoder.timestep_scale_multiplier")),
        ("0.9.5", ("encoder.down_blocks.1.conv.conv.bias", "encoder.down_blocks.8.res_blocks.0.conv1.conv.weight",
                   "decoder.last_scale_shift_table", "decoder.up_blocks.6.res_blocks.0.conv2.conv.weight")),
    ],
)  # fmt: skip
def test_later_vae_names_are_comfyuis_and_invert_diffusers_conversion(version: str, keys: tuple[str, ...]) -> None:
    vae = _ltxv_vae.empty_vae(_ltxv_tiny.tiny_vae_config(version))
    stored = {_ltxv_vae.original_name(n, version): n for n in vae.state_dict()}
    assert _ltxv_vae.diffusers_names(list(stored)) == {v: k for k, v in stored.items()}
    for key in keys:
        assert key in stored, key
    shapes = {k: tuple(vae.state_dict()[v].shape) for k, v in stored.items()}
    assert _ltxv_vae.version(shapes) == version
    assert _ltxv_vae.infer_config(shapes) == _ltxv_tiny.tiny_vae_config(version)


@pytest.mark.parametrize(
    "case", [(20, 2.05, 0.95, True, 0.1, 4096), (8, 2.05, 0.95, True, 0.1, 12), (30, 1.5, 0.5, False, 0.1, 6144)]
)
def test_ltxv_scheduler_sigmas_are_comfyuis_bit_for_bit(case: tuple) -> None:
    reference, _ = _reference()
    index = [(20, 2.05, 0.95, True, 0.1, 4096), (8, 2.05, 0.95, True, 0.1, 12), (30, 1.5, 0.5, False, 0.1, 6144)]
    assert torch.equal(ltxv_sigmas(*case), reference[f"sched{index.index(case)}"])


@pytest.mark.slow
def test_transformer_vae_and_text_match_comfyuis_modules(ltxv_models: Path) -> None:
    import bench.ltxv_comfyui_parity as parity

    reference, digests = _reference()
    for name, rel in _ltxv_tiny.NAMES.items():  # the reference was computed from these very files
        assert hashlib.sha256((ltxv_models / rel).read_bytes()).hexdigest() == digests[name], name
    plan = compute_plan("cpu", "fp32")
    _, net, _, clip, vae = standalone.load_split_family_checkpoint(
        ltxv_models / _ltxv_tiny.NAMES["checkpoint"], plan, False
    )
    assert clip is None  # the checkpoint carries no text encoder, as ComfyUI's LTXV files
    data = parity.inputs()
    base = {"encoder_attention_mask": data["mask"].float(), "frame_rate": torch.tensor([parity.FRAME_RATE])}
    with torch.no_grad():
        for sigma in parity.SIGMAS:
            ours = net(data["x"], torch.tensor([sigma]), data["context"], added_cond_kwargs=base)[0]
            theirs = reference[f"v{sigma}"]
            assert float((ours - theirs).abs().max() / theirs.std()) < 1e-4, sigma
        i2v = {**base, "denoise_mask": data["denoise"]}
        ours = net(data["x"], torch.tensor([parity.SIGMAS[1]]), data["context"], added_cond_kwargs=i2v)[0]
        assert float((ours - reference["v_i2v"]).abs().max() / reference["v_i2v"].std()) < 1e-4
        # A metadata config asking for causal temporal positions (0.9.5+ files carry one) is read.
        causal = parity.causal_checkpoint(ltxv_models, ltxv_models.parent / "causal")
        _, causal_net, _, _, _ = standalone.load_split_family_checkpoint(causal, plan, False)
        ours = causal_net(data["x"], torch.tensor([parity.SIGMAS[1]]), data["context"], added_cond_kwargs=base)[0]
        assert float((ours - reference["v_causal"]).abs().max() / reference["v_causal"].std()) < 1e-4
        assert float((reference["v_causal"] - reference[f"v{parity.SIGMAS[1]}"]).abs().max()) > 1e-3
        # Per-token timesteps matter: without the mask the first frame's velocity differs.
        plain = net(data["x"], torch.tensor([parity.SIGMAS[1]]), data["context"], added_cond_kwargs=base)[0]
        assert float((plain - reference["v_i2v"])[:, :, 0].abs().max()) > 1e-2
        frames = vae.decode(data["z"])[0].clamp(-1, 1)
        encoded = vae._encode(data["pixels"])
    assert _psnr(frames, reference["frames_u8"]) >= 40.0
    assert float((encoded - reference["encoded"]).abs().max() / reference["encoded"].std()) < 1e-4
    _, encoder, _ = standalone.load_text_encoder(ltxv_models / _ltxv_tiny.NAMES["t5xxl"], plan, False)
    for i, prompt in enumerate(parity.PROMPTS):
        tokens = t5_encoder.tokenize(prompt, 128)
        assert [t for t, _ in tokens] == reference[f"tokens{i}"].long().tolist()
        cond = t5_encoder.encode(encoder, tokens, masked=True, zero_masked=False)
        assert float((cond - reference[f"cond{i}"]).abs().max()) < 1e-4


@pytest.mark.slow
def test_samplercustom_t2v_and_i2v_match_comfyuis_sampling(ltxv_models: Path, tmp_path: Path) -> None:
    """SamplerCustom (euler, cfg 3, LTXVScheduler's 4 sigmas) on the same conditioning tensors:
    comfyd's whole sampling against ComfyUI's comfy.sample.sample_custom on its LTXV model, text-
    to-video and image-to-video (a start latent kept by a noise mask, per-token timesteps)."""
    import bench.ltxv_comfyui_parity as parity

    reference, _ = _reference()
    ours = parity.comfyd_sampling(ltxv_models, tmp_path, parity.with_sigmas(parity.inputs()))
    for name in ("t2v", "i2v"):
        theirs = reference[f"sampled_{name}"]
        assert float((ours[f"sampled_{name}"] - theirs).abs().max() / theirs.std()) < 1e-4, name


@pytest.mark.slow
def test_guides_match_comfyuis_nodes_and_keyframe_positions(ltxv_models: Path) -> None:
    """Two LTXVAddGuide nodes (a still at frame 9, strength 0.8; a 9-frame clip at frame 0), the
    transformer on the guided latent (keyframe positions, per-token timesteps), LTXVCropGuides."""
    import bench.ltxv_comfyui_parity as parity

    reference, _ = _reference()
    _, net, _, _, vae = standalone.load_split_family_checkpoint(
        ltxv_models / _ltxv_tiny.NAMES["checkpoint"], compute_plan("cpu", "fp32"), False
    )
    ours = parity.comfyd_guides(net, vae, parity.inputs())
    assert torch.equal(ours["guide_mask"], reference["guide_mask"])
    assert torch.equal(ours["guide_idxs"].float(), reference["guide_idxs"])
    assert float((ours["guide_samples"] - reference["guide_samples"]).abs().max()) < 1e-4
    theirs = reference["guide_velocity"]
    assert float((ours["guide_velocity"] - theirs).abs().max() / theirs.std()) < 1e-4
    assert torch.equal(ours["guide_cropped"], ours["guide_samples"][:, :, :3])


def _psnr(frames: torch.Tensor, reference_u8: torch.Tensor) -> float:
    ours = torch.clamp((frames + 1) / 2 * 255, 0, 255).to(torch.uint8).double()
    mse = float(((ours - reference_u8.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


@pytest.mark.slow
def test_091_vae_decode_matches_comfyuis_with_the_same_noise(ltxv_models: Path) -> None:
    """0.9.1 decodes with noise (2.5% fresh latent noise, noise injected in the residual stages)
    drawn from torch's global generator, as ComfyUI: seeded alike, the frames are ComfyUI's."""
    import bench.ltxv_comfyui_parity as parity

    reference, _ = _reference()
    *_, vae = standalone.load_split_family_checkpoint(
        ltxv_models / _ltxv_tiny.NAMES["checkpoint_091"], compute_plan("cpu", "fp32"), False
    )
    z = parity.inputs()["z"]
    with torch.no_grad():
        torch.manual_seed(parity.SEED)
        assert _psnr(vae.decode(z)[0].clamp(-1, 1), reference["frames_091_u8"]) >= 40.0
        torch.manual_seed(parity.SEED + 1)  # other noise, other frames: the noise is really drawn
        assert _psnr(vae.decode(z)[0].clamp(-1, 1), reference["frames_091_u8"]) < 40.0


@pytest.mark.slow
def test_095_vae_decode_and_encode_match_comfyuis(ltxv_models: Path) -> None:
    """0.9.5: residual space / time / 2x2x2 compressions in the encoder, 0.9.1's decoder without
    injected noise (ComfyUI's version 2); the file's metadata asks for causal time positions."""
    import bench.ltxv_comfyui_parity as parity

    reference, _ = _reference()
    _, net, _, _, vae = standalone.load_split_family_checkpoint(
        ltxv_models / _ltxv_tiny.NAMES["checkpoint_095"], compute_plan("cpu", "fp32"), False
    )
    assert net.causal_temporal_positioning
    data = parity.inputs()
    with torch.no_grad():
        torch.manual_seed(parity.SEED)
        assert _psnr(vae.decode(data["z"])[0].clamp(-1, 1), reference["frames_095_u8"]) >= 40.0
        encoded = vae._encode(data["pixels"])
    assert float((encoded - reference["encoded_095"]).abs().max() / reference["encoded_095"].std()) < 1e-4


def _decode_mp4(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _run(graph: dict, models: Path, tmp: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> np.ndarray:
    path = tmp / "workflow.json"
    path.write_text(json.dumps(graph))
    out = tmp / "out"
    code = main(["run", str(path), "--models-dir", str(models), "--output-dir", str(out), "-q", "--json", *extra])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return _decode_mp4(Path(result["images"][0]))


def tiny_workflow(steps: int = 2) -> dict:
    graph = json.loads(WORKFLOW.read_text())
    graph["38"]["inputs"]["clip_name"] = Path(_ltxv_tiny.NAMES["t5xxl"]).name
    graph["44"]["inputs"]["ckpt_name"] = Path(_ltxv_tiny.NAMES["checkpoint"]).name
    graph["70"]["inputs"].update(width=SIZE, height=SIZE, length=FRAMES)
    graph["71"]["inputs"].update(steps=steps)
    return graph


@pytest.mark.slow
def test_t2v_workflow_through_comfyd_run_writes_a_playable_mp4(
    ltxv_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = _run(tiny_workflow(), ltxv_models, tmp_path, capsys)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert frames.std() > 10  # random weights draw noise, not a flat picture
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1  # a video, not one picture


@pytest.mark.slow
def test_i2v_workflow_through_comfyd_run(ltxv_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = tmp_path / "input"
    inputs.mkdir()
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    Image.fromarray(np.stack([x * 4, y * 4, 255 - x * 2], -1).clip(0, 255).astype(np.uint8)).save(inputs / "s.png")
    graph = tiny_workflow()
    graph["80"] = {"class_type": "LoadImage", "inputs": {"image": "s.png"}}
    graph["81"] = {"class_type": "LTXVPreprocess", "inputs": {"image": ["80", 0], "img_compression": 35}}
    graph["82"] = {"class_type": "LTXVImgToVideo", "inputs": {
        "positive": ["69", 0], "negative": ["69", 1], "vae": ["44", 2], "image": ["81", 0],
        "width": SIZE, "height": SIZE, "length": FRAMES, "batch_size": 1, "strength": 1.0}}  # fmt: skip
    graph["72"]["inputs"].update(positive=["82", 0], negative=["82", 1], latent_image=["82", 2])
    graph["71"]["inputs"]["latent"] = ["82", 2]
    frames = _run(graph, ltxv_models, tmp_path, capsys, "--input-dir", str(inputs))
    assert frames.shape == (FRAMES, SIZE, SIZE, 3)


@pytest.mark.slow
def test_i2v_sampling_keeps_the_start_frame_latent(ltxv_models: Path, tmp_path: Path) -> None:
    """LTXVImgToVideo's mask (0 on the start frame) keeps that latent frame as encoded, not
    re-noised (ComfyUI's LTXV keeps the original latent there), while the others are sampled."""
    from comfyd.models.manager import ModelManager
    from comfyd.models.text_encoding import encode_text
    from comfyd.models.vae_codec import vae_encode
    from comfyd.sampling.ksampler import common_ksampler
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=ltxv_models, home=tmp_path / "home"))
    model, clip, vae = manager.load_checkpoint(Path(_ltxv_tiny.NAMES["checkpoint"]).name)
    assert clip is None
    clip = manager.load_clip([Path(_ltxv_tiny.NAMES["t5xxl"]).name], "ltxv")
    positive = [[c, {**o, "frame_rate": 24.0}] for c, o in encode_text(clip, "a red fox")]
    negative = [[c, {**o, "frame_rate": 24.0}] for c, o in encode_text(clip, "")]
    assert positive[0][1]["attention_mask"].shape == (1, 128)
    start = vae_encode(vae, torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(3)))
    latent = torch.zeros(1, 128, 2, 2, 2)
    latent[:, :, :1] = start
    mask = torch.ones(1, 1, 2, 1, 1)
    mask[:, :, :1] = 0.0
    out = common_ksampler(model, 5, 3, 3.0, "euler", "simple", positive, negative,
                          {"samples": latent, "noise_mask": mask})["samples"]  # fmt: skip
    assert torch.allclose(out[:, :, 0], start[:, :, 0], atol=1e-5)
    assert float((out[:, :, 1] - latent[:, :, 1]).abs().mean()) > 0.1


def test_comfyd_check_knows_the_ltxv_files(ltxv_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(tiny_workflow()))
    assert main(["check", str(path), "--models-dir", str(ltxv_models), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    families = {Path(m["path"]).name: (m["family"], m["supported"]) for m in report["models"]}
    assert families[Path(_ltxv_tiny.NAMES["checkpoint"]).name] == ("ltxv", True)


@pytest.mark.slow
def test_bad_ltxv_inputs_get_clear_errors(ltxv_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_encode
    from comfyd.settings import Settings

    graph = tiny_workflow()
    graph["6"]["inputs"]["clip"] = ["44", 1]  # the checkpoint's CLIP: it has none
    path = tmp_path / "no_clip.json"
    path.write_text(json.dumps(graph))
    assert main(["run", str(path), "--models-dir", str(ltxv_models), "--output-dir", str(tmp_path / "o"), "-q"]) == 1
    assert "does not contain a valid clip or text encoder" in capsys.readouterr().err
    manager = ModelManager(Settings(models_dir=ltxv_models, home=tmp_path / "home"))
    _, _, vae = manager.load_checkpoint(Path(_ltxv_tiny.NAMES["checkpoint"]).name)
    with pytest.raises(ValueError, match=r"encodes 1 \+ 8k frames \(1, 9, 17, ...\), got 4"):
        vae_encode(vae, torch.rand(4, SIZE, SIZE, 3))
    assert vae_encode(vae, torch.rand(9, SIZE + 7, SIZE, 3)).shape == (1, 128, 2, 2, 2)  # cropped to 32s


def test_transformer_and_vae_load_alone_as_unetloader_and_vaeloader_read_them(ltxv_models: Path, tmp_path: Path) -> None:
    """UNETLoader on the transformer alone (no prefix) and VAELoader on the VAE alone."""
    from safetensors.torch import load_file, save_file

    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    state = load_file(str(ltxv_models / _ltxv_tiny.NAMES["checkpoint"]))
    root = tmp_path / "models"
    (root / "diffusion_models").mkdir(parents=True)
    (root / "vae").mkdir()
    unet = "model.diffusion_model."
    save_file({k[len(unet) :]: v for k, v in state.items() if k.startswith(unet)}, str(root / "diffusion_models/t.safetensors"))
    save_file({k[4:]: v for k, v in state.items() if k.startswith("vae.")}, str(root / "vae/ltxv_vae.safetensors"))
    manager = ModelManager(Settings(models_dir=root, home=tmp_path / "home"))
    model = manager.load_diffusion_model("t.safetensors")
    assert model.family == "ltxv" and model.model_sampling.prediction == "const"
    vae = manager.load_vae("ltxv_vae.safetensors")
    assert vae.family == "ltxv" and (vae.latent_channels, vae.downscale) == (128, 32)


def test_ltxv_preprocess_runs_images_through_one_h264_frame() -> None:
    from comfyd.nodes.image.ltxv_preprocess import compress_image

    y, x = torch.meshgrid(torch.arange(33.0), torch.arange(48.0), indexing="ij")
    image = torch.stack([x / 47, y / 32, (x + y) / 79], -1)  # odd height: cut to 32 rows
    assert compress_image(image, 0) is image
    out = compress_image(image, 35)
    assert out.shape == (32, 48, 3) and out.dtype == image.dtype
    mse = float(((out - image[:32]) ** 2).mean())
    assert 0 < mse and 10 * math.log10(1 / mse) > 25  # compressed, still the picture
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-3)  # 8-bit levels, as decoded


def test_model_sampling_nodes_keep_ltxvs_masked_sampling() -> None:
    from comfyd.models.families.ltxv import FAMILY
    from comfyd.sampling.flow import CleanInpaintSampling, FlowModelSampling, TimeShiftSchedule

    adapted = FAMILY.adapt_model_sampling(FlowModelSampling(TimeShiftSchedule(shift=3.0)))
    assert isinstance(adapted, CleanInpaintSampling) and adapted.schedule.shift == 3.0
    latent, noise = torch.ones(1, 128, 2, 1, 1), torch.zeros(1, 128, 2, 1, 1)
    assert torch.equal(adapted.scale_inpaint(0.5, noise, latent), latent)  # kept as is, not re-noised
