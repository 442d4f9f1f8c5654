"""Wan 2.2 on the tiny files (`make-tiny --family wan22`).

- TI2V 5B: the canonical workflow (comfyd/workflows/wan22_ti2v_api.json: UNETLoader, CLIPLoader
  type wan, VAELoader, CLIPTextEncode x2, Wan22ImageToVideoLatent, ModelSamplingSD3, KSampler,
  VAEDecode, CreateVideo, SaveVideo) through `comfyd run`, with and without a start image: an mp4
  PyAV decodes to the expected frame count and size; with a start image the first latent frame
  comes out of the sampler exactly as the VAE encoded it (ComfyUI's WAN22 keeps it unnoised).
- Wan22ImageToVideoLatent's values, and the per-frame timesteps the 5B network gets under a noise
  mask (frame 0 at timestep 0, as ComfyUI's WAN22.process_timestep).
- The 14B two-expert pass (comfyd/workflows/wan22_t2v_14b_api.json: two UNETLoaders, two
  KSamplerAdvanced with start/end steps and leftover noise) equals a hand-run split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.cli import main
from comfyd.models.families import _wan22_tiny, _wan_tiny
from tests.families.video_serve import video_through_server
from tests.server.conftest import start_server  # noqa: F401  (the fixture)

SIZE = 64
FRAMES = 9
WORKFLOWS = Path(__file__).resolve().parents[2] / "comfyd" / "workflows"


@pytest.fixture(scope="module")
def wan22_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`comfyd models make-tiny DIR --family wan22`: the split files, and no SD ControlNet."""
    root = tmp_path_factory.mktemp("wan22") / "models"
    assert main(["models", "make-tiny", str(root), "--family", "wan22"]) == 0
    expected = {_wan_tiny.NAMES["umt5xxl"], _wan_tiny.NAMES["vae"], *_wan22_tiny.NAMES.values()}
    assert {p.relative_to(root).as_posix() for p in root.rglob("*.safetensors")} == expected
    return root


def _name(key: str) -> str:
    return Path({**_wan_tiny.NAMES, **_wan22_tiny.NAMES}[key]).name


def ti2v_workflow(start_image: str | None = None, steps: int = 2, seed: int = 3) -> dict[str, Any]:
    graph = json.loads((WORKFLOWS / "wan22_ti2v_api.json").read_text())
    graph["37"]["inputs"]["unet_name"] = _name("ti2v")
    graph["38"]["inputs"]["clip_name"] = _name("umt5xxl")
    graph["39"]["inputs"]["vae_name"] = _name("vae22")
    graph["55"]["inputs"].update(width=SIZE, height=SIZE, length=FRAMES)
    graph["3"]["inputs"].update(steps=steps, seed=seed)
    if start_image is not None:
        graph["56"] = {"class_type": "LoadImage", "inputs": {"image": start_image}}
        graph["55"]["inputs"]["start_image"] = ["56", 0]
    return graph


def _start_image(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:48, 0:80]  # another aspect: the node resizes with a centre crop
    picture = np.stack([x * 3, y * 5, 255 - x * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(picture).save(folder / "start.png")


def _run(graph: dict, models: Path, inputs: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "workflow.json"
    path.write_text(json.dumps(graph))
    out = tmp / "out"
    argv = [
        "run",
        str(path),
        "--models-dir",
        str(models),
        "--input-dir",
        str(inputs),
        "--output-dir",
        str(out),
    ]
    code = main([*argv, "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1, result
    saved = Path(result["images"][0])
    assert saved.is_file() and out in saved.parents, saved
    return saved


def _decoded(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.mark.slow
def test_ti2v_workflow_through_comfyd_run_writes_a_playable_mp4(
    wan22_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "input"
    _start_image(inputs)
    plain = _run(ti2v_workflow(), wan22_models, inputs, tmp_path / "t2v", capsys)
    started = _run(ti2v_workflow("start.png"), wan22_models, inputs, tmp_path / "i2v", capsys)
    for path in (plain, started):
        assert path.suffix == ".mp4"
        frames = _decoded(path)
        assert frames.shape == (FRAMES, SIZE, SIZE, 3)
    # The start image reaches the sampler: another video.
    assert np.abs(_decoded(plain).astype(int) - _decoded(started).astype(int)).mean() > 5


def _manager(models: Path, home: Path) -> Any:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    return ModelManager(Settings(models_dir=models, home=home))


class _Ctx:
    class env:  # noqa: N801
        settings = None


def test_wan22_latent_node_values_and_the_kept_start_frame(wan22_models: Path, tmp_path: Path) -> None:
    """ComfyUI's Wan22ImageToVideoLatent: zeros [1, 48, t, H/16, W/16] without a start image;
    with one, its encoding in the first latent frame, the format's zero (the mean) after, and a
    noise mask 0 there; sampling keeps that frame exactly."""
    from comfyd.models.families.wan22 import LATENTS_MEAN
    from comfyd.models.vae_codec import vae_encode
    from comfyd.nodes.conditioning.wan22_latent import Wan22ImageToVideoLatent
    from comfyd.nodes.image.transform import common_upscale
    from comfyd.sampling.ksampler import common_ksampler

    manager = _manager(wan22_models, tmp_path)
    vae = manager.load_vae(_name("vae22"))
    assert (vae.latent_channels, vae.downscale, vae.family) == (48, 16, "wan22")
    node = Wan22ImageToVideoLatent()
    ctx = _Ctx()
    (empty,) = node.run(ctx, vae, 64, 32, FRAMES, batch_size=3)
    assert set(empty) == {"samples"} and empty["samples"].shape == (1, 48, 3, 2, 4)
    assert not empty["samples"].any()

    image = torch.rand(2, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    (latent,) = node.run(ctx, vae, 64, 32, FRAMES, batch_size=2, start_image=image)
    start = common_upscale(image.movedim(-1, 1), 64, 32, "bilinear", "center").movedim(1, -1)
    encoded = vae_encode(vae, start)
    assert encoded.shape == (1, 48, 1, 2, 4)
    samples, mask = latent["samples"], latent["noise_mask"]
    assert samples.shape == (2, 48, 3, 2, 4) and mask.shape == (2, 1, 3, 2, 4)
    assert torch.equal(samples[:, :, :1], encoded.expand(2, -1, -1, -1, -1))
    mean = torch.tensor(LATENTS_MEAN).view(1, -1, 1, 1, 1).expand(2, -1, 2, 2, 4)
    assert torch.allclose(samples[:, :, 1:], mean)
    assert mask[:, :, 0].eq(0).all() and mask[:, :, 1:].eq(1).all()

    from comfyd.models.text_encoding import encode_text

    model = manager.load_diffusion_model(_name("ti2v"))
    from comfyd.sampling.flow import CleanInpaintSampling, FlowModelSampling, TimeShiftSchedule

    assert model.family == "wan22" and isinstance(model.model_sampling, CleanInpaintSampling)
    # A ModelSampling node's schedule keeps the clean start frame (ComfyUI's WAN22).
    shifted = model.with_sampling(FlowModelSampling(TimeShiftSchedule(shift=5.0, multiplier=1000.0)))
    assert isinstance(shifted.model_sampling, CleanInpaintSampling)
    clip = manager.load_clip([_name("umt5xxl")], "wan")
    positive, negative = encode_text(clip, "a fox"), encode_text(clip, "")
    out = common_ksampler(model, 5, 2, 4.0, "euler", "simple", positive, negative, latent)["samples"]
    assert torch.allclose(out[:, :, :1], samples[:, :, :1], atol=1e-5)  # kept, not re-noised
    assert not torch.allclose(out[:, :, 1:], samples[:, :, 1:], atol=1e-2)
    # EmptyHunyuanLatentVideo's 16-channel empty latent becomes the 5B's 48 channels, as in
    # ComfyUI's fix_empty_latent_channels (same pixels per latent cell: twice the video's size).
    hunyuan = {"samples": torch.zeros(1, 16, 2, 2, 2)}
    assert common_ksampler(model, 5, 1, 1.0, "euler", "simple", positive, negative, hunyuan)["samples"].shape == (
        1, 48, 2, 2, 2,
    )  # fmt: skip


def test_per_frame_timesteps_under_a_noise_mask(wan22_models: Path, tmp_path: Path) -> None:
    """With a denoise mask the 5B network embeds each latent frame at mean(mask) x t (frame 0 of
    an image start at 0), modulation kept per frame: the same numbers as diffusers' own call with
    those timesteps repeated per token, and not the same as one timestep for all."""
    from comfyd.models.families._wan22_transformer import frame_timesteps, token_timesteps

    manager = _manager(wan22_models, tmp_path)
    model = manager.load_diffusion_model(_name("ti2v"))
    net = model.unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 48, 3, 3, 4, generator=g)  # odd height: padded to whole patches
    context = torch.randn(2, 512, 32, generator=g)
    mask = torch.ones(2, 48, 3, 3, 4)
    mask[0, :, 0] = 0  # the first sample has a start frame, the second none
    t = torch.tensor([875.0, 500.0])
    per_frame = frame_timesteps(t, mask)
    assert torch.equal(per_frame, torch.tensor([[0.0, 875.0, 875.0], [500.0, 500.0, 500.0]]))
    with torch.no_grad():
        masked = net(x, t, encoder_hidden_states=context, added_cond_kwargs={"denoise_mask": mask})[0]
        plain = net(x, t, encoder_hidden_states=context)[0]
        padded = torch.nn.functional.pad(x, (0, 0, 0, 1, 0, 0), mode="circular")
        direct = net.transformer(
            hidden_states=padded, timestep=token_timesteps(per_frame, 4), encoder_hidden_states=context,
            return_dict=False,
        )[0][:, :, :, :3]  # fmt: skip
    assert torch.allclose(masked, direct, atol=1e-6)
    assert not torch.allclose(masked[0, :, :1], plain[0, :, :1], atol=1e-3)
    assert torch.allclose(masked[1], plain[1], atol=1e-6)  # mask all ones: the plain call


@pytest.mark.slow
def test_two_expert_pass_equals_a_hand_run_split(
    wan22_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 14B template's two-expert pass on the tiny 16-channel pair (9 frames of 32x32, 4
    steps, switching at step 2) through `comfyd run` equals running the same two KSamplerAdvanced
    calls by hand (the high-noise expert's leftover-noise latent handed to the low-noise one) and
    decoding: every 8-bit pixel of the lossless video."""
    from comfyd.models.text_encoding import encode_text
    from comfyd.models.vae_codec import vae_decode
    from comfyd.nodes.advanced.model_sampling import ModelSamplingSD3
    from comfyd.sampling.ksampler import common_ksampler

    graph = json.loads((WORKFLOWS / "wan22_t2v_14b_api.json").read_text())
    graph["71"]["inputs"]["clip_name"] = _name("umt5xxl")
    graph["73"]["inputs"]["vae_name"] = _name("vae")
    graph["75"]["inputs"]["unet_name"] = _name("high_noise")
    graph["76"]["inputs"]["unet_name"] = _name("low_noise")
    graph["74"]["inputs"].update(width=32, height=32, length=FRAMES)
    graph["81"]["inputs"].update(steps=4, end_at_step=2, noise_seed=9)
    graph["78"]["inputs"].update(steps=4, start_at_step=2)
    del graph["80"], graph["88"]
    graph["28"] = {"class_type": "SaveAnimatedWEBP", "inputs": {
        "filename_prefix": "wan22", "fps": 16.0, "lossless": True, "quality": 90, "method": "default",
        "images": ["87", 0]}}  # fmt: skip
    saved = _run(graph, wan22_models, tmp_path / "input", tmp_path / "run", capsys)
    from PIL import ImageSequence

    with Image.open(saved) as webp:
        ours = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(webp)])

    manager = _manager(wan22_models, tmp_path / "home")
    clip = manager.load_clip([_name("umt5xxl")], "wan")
    positive = encode_text(clip, graph["89"]["inputs"]["text"])
    negative = encode_text(clip, graph["72"]["inputs"]["text"])
    shift = ModelSamplingSD3()
    high = shift.run(_Ctx(), manager.load_diffusion_model(_name("high_noise")), 8.0)[0]
    low = shift.run(_Ctx(), manager.load_diffusion_model(_name("low_noise")), 8.0)[0]
    empty = {"samples": torch.zeros(1, 16, 3, 4, 4)}
    handover = common_ksampler(
        high, 9, 4, 3.5, "euler", "simple", positive, negative, empty, start_step=0, last_step=2,
        force_full_denoise=False,
    )  # fmt: skip
    final = common_ksampler(
        low, 0, 4, 3.5, "euler", "simple", positive, negative, handover, disable_noise=True,
        start_step=2, last_step=10000, force_full_denoise=False,
    )["samples"]  # fmt: skip
    frames = vae_decode(manager.load_vae(_name("vae")), final)
    theirs = np.clip(frames.numpy() * 255.0, 0, 255).astype(np.uint8)
    assert ours.shape == theirs.shape == (FRAMES, 32, 32, 3)
    assert np.array_equal(ours, theirs)
    # Both experts matter: the high-noise one finishing the pass draws another video.
    other = common_ksampler(
        high, 0, 4, 3.5, "euler", "simple", positive, negative, handover, disable_noise=True,
        start_step=2, last_step=10000,
    )["samples"]  # fmt: skip
    assert not torch.allclose(other, final, atol=1e-3)


def test_video_noise_masks_are_resized_trilinearly_and_reach_the_vector_builder() -> None:
    """As ComfyUI's reshape_mask: a [B, 1, t, h, w] mask (or a stack of [h, w] frames) resized to
    the latent's frames and pixels, every channel, the batch tiled; the builder sees it."""
    from comfyd.sampling.ksampler import prepare_denoise_mask, with_denoise_mask

    mask = torch.zeros(1, 1, 2, 2, 2)
    mask[:, :, 1] = 1
    resized = prepare_denoise_mask(mask, (2, 48, 4, 4, 4))
    assert resized.shape == (2, 48, 4, 4, 4)
    expected = torch.nn.functional.interpolate(mask, size=(4, 4, 4), mode="trilinear")
    assert torch.equal(resized[1, 47], expected[0, 0])
    frames = prepare_denoise_mask(torch.ones(3, 8, 8), (1, 16, 3, 2, 2))
    assert frames.shape == (1, 16, 3, 2, 2) and frames.eq(1).all()

    seen: list[dict[str, Any]] = []
    builder = with_denoise_mask(lambda item, dims: seen.append(item) or {}, resized)
    builder({"pooled_output": None}, (4, 4))
    assert seen[0]["denoise_mask"] is resized and "pooled_output" in seen[0]
    assert with_denoise_mask(None, resized) is None


def test_full_size_ti2v_and_vae_layouts_map_key_for_key() -> None:
    """The full-size TI2V 5B transformer and Wan 2.2 VAE as ComfyUI builds them (names and shapes
    of their state dicts, dumped on the meta device: `wan22_full_shapes.json`) give the right
    diffusers configs, and every diffusers parameter maps to one stored key of its shape, every
    stored key used."""
    from comfyd.models import families
    from comfyd.models.families import _wan22_vae
    from comfyd.models.families import _wan_transformer as transformer

    shapes = json.loads((Path(__file__).with_name("wan22_full_shapes.json")).read_text())
    stored = {k: tuple(v) for k, v in shapes["transformer"].items()}
    assert families.get("wan22").accepts_diffusion_model(stored, "")
    config = transformer.infer_config(stored, "")
    assert (config["num_attention_heads"], config["num_layers"], config["ffn_dim"]) == (24, 30, 14336)
    assert (config["in_channels"], config["out_channels"], config["text_dim"]) == (48, 48, 4096)
    vae_stored = {k: tuple(v) for k, v in shapes["vae"].items()}
    vae_config = _wan22_vae.infer_config(vae_stored)
    assert (vae_config["base_dim"], vae_config["decoder_base_dim"], vae_config["z_dim"]) == (160, 256, 48)
    for module, translator, keys in (
        (transformer.empty_transformer(config), transformer.WanTranslator(list(stored)), stored),
        (_wan22_vae.empty_vae(vae_config), _wan22_vae.Wan22VaeTranslator(list(vae_stored)), vae_stored),
    ):
        used = set()
        for name, parameter in module.named_parameters():
            source = translator.source(name)
            assert source is not None and keys[source.key] == tuple(parameter.shape), name
            used.add(source.key)
        assert used == set(keys)


@pytest.mark.slow
def test_ti2v_and_two_expert_workflows_through_the_server_give_playable_mp4s(wan22_models: Path, start_server) -> None:  # noqa: F811
    from comfyd.runtime import build_runtime

    server = start_server(runtime=build_runtime, models_dir=wan22_models)
    video_through_server(server, ti2v_workflow(), "58", FRAMES, SIZE)
    # The 14B template's two-expert pass (two UNETLoaders, two KSamplerAdvanced), kept short.
    graph = json.loads((WORKFLOWS / "wan22_t2v_14b_api.json").read_text())
    graph["71"]["inputs"]["clip_name"] = _name("umt5xxl")
    graph["73"]["inputs"]["vae_name"] = _name("vae")
    graph["75"]["inputs"]["unet_name"] = _name("high_noise")
    graph["76"]["inputs"]["unet_name"] = _name("low_noise")
    graph["74"]["inputs"].update(width=32, height=32, length=FRAMES)
    graph["81"]["inputs"].update(steps=2, end_at_step=1)
    graph["78"]["inputs"].update(steps=2, start_at_step=1)
    video_through_server(server, graph, "80", FRAMES, 32)
