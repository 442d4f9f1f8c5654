"""Flux Fill and Kontext end to end on tiny random files (`make-tiny --family flux`).

The canonical workflows (comfyd/workflows/flux_fill_api.json: LoadImage with its mask,
InpaintModelConditioning, FluxGuidance 30, DifferentialDiffusion, KSampler on the 384-channel
Fill transformer;
flux_kontext_api.json: LoadImage, FluxKontextImageScale, VAEEncode, ReferenceLatent,
FluxGuidance 2.5, ConditioningZeroOut, KSampler) run through `comfyd run`, and their pictures
are held to diffusers' FluxFillPipeline / FluxKontextPipeline on the same files, prompt, picture,
mask, sigmas and initial noise (>= 40 dB). ComfyUI itself holds them on full-width cut files in
bench/flux_comfyui_parity.py --variant fill|kontext (tests/fidelity/README.md).
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
from comfyd.models.families import _flux_inputs, _flux_tiny
from comfyd.nodes.conditioning.reference_latent import FluxKontextImageScale, kontext_size
from tests.families.flux_edit_reference import (
    diffusers_render,
    edit_graph,
    encode_to_mode,
    kontext_graph,
    kontext_reference,
    sampler_inputs,
)
from tests.families.flux_reference import SIZE, flux_pipeline, psnr


@pytest.fixture(scope="module")
def flux_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux-edit")
    assert main(["models", "make-tiny", str(root / "models"), "--family", "flux"]) == 0
    inputs = root / "input"
    inputs.mkdir()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rgb = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[16:48, 20:44] = 0  # LoadImage's mask is 1 where the picture is transparent
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(inputs / "masked.png")
    Image.fromarray(rgb).save(inputs / "picture.png")
    return root


def _run(root: Path, tmp_path: Path, graph: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> np.ndarray:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    argv = ["run", str(path), "--models-dir", str(root / "models"), "--input-dir", str(root / "input"),
            "--output-dir", str(out), "-q", "--json"]  # fmt: skip
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    return np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))


@pytest.mark.slow
def test_fill_workflow_through_comfyd_run_matches_diffusers(
    flux_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusers import FluxFillPipeline

    # diffusers samples the whole latent: noise_mask off (with it on comfyd keeps the unmasked cells).
    graph = edit_graph("flux_fill_api.json", {"LoadImage": {"image": "masked.png"},
                                         "InpaintModelConditioning": {"noise_mask": False}})  # fmt: skip
    ours = _run(flux_files, tmp_path, graph, capsys)
    noise, sigmas, prompt = sampler_inputs(graph)
    rgba = Image.open(flux_files / "input" / "masked.png")
    mask = Image.fromarray(255 - np.asarray(rgba)[..., 3])
    pipe = flux_pipeline(flux_files / "models", "fill", FluxFillPipeline, fixed_sigmas=True)
    encode_to_mode(pipe.vae)
    theirs = diffusers_render(pipe, noise, prompt=prompt, image=rgba.convert("RGB"), mask_image=mask, sigmas=sigmas,
                        num_inference_steps=len(sigmas), guidance_scale=30.0)  # fmt: skip
    assert ours.shape == (SIZE, SIZE, 3) and theirs.std() > 20  # noise-like: PSNR is strict
    assert psnr(ours, theirs) >= 40.0
    # As shipped (noise mask on, DifferentialDiffusion): runs, and the kept cells change the picture.
    shipped = _run(flux_files, tmp_path / "shipped", edit_graph("flux_fill_api.json", {"LoadImage": {"image": "masked.png"}}),
                   capsys)  # fmt: skip
    assert shipped.shape == ours.shape and psnr(shipped, ours) < 40.0


@pytest.mark.slow
def test_kontext_workflow_through_comfyd_run_matches_diffusers(
    flux_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = kontext_graph("picture.png")
    ours = _run(flux_files, tmp_path, graph, capsys)
    theirs = kontext_reference(flux_files / "models", graph, flux_files / "input" / "picture.png")
    assert ours.shape == (SIZE, SIZE, 3) and theirs.std() > 20
    assert psnr(ours, theirs) >= 40.0


def test_kontext_scale_picks_comfyui_resolutions() -> None:
    assert kontext_size(64, 64) == (1024, 1024)
    assert kontext_size(1600, 900) == (1392, 752)  # aspect 1.78: 1392/752 = 1.85 is nearest
    assert kontext_size(480, 640) == (880, 1184)
    (out,) = FluxKontextImageScale().run(None, torch.rand(2, 30, 40, 3))  # type: ignore[arg-type]
    assert out.shape == (2, 880, 1184, 3)


def test_reference_layouts_follow_comfyui() -> None:
    """Position offsets (in latent cells) of two references of 8x8 and 4x6 beside an 8x8 latent."""
    shapes = [(8, 8), (4, 6)]
    assert _flux_inputs.reference_layout(shapes, (8, 8), "offset") == [(1, 0, 0), (1, 8, 0)]
    assert _flux_inputs.reference_layout([(8, 8), (12, 4)], (8, 8), "offset") == [(1, 0, 0), (1, 0, 8)]
    assert _flux_inputs.reference_layout(shapes, (8, 8), "index") == [(1, 0, 0), (2, 0, 0)]
    assert _flux_inputs.reference_layout(shapes, (8, 8), "uxo") == [(0, 8, 8), (0, 16, 16)]
    with pytest.raises(ValueError, match="reference_latents_method"):
        _flux_inputs.reference_layout(shapes, (8, 8), "sideways")


def test_fill_concat_folds_the_mask_into_64_channels() -> None:
    image = torch.randn(1, 16, 4, 6)
    mask = torch.zeros(1, 32, 48)
    mask[:, 8:16, 24:32] = 1.0  # pixel cell (1, 3)
    concat = _flux_inputs.concat_inputs({"concat_latent_image": image, "concat_mask": mask}, (4, 6), 16, True,
                                        lambda x: x * 2)  # fmt: skip
    assert concat.shape == (1, 80, 4, 6)
    assert torch.equal(concat[:, :16], image * 2)
    assert torch.equal(concat[0, 16:, 1, 3], torch.ones(64)) and float(concat[0, 16:].sum()) == 64.0
    # Without a concat_mask the sampler's prepared noise mask ([B, C, h, w], latent-sized) is read.
    noise_mask = torch.zeros(1, 16, 4, 6)
    noise_mask[:, :, 2, 5] = 1.0
    fallback = _flux_inputs.concat_inputs({"denoise_mask": noise_mask}, (4, 6), 16, True, lambda x: x)
    upscaled = torch.nn.functional.interpolate(noise_mask[:, :1], size=(32, 48), mode="bilinear")
    assert torch.equal(fallback[0, 16:, 2, 5], upscaled[0, 0, 16:24, 40:48].reshape(64))
    empty = _flux_inputs.concat_inputs({}, (4, 6), 16, True, lambda x: x)
    assert torch.equal(empty[:, :16], torch.zeros(1, 16, 4, 6)) and torch.equal(empty[:, 16:], torch.ones(1, 64, 4, 6))


def test_make_tiny_flux_through_the_cli_writes_the_fill_transformer(flux_files: Path) -> None:
    assert (flux_files / "models" / _flux_tiny.NAMES["fill"]).is_file()
    assert not (flux_files / "models" / "controlnet").exists()  # no tiny ControlNet for split-file families


def test_flux_refuses_a_conditioning_attention_mask_instead_of_ignoring_it() -> None:
    build = _flux_inputs.flux_builder(16, 16, 1.0, 0.0)
    item = {"pooled_output": torch.zeros(1, 768), "attention_mask": torch.zeros(1, 4, 4)}
    with pytest.raises(ValueError, match="attn_bias"):
        build(item, (8, 8))
    assert set(build({"pooled_output": torch.zeros(1, 768)}, (8, 8))) == {"pooled", "guidance"}
