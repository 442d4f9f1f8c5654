"""Wan 2.1 text-to-video on tiny random files in ComfyUI's split layout (`make-tiny --family wan`).

The canonical workflow (comfyd/workflows/wan_t2v_api.json: UNETLoader, CLIPLoader type wan,
VAELoader, EmptyHunyuanLatentVideo, ModelSamplingSD3, KSampler, VAEDecode, SaveAnimatedWEBP) runs
through `comfyd run` at 9 frames of 64x64 and every frame is held to diffusers' WanPipeline on the
same files, prompts and initial noise (>= 40 dB; wan_reference.py says why not ComfyUI). The key
maps are checked against diffusers' own conversion of ComfyUI's names, without files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from comfyd.cli import main
from comfyd.models.families import _wan_tiny, _wan_transformer, _wan_vae
from tests.families.wan_reference import FRAMES, SIZE, psnr, reference, tiny_workflow


def test_transformer_names_are_comfyuis_and_invert_diffusers_conversion() -> None:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        net = WanTransformer3DModel.from_config(_wan_tiny.TINY_TRANSFORMER)
    names = list(net.state_dict())
    stored = {_wan_transformer.original_name(n): n for n in names}
    assert _wan_transformer.diffusers_names(list(stored)) == {v: k for k, v in stored.items()}
    # ComfyUI's names (comfy/ldm/wan/model.py): the cross-attention norm is norm3.
    for key in (
        "blocks.1.norm3.weight",
        "blocks.0.self_attn.norm_q.weight",
        "blocks.0.ffn.2.bias",
        "head.modulation",
        "head.head.weight",
        "blocks.0.modulation",
        "time_projection.1.weight",
    ):
        assert key in stored, key
    shapes = {k: tuple(net.state_dict()[v].shape) for k, v in stored.items()}
    assert _wan_transformer.infer_config(shapes, "") == _wan_tiny.TINY_TRANSFORMER


def test_vae_names_are_comfyuis_and_invert_diffusers_conversion() -> None:
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**_wan_tiny.TINY_VAE)
    stored = {_wan_vae.original_name(n): n for n in vae.state_dict()}
    assert _wan_vae.diffusers_names(list(stored)) == {v: k for k, v in stored.items()}
    for key in (
        "encoder.conv1.weight",
        "conv1.weight",
        "conv2.bias",
        "decoder.head.2.weight",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.4.shortcut.weight",
        "encoder.downsamples.5.time_conv.weight",
        "encoder.middle.1.to_qkv.weight",
    ):
        assert key in stored, key


def test_empty_hunyuan_latent_video_shape() -> None:
    from comfyd.nodes.latent.video_latent import EmptyHunyuanLatentVideo

    class _Env:
        settings = None

    class _Ctx:
        env = _Env()

    (latent,) = EmptyHunyuanLatentVideo().run(_Ctx(), width=64, height=48, length=9, batch_size=2)
    assert latent["samples"].shape == (2, 16, 3, 6, 8) and not latent["samples"].any()
    (one,) = EmptyHunyuanLatentVideo().run(_Ctx(), width=16, height=16, length=1)
    assert one["samples"].shape == (1, 16, 1, 2, 2)


@pytest.mark.slow
def test_t2v_workflow_through_comfyd_run_matches_diffusers(
    wan_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tiny_workflow()
    path = tmp_path / "wan_t2v.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(wan_models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    with Image.open(out / Path(result["images"][0]).name) as webp:
        ours = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(webp)])
    assert ours.shape == (FRAMES, SIZE, SIZE, 3)
    theirs = reference(wan_models, graph)
    assert theirs.shape == ours.shape and theirs.std() > 10  # noise-like: PSNR is strict
    for frame in range(FRAMES):
        assert psnr(ours[frame], theirs[frame]) >= 40.0, frame
    # The frames differ from each other (a video, not one picture repeated).
    assert psnr(ours[0], ours[-1]) < 30.0


@pytest.mark.slow
def test_vae_decode_gives_frames_in_order(wan_models: Path, tmp_path: Path) -> None:
    """IMAGE of a video latent: [B * T, H, W, 3], sample by sample, each sample's frames in order."""
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=wan_models, home=tmp_path / "home"))
    vae = manager.load_vae(Path(_wan_tiny.NAMES["vae"]).name)
    assert vae.family == "wan" and vae.latent_channels == 16 and vae.downscale == 8
    latents = torch.randn(2, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    images = vae_decode(vae, latents)
    assert images.shape == (10, 32, 32, 3) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    second = vae_decode(vae, latents[1:])
    assert torch.equal(images[5:], second)


def test_bad_wan_inputs_get_clear_errors(wan_models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode
    from comfyd.settings import Settings

    encoder = wan_models / _wan_tiny.NAMES["umt5xxl"]
    stripped = {k: v for k, v in load_file(str(encoder)).items() if k != "spiece_model"}
    save_file(stripped, str(encoder.with_name("umt5-no-tokenizer.safetensors")))
    manager = ModelManager(Settings(models_dir=wan_models, home=tmp_path / "home"))
    with pytest.raises(ValueError, match="no tokenizer \\(no 'spiece_model' tensor\\)"):
        manager.load_clip(["umt5-no-tokenizer.safetensors"], "wan")
    with pytest.raises(ValueError, match="CLIP type 'mochi' is not supported yet; supported: .*wan"):
        manager.load_clip([encoder.name], "mochi")
    # A video latent given to an image VAE (16 channels, like Flux's): told, not a shape error.
    flux_like = manager.load_vae(Path(_wan_tiny.NAMES["vae"]).name)
    image_vae = type(flux_like)(key="k", family="flux", vae=object(), device="cpu", dtype=torch.float32,
                                latent_channels=16)  # fmt: skip
    with pytest.raises(ValueError, match="decode it with a video VAE"):
        vae_decode(image_vae, torch.zeros(1, 16, 2, 2, 2))


def test_video_latents_refuse_conditioning_areas() -> None:
    from comfyd.sampling.cfg import prepare_conds
    from comfyd.sampling.flow import TimeShiftSchedule

    context = torch.zeros(1, 4, 8)
    plain = [[context, {}]]
    schedule = TimeShiftSchedule(shift=8.0)
    video = (1, 16, 3, 4, 4)
    assert len(prepare_conds(plain, plain, video, schedule, "cpu", torch.float32)) == 2
    area = [[context, {"area": (2, 2, 0, 0), "strength": 1.0}]]
    with pytest.raises(ValueError, match="areas, masks and strengths on video latents"):
        prepare_conds(area, plain, video, schedule, "cpu", torch.float32)
