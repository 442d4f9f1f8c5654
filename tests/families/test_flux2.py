"""Flux.2 on tiny files: detection beside Flux.1, the BFL key map, the VAE's link latent, the
Flux.2 nodes, and the template graph through `comfyd run` held to diffusers' Flux2Pipeline
(tests/families/flux2_reference.py says why diffusers and what the text encoder is)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.models import families, loader, standalone
from comfyd.models.devices import compute_plan
from comfyd.models.families import _flux2_tiny
from comfyd.models.families import _flux2_transformer as transformer
from comfyd.models.families import _flux2_vae as flux2_vae
from comfyd.models.tensorfile import TensorFile
from comfyd.models.tiny import make_tiny
from comfyd.sampling.flow import CONST, ExpTimeShiftSchedule
from comfyd.sampling.flux2_sigmas import flux2_sigmas
from tests.families.flux2_reference import psnr, reference, tiny_workflow


@pytest.fixture(scope="module")
def flux2_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux2") / "models"
    written = make_tiny(root, family="flux2")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_flux2_tiny.NAMES.values())
    return root


def _keys(path: Path) -> set[str]:
    with TensorFile(path) as tf:
        return set(tf.keys())


def test_flux2_transformer_is_told_from_flux1(flux2_models: Path) -> None:
    keys = _keys(flux2_models / _flux2_tiny.NAMES["dev"])
    assert families.get("flux2").diffusion_model_prefix(keys) == ""
    assert families.get("flux").diffusion_model_prefix(keys) is None
    prefixed = {"model.diffusion_model." + k for k in keys}  # an all-in-one file: refused by name
    assert families.get("flux2").diffusion_model_prefix(prefixed) is None
    assert "all-in-one Flux.2" in (families.near_miss(set(), prefixed) or "")
    flux1_like = keys | {"vector_in.in_layer.weight"}  # Flux.1's pooled-vector input
    assert families.get("flux2").diffusion_model_prefix(flux1_like) is None
    assert "UNETLoader" in (families.near_miss(set(), keys) or "")


def test_config_is_read_from_the_shapes(flux2_models: Path) -> None:
    for variant, guidance in (("dev", True), ("klein", False)):
        with TensorFile(flux2_models / _flux2_tiny.NAMES[variant]) as tf:
            config = transformer.infer_config(tf.shapes(), "")
        assert config == _flux2_tiny.tiny_transformer_config(guidance)


def test_key_map_round_trips_every_weight(flux2_models: Path) -> None:
    plan = compute_plan("cpu", "fp32")
    path = flux2_models / _flux2_tiny.NAMES["dev"]
    with TensorFile(path) as tf:
        network, sampling = families.get("flux2").load_diffusion_model(tf, "", plan, "default")
        stored = {k: tf.get(k).float() for k in tf.keys()}
    from comfyd.models.keymap import to_original

    config = dict(network.transformer.config)
    back = to_original(network.transformer.state_dict(), transformer.Flux2Translator(config, ""))
    assert set(back) == set(stored)
    assert all(torch.equal(back[k], stored[k]) for k in stored)
    # Held to diffusers' own conversion of BFL's names too (the tiny writer shares our map).
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers

    theirs = convert_flux2_transformer_checkpoint_to_diffusers(dict(stored))
    ours = network.transformer.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k].float()) for k in ours)
    # ComfyUI's Flux2 model config: ModelSamplingFlux with shift 2.02, CONST prediction.
    assert isinstance(sampling.schedule, ExpTimeShiftSchedule) and sampling.schedule.shift == 2.02
    assert sampling.prediction == CONST


def test_flux2_scheduler_matches_diffusers_flow_match_with_empirical_mu() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    for steps, width, height in ((4, 64, 64), (20, 1024, 1024), (28, 1536, 1536), (1, 512, 768)):
        ours = flux2_sigmas(steps, width, height)
        scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
        mu = compute_empirical_mu(round(width * height / 256), steps)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), mu=mu)
        assert ours.dtype == torch.float32 and ours.shape == (steps + 1,)
        assert torch.allclose(ours, scheduler.sigmas.float(), atol=1e-6), (steps, width, height)
    assert flux2_sigmas(20, 1024, 1024)[-1] == 0


def test_vae_link_latent_is_the_pipelines(flux2_models: Path) -> None:
    """VAEEncode's latent: posterior mean, 2x2 patches, batch norm (what Flux2Pipeline computes for
    its reference images); VAEDecode inverts the last two before the decoder."""
    from diffusers.pipelines.flux2.pipeline_flux2 import Flux2Pipeline

    from comfyd.models.manager import ModelManager
    from comfyd.models.vae_codec import vae_decode, vae_encode
    from comfyd.settings import Settings

    root = flux2_models
    manager = ModelManager(Settings(models_dir=root, output_dir=root / "o", temp_dir=root / "t",
                                    input_dir=root / "i", device="cpu"))  # fmt: skip
    handle = manager.load_vae(Path(_flux2_tiny.NAMES["vae"]).name)
    assert (handle.family, handle.latent_channels, handle.downscale) == ("flux2", 128, 16)
    pixels = torch.rand(1, 32, 48, 3, generator=torch.Generator().manual_seed(3))
    latent = vae_encode(handle, pixels)
    assert latent.shape == (1, 128, 2, 3)
    inner = loader.load_vae_file(root / _flux2_tiny.NAMES["vae"], compute_plan("cpu", "fp32")).vae
    with torch.inference_mode():
        mean = inner.encode(pixels.movedim(-1, 1) * 2 - 1).latent_dist.mode()
        patches = Flux2Pipeline._patchify_latents(mean)
        std = torch.sqrt(inner.bn.running_var.view(1, -1, 1, 1) + inner.config.batch_norm_eps)
        expected = (patches - inner.bn.running_mean.view(1, -1, 1, 1)) / std
        decoded = inner.decode(Flux2Pipeline._unpatchify_latents(latent * std + inner.bn.running_mean.view(1, -1, 1, 1))).sample
    assert torch.allclose(latent, expected, atol=1e-5)
    image = vae_decode(handle, latent)
    assert image.shape == (1, 32, 48, 3)
    assert torch.allclose(image, ((decoded + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-5)
    assert flux2_vae.is_flux2_vae(_keys(root / _flux2_tiny.NAMES["vae"]))


def test_empty_latent_and_the_flux2_clip_type() -> None:
    from comfyd.nodes.latent.flux2_latent import EmptyFlux2LatentImage

    class _Ctx:
        class env:  # noqa: N801
            from comfyd.settings import Settings

            settings = Settings()

    (latent,) = EmptyFlux2LatentImage().run(_Ctx(), width=96, height=64, batch_size=2)
    assert latent["samples"].shape == (2, 128, 4, 6) and not latent["samples"].any()
    assert standalone.family_for_clip_type("flux2").name == "flux2"


@pytest.mark.slow
def test_template_graph_matches_diffusers_flux2_pipeline(flux2_models: Path, tmp_path: Path) -> None:
    from comfyd.cli import main

    graph = tiny_workflow("dev")
    workflow = tmp_path / "flux2.json"
    workflow.write_text(json.dumps(graph))
    out = tmp_path / "out"
    assert main(["run", str(workflow), "--models-dir", str(flux2_models), "--output-dir", str(out), "-q"]) == 0
    with Image.open(next(out.glob("*.png"))) as png:
        ours = np.asarray(png.convert("RGB"))
    theirs = reference(flux2_models, "dev")
    assert ours.std() > 5  # an image, not a flat field
    assert psnr(ours, theirs) >= 40.0
    # The comparison can fail: one step fewer is a different picture.
    assert psnr(ours, reference(flux2_models, "dev", steps=1)) < 30.0


def test_preview_is_comfyuis_latent2rgb_averaged_over_each_patch() -> None:
    from comfyd.models.families.flux2 import PATCH_RGB_FACTORS, RGB_BIAS

    latent = families.get("flux2").latent
    z = torch.randn(128, 3, 5, generator=torch.Generator().manual_seed(1))
    ours = torch.einsum("chw,cr->hwr", z, torch.tensor(latent.rgb_factors)) + torch.tensor(latent.rgb_bias)
    # ComfyUI: unfold the patches to 32 channels at twice the size, project, here averaged back.
    unfolded = flux2_vae.unpatchify(z[None])[0]
    full = torch.einsum("chw,cr->hwr", unfolded, torch.tensor(PATCH_RGB_FACTORS)) + torch.tensor(RGB_BIAS)
    pooled = full.reshape(3, 2, 5, 2, 3).mean(dim=(1, 3))
    assert torch.allclose(ours, pooled, atol=1e-6)


def test_fp8_weight_dtype_stores_fp8_and_computes_close(flux2_models: Path) -> None:
    plan = compute_plan("cpu", "fp32")
    x = torch.randn(1, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 7, _flux2_tiny.CONTEXT_DIM, generator=torch.Generator().manual_seed(1))
    outs = {}
    for weight_dtype in ("default", "fp8_e4m3fn"):
        with TensorFile(flux2_models / _flux2_tiny.NAMES["dev"]) as tf:
            network, _ = families.get("flux2").load_diffusion_model(tf, "", plan, weight_dtype)
        with torch.no_grad():
            outs[weight_dtype] = network(x, torch.tensor([0.7]), context, {"guidance": torch.tensor([3.5])})[0]
    stored = next(network.transformer.transformer_blocks[0].parameters()).dtype
    assert stored == torch.float8_e4m3fn
    spread = outs["default"].abs().max()
    assert 0 < (outs["default"] - outs["fp8_e4m3fn"]).abs().max() / spread < 0.15
    with pytest.raises(ValueError, match="128-channel"):
        network(torch.zeros(1, 16, 4, 4), torch.tensor([0.7]), context, {})


@pytest.mark.parametrize(
    ("double", "single", "heads", "context", "guidance"),
    [(5, 20, 24, 7680, False), (8, 24, 32, 12288, False), (8, 48, 48, 15360, True)],
    ids=["klein-4b", "klein-9b", "dev"],
)
def test_released_sizes_are_read_from_the_shapes(double: int, single: int, heads: int, context: int, guidance: bool) -> None:
    """[klein] 4B / 9B (Qwen3-4B / 8B context: 3 x 2560 / 3 x 4096, no guidance embedding) and [dev]
    (Mistral: 3 x 5120), built empty (meta tensors) and written in BFL's names: detected, same config."""
    config = dict(_flux2_tiny.tiny_transformer_config(guidance), num_layers=double, num_single_layers=single,
                  attention_head_dim=128, num_attention_heads=heads, joint_attention_dim=context,
                  axes_dims_rope=[32, 32, 32, 32])  # fmt: skip
    from comfyd.models.keymap import to_original

    stored = to_original(transformer.empty_transformer(config).state_dict(), transformer.Flux2Translator(config, ""))
    shapes = {k: tuple(v.shape) for k, v in stored.items()}
    assert families.get("flux2").diffusion_model_prefix(set(shapes)) == ""
    assert transformer.infer_config(shapes, "") == config
