"""Wan 2.1 image-to-video with CLIP vision (img_emb) and first/last frame, on the tiny files
(`make-tiny --family wan` writes an img_emb I2V transformer and a tiny ViT-H-wide tower).

The network is held to diffusers' own WanTransformer3DModel (stock attention processors) on the
same weights and features; the canonical workflow (comfyd/workflows/wan21_i2v_clip_api.json:
CLIPVisionLoader, CLIPVisionEncode, LoadImage, WanImageToVideo, KSampler, VAEDecode, CreateVideo,
SaveVideo) runs through `comfyd run` to an mp4 PyAV decodes, and its frames (saved losslessly
beside it) are held to WanImageToVideoPipeline given the same CLIP features (>= 40 dB).
bench/wan_comfyui_parity.py holds the image path to ComfyUI's own WanModel.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from comfyd.cli import main
from comfyd.models import families
from comfyd.models.clip_vision import ClipVisionOutput
from comfyd.models.families import _wan_tiny, _wan_tiny_clip
from tests.families.wan_clip_reference import (
    load_network,
    reference_clip_i2v,
    stock_transformer,
    tiny_clip_workflow,
)
from tests.families.wan_reference import FRAMES, SIZE, psnr


def test_img_emb_network_matches_diffusers(wan_models: Path, tmp_path: Path) -> None:
    net = load_network(wan_models / _wan_tiny_clip.NAMES["i2v_clip"])
    assert net.config.image_dim == 1280 and net.config.in_channels == 36
    g = torch.Generator().manual_seed(0)
    x, concat = torch.randn(1, 16, 3, 4, 4, generator=g), torch.randn(1, 20, 3, 4, 4, generator=g)
    context, features = torch.randn(1, 512, 32, generator=g), torch.randn(1, 257, 1280, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        ours = net(x, t, encoder_hidden_states=context, added_cond_kwargs={"concat": concat, "clip_fea": features})[0]
        theirs = stock_transformer(net)(torch.cat((x, concat), 1), t, context, encoder_hidden_states_image=features,
                             return_dict=False)[0]  # fmt: skip
        without = net(x, t, encoder_hidden_states=context, added_cond_kwargs={"concat": concat})[0]
    assert torch.allclose(ours, theirs, atol=1e-5) and theirs.std() > 0.1
    assert (ours - without).abs().max() > 0.1  # the image features reach the result

    # A first/last-frame (FLF2V) file: its position table is added to the two joined images'
    # tokens, as diffusers adds it to two images given as two rows.
    from safetensors.torch import load_file, save_file

    state = load_file(str(wan_models / _wan_tiny_clip.NAMES["i2v_clip"]))
    state["img_emb.emb_pos"] = torch.randn(1, 514, 1280, generator=g).half()
    save_file(state, str(tmp_path / "flf2v.safetensors"))
    flf = load_network(tmp_path / "flf2v.safetensors")
    assert flf.config.pos_embed_seq_len == 514
    joined = torch.randn(1, 514, 1280, generator=g)
    with torch.no_grad():
        ours = flf(x, t, encoder_hidden_states=context, added_cond_kwargs={"concat": concat, "clip_fea": joined})[0]
        theirs = stock_transformer(flf)(torch.cat((x, concat), 1), t, context, encoder_hidden_states_image=joined.view(2, 257, -1),
                             return_dict=False)[0]  # fmt: skip
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_clip_features_are_checked() -> None:
    builder = families.get("wan").vector_builder({"in_channels": 36, "image_dim": 1280})
    narrow = ClipVisionOutput(None, torch.zeros(1, 257, 1024), None)
    with pytest.raises(ValueError, match="1024 wide; this Wan model's image embedder takes 1280"):
        builder({"clip_vision_output": narrow}, (4, 4))
    wide = ClipVisionOutput(None, torch.ones(1, 257, 1280), None)
    assert builder({"clip_vision_output": wide}, (4, 4)).keys() == {"clip_fea"}
    # A text-to-video model or an I2V one without an embedder takes no CLIP features.
    assert families.get("wan").vector_builder({"in_channels": 16}) is None


def _frames(graph: dict, models: Path, inputs: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "workflow.json"
    path.write_text(json.dumps(graph))
    out = tmp / "out"
    argv = ["run", str(path), "--models-dir", str(models), "--input-dir", str(inputs), "--output-dir", str(out)]
    code = main([*argv, "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success", result
    found: dict[str, np.ndarray] = {}
    for name in result["images"]:
        file = out / name if (out / name).is_file() else Path(name)
        if file.suffix == ".webp":
            with Image.open(file) as webp:
                found["webp"] = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(webp)])
        elif file.suffix == ".mp4":
            with av.open(str(file)) as container:
                assert container.streams.video[0].average_rate == 16
                found["mp4"] = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return found


def _pooled(frames: np.ndarray) -> np.ndarray:
    t, h, w, c = frames.shape
    return frames.astype(np.float64).reshape(t, h // 4, 4, w // 4, 4, c).mean((2, 4))


def _start_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    gradient = np.stack([x * 4, y * 4, 255 - x * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(gradient).save(folder / "start.png")
    Image.fromarray(255 - gradient).save(folder / "end.png")


@pytest.mark.slow
def test_clip_i2v_workflow_through_comfyd_run_to_mp4_matches_diffusers(
    wan_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "input"
    _start_images(inputs)
    graph = tiny_clip_workflow("start.png")
    ours = _frames(graph, wan_models, inputs, tmp_path / "a", capsys)
    assert ours["mp4"].shape == (FRAMES, SIZE, SIZE, 3) and ours["webp"].shape == ours["mp4"].shape
    # The mp4 holds these frames in this order: h264 (yuv420) keeps 4x4 averages of the random
    # tiny model's noisy frames (about 34 dB) where another frame is far off (about 13 dB).
    mp4, webp = _pooled(ours["mp4"]), _pooled(ours["webp"])
    for frame in range(FRAMES):
        others = max(psnr(mp4[frame], webp[k]) for k in range(FRAMES) if k != frame)
        assert psnr(mp4[frame], webp[frame]) > max(28.0, others + 10.0), frame
    with Image.open(inputs / "start.png") as start:
        theirs = reference_clip_i2v(wan_models, graph, start.convert("RGB"))
    assert theirs.shape == ours["webp"].shape and theirs.std() > 10
    for frame in range(FRAMES):
        assert psnr(ours["webp"][frame], theirs[frame]) >= 40.0, frame

    # First and last frame (wan21_flf2v_api.json, both CLIP outputs joined), kept short: its
    # values are held to ComfyUI's node in bench/wan_flf_comfyui_parity.py.
    graph = tiny_clip_workflow("start.png", end="end.png", steps=1)
    graph["50"]["inputs"]["length"] = 5
    flf = _frames(graph, wan_models, inputs, tmp_path / "b", capsys)
    assert flf["mp4"].shape == (5, SIZE, SIZE, 3) and flf["webp"].std() > 10


def test_wan_first_last_frame_node_values(wan_models: Path, tmp_path: Path) -> None:
    """ComfyUI's WanFirstLastFrameToVideo: start frames first, end frames last, grey between, one
    VAE encode; the mask per pixel frame folded into 4 channels per latent frame; the two CLIP
    vision outputs joined along the tokens."""
    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_encode
    from comfyd.nodes.conditioning.wan_first_last import WanFirstLastFrameToVideo
    from comfyd.settings import Settings

    class _Ctx:
        class env:  # noqa: N801
            settings = None

    manager = ModelManager(Settings(models_dir=wan_models, home=tmp_path / "home"))
    vae = manager.load_vae(Path(_wan_tiny.NAMES["vae"]).name)
    cond = [[torch.zeros(1, 4, 32), {}]]
    g = torch.Generator().manual_seed(2)
    start, end = torch.rand(1, 32, 32, 3, generator=g), torch.rand(2, 32, 32, 3, generator=g)
    first = ClipVisionOutput(torch.zeros(1, 257, 8), torch.ones(1, 257, 1280), torch.zeros(1, 4))
    last = ClipVisionOutput(torch.zeros(1, 257, 8), torch.full((1, 257, 1280), 2.0), torch.zeros(1, 4))
    positive, negative, latent = WanFirstLastFrameToVideo().run(
        _Ctx(), cond, cond, vae, width=32, height=32, length=9, batch_size=2, start_image=start, end_image=end,
        clip_vision_start_image=first, clip_vision_end_image=last,
    )  # fmt: skip
    assert latent["samples"].shape == (2, 16, 3, 4, 4) and not latent["samples"].any()
    values = positive[0][1]
    assert values.keys() == {"concat_latent_image", "concat_mask", "clip_vision_output"}
    assert negative[0][1].keys() == values.keys()
    clip = torch.full((9, 32, 32, 3), 0.5)
    clip[0], clip[7:] = start[0], end
    assert torch.allclose(values["concat_latent_image"], vae_encode(vae, clip), atol=1e-5)
    # 12 pixel frames (3 latent frames x 4): 0 on the start frame + 3 and on the 2 end frames.
    mask = values["concat_mask"]
    assert mask.shape == (1, 4, 3, 4, 4)
    assert mask[:, :, 0].eq(0).all() and mask[:, :, 1].eq(1).all()
    assert mask[:, :2, 2].eq(1).all() and mask[:, 2:, 2].eq(0).all()
    joined = values["clip_vision_output"]
    assert joined.penultimate_hidden_states.shape == (1, 514, 1280)
    assert joined.penultimate_hidden_states[:, :257].eq(1).all() and joined.penultimate_hidden_states[:, 257:].eq(2).all()
    assert joined.image_embeds is None and joined.last_hidden_state is None
    # One output alone passes through; no image at all still gives a grey clip and a mask of ones.
    alone = WanFirstLastFrameToVideo().run(_Ctx(), cond, cond, vae, width=16, height=16, length=5,
                                           clip_vision_end_image=last)  # fmt: skip
    assert alone[0][0][1]["clip_vision_output"] is last and alone[0][0][1]["concat_mask"].eq(1).all()
    assert alone[2]["samples"].shape == (1, 16, 2, 2, 2)


def test_tiny_tower_is_recognised_only_by_its_mark(wan_models: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from comfyd.models import clip_vision
    from comfyd.models.tensorfile import TensorFile

    path = wan_models / _wan_tiny_clip.NAMES["clip_vision"]
    with TensorFile(path) as tf:
        assert clip_vision.recognise(tf)[0] == clip_vision.TINY_KIND
    save_file(load_file(str(path)), str(tmp_path / "unmarked.safetensors"))  # same tensors, no mark
    with TensorFile(tmp_path / "unmarked.safetensors") as tf, pytest.raises(
        clip_vision.ClipVisionFormatError, match="a CLIP vision tower of 2 layers"
    ):
        clip_vision.recognise(tf)
