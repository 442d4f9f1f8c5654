"""Wan image-to-video on the tiny files (`make-tiny --family wan` writes a 36-channel I2V
transformer without a CLIP-vision embedder, Wan 2.2 I2V's layout).

The canonical workflow (comfyd/workflows/wan_i2v_api.json: UNETLoader, CLIPLoader type wan,
VAELoader, LoadImage, WanImageToVideo, ModelSamplingSD3, KSampler, VAEDecode, SaveAnimatedWEBP)
runs through `comfyd run` at 9 frames of 64x64 and every frame is held to diffusers'
WanImageToVideoPipeline on the same files, prompts, start image and initial noise (>= 40 dB).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from comfyd.cli import main
from comfyd.models.families import _wan_i2v, _wan_tiny
from comfyd.models.families.wan import LATENTS_MEAN, LATENTS_STD
from tests.families.wan_reference import FRAMES, SIZE, psnr, reference_i2v, tiny_i2v_workflow


def _start_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    gradient = np.stack([x * 4, y * 4, 255 - x * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(gradient).save(folder / "start.png")
    Image.fromarray(255 - gradient).save(folder / "inverse.png")


def _frames(path: Path) -> np.ndarray:
    with Image.open(path) as webp:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(webp)])


def _run(graph: dict, models: Path, inputs: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "wan_i2v.json"
    path.write_text(json.dumps(graph))
    out = tmp / "out"
    argv = ["run", str(path), "--models-dir", str(models), "--input-dir", str(inputs), "--output-dir", str(out)]
    code = main([*argv, "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return _frames(out / Path(result["images"][0]).name)


@pytest.mark.slow
def test_i2v_workflow_through_comfyd_run_matches_diffusers(
    wan_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "input"
    _start_images(inputs)
    graph = tiny_i2v_workflow("start.png")
    ours = _run(graph, wan_models, inputs, tmp_path, capsys)
    assert ours.shape == (FRAMES, SIZE, SIZE, 3)
    with Image.open(inputs / "start.png") as start:
        theirs = reference_i2v(wan_models, graph, start.convert("RGB"))
    assert theirs.shape == ours.shape and theirs.std() > 10
    for frame in range(FRAMES):
        assert psnr(ours[frame], theirs[frame]) >= 40.0, frame
    # The start image reaches the model: another one gives another video (random tiny weights
    # do not copy the image into the frames, so this is a difference, far beyond the 80+ dB
    # agreement with diffusers, not a likeness to the start image).
    other = _run(tiny_i2v_workflow("inverse.png"), wan_models, inputs, tmp_path / "b", capsys)
    assert psnr(ours, other) < 50.0


def test_wan_image_to_video_node_values(wan_models: Path, tmp_path: Path) -> None:
    """ComfyUI's WanImageToVideo: an empty latent; the start frame, resized, then grey frames,
    VAE-encoded into concat_latent_image; concat_mask 0 on the first latent frame."""
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_encode
    from comfyd.nodes.conditioning.wan_video import WanImageToVideo
    from comfyd.settings import Settings

    class _Ctx:
        class env:  # noqa: N801
            settings = None

    manager = ModelManager(Settings(models_dir=wan_models, home=tmp_path / "home"))
    vae = manager.load_vae(Path(_wan_tiny.NAMES["vae"]).name)
    cond = [[torch.zeros(1, 4, 32), {}]]
    start = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    positive, negative, latent = WanImageToVideo().run(
        _Ctx(), cond, cond, vae, width=32, height=32, length=9, batch_size=2, start_image=start
    )
    assert latent["samples"].shape == (2, 16, 3, 4, 4) and not latent["samples"].any()
    values = positive[0][1]
    assert values.keys() == {"concat_latent_image", "concat_mask"} and negative[0][1].keys() == values.keys()
    assert values["concat_latent_image"].shape == (1, 16, 3, 4, 4)
    assert values["concat_mask"].tolist() == [[[[[0.0] * 4] * 4, [[1.0] * 4] * 4, [[1.0] * 4] * 4]]]
    clip = torch.full((9, 32, 32, 3), 0.5)
    clip[0] = start[0, :, 8:40]  # centre crop of the 48-wide frame, already 32 high
    assert torch.allclose(values["concat_latent_image"], vae_encode(vae, clip), atol=1e-5)
    # What the I2V transformer gets: 4 mask channels (1 on the start frame), then the
    # normalised start latent.
    concat = _wan_i2v.concat_builder(LATENTS_MEAN, LATENTS_STD, 16)(values, (4, 4))["concat"]
    assert concat.shape == (1, 20, 3, 4, 4)
    assert concat[:, :4, 0].eq(1).all() and not concat[:, :4, 1:].any()
    mean = torch.tensor(LATENTS_MEAN).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENTS_STD).view(1, -1, 1, 1, 1)
    assert torch.allclose(concat[:, 4:], (values["concat_latent_image"] - mean) / std)
    # Without a start image: the latent only, conditioning untouched.
    plain = WanImageToVideo().run(_Ctx(), cond, cond, vae, width=16, height=16, length=1)
    assert plain[0][0][1] == {} and plain[2]["samples"].shape == (1, 16, 1, 2, 2)
