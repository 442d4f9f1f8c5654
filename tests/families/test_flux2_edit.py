"""Flux.2 editing with reference images: comfyd's edit workflow (LoadImage -> VAEEncode ->
ReferenceLatent, chained for a second picture) through `comfyd run`, held to diffusers'
Flux2Pipeline(image=[...]) on the same tiny files, pictures and noise (ComfyUI 0.3.64 has no Flux.2;
tests/families/flux2_reference.py says what the reference is)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.models.families._flux2_references import reference_ids, reference_inputs
from comfyd.models.tiny import make_tiny
from tests.families.flux2_reference import add_reference, psnr, reference, tiny_workflow


def _picture(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth random picture (the tiny VAE keeps a smooth one recognisable)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path)
    return path


@pytest.fixture(scope="module")
def edit_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("flux2edit")
    make_tiny(root / "models", family="flux2")
    inputs = root / "input"
    inputs.mkdir()
    _picture(inputs / "first.png", 64, 64, 1)
    _picture(inputs / "second.png", 80, 64, 2)  # a different shape: its own id grid
    return root / "models", inputs


def _run(graph: dict, models: Path, inputs: Path, out: Path) -> np.ndarray:
    from comfyd.cli import main

    out.mkdir()
    workflow = out / "edit.json"
    workflow.write_text(json.dumps(graph))
    argv = ["run", str(workflow), "--models-dir", str(models), "--input-dir", str(inputs),
            "--output-dir", str(out / "png"), "-q"]  # fmt: skip
    assert main(argv) == 0
    with Image.open(next((out / "png").glob("*.png"))) as png:
        return np.asarray(png.convert("RGB"))


def test_reference_ids_are_diffusers_time_offsets() -> None:
    from diffusers import Flux2Pipeline

    latents = [torch.zeros(1, 128, 2, 3), torch.zeros(1, 128, 4, 2)]
    theirs = Flux2Pipeline._prepare_image_ids(latents)[0].float()
    ours = reference_inputs({"reference_latents": latents}, 128)["ref_ids"][0]
    assert torch.equal(ours, theirs)
    assert torch.equal(reference_ids(1, 4, 2)[:, 0], torch.full((8,), 20.0))
    with pytest.raises(ValueError, match="128 channels"):
        reference_inputs({"reference_latents": [torch.zeros(1, 16, 4, 4)]}, 128)


def test_network_with_references_is_diffusers_transformer_call(edit_setup: tuple[Path, Path]) -> None:
    """One network call with two references against the transformer called as Flux2Pipeline calls
    it (latent then reference tokens, its ids, the output cut to the latent's tokens)."""
    from diffusers import Flux2Pipeline

    from comfyd.models import families
    from comfyd.models.devices import compute_plan
    from comfyd.models.families import _flux2_tiny
    from comfyd.models.families._flux2_transformer import pad_context
    from comfyd.models.tensorfile import TensorFile

    models, _ = edit_setup
    with TensorFile(models / _flux2_tiny.NAMES["dev"]) as tf:
        network, _ = families.get("flux2").load_diffusion_model(tf, "", compute_plan("cpu", "fp32"), "default")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 4, 4, generator=gen)
    refs = [torch.randn(1, 128, 4, 4, generator=gen), torch.randn(1, 128, 4, 5, generator=gen)]
    context = torch.randn(1, 7, network.transformer.config.joint_attention_dim, generator=gen)
    sigma, guidance = torch.tensor([0.7]), torch.tensor([4.0])
    entry = {"guidance": 4.0, "reference_latents": refs}
    added = families.get("flux2").vector_conditioning(entry, (4, 4))
    with torch.inference_mode():
        ours = network(x, sigma, context, added_cond_kwargs=added)[0]
        padded = pad_context(context)
        pack = Flux2Pipeline._pack_latents
        theirs = network.transformer(
            hidden_states=torch.cat([pack(x), *(pack(r) for r in refs)], dim=1),
            timestep=sigma, guidance=guidance, encoder_hidden_states=padded,
            txt_ids=Flux2Pipeline._prepare_text_ids(padded),
            img_ids=torch.cat([Flux2Pipeline._prepare_latent_ids(x), Flux2Pipeline._prepare_image_ids(refs)], dim=1),
            return_dict=False,
        )[0][:, :16]  # fmt: skip
        plain = network(x, sigma, context, added_cond_kwargs={"guidance": guidance})[0]
    theirs = theirs.permute(0, 2, 1).reshape(1, 128, 4, 4)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours - plain).abs().max() > 1e-3  # the references do reach the output


_REFERENCES: dict[tuple[Path, int], np.ndarray] = {}


def _theirs(models: Path, inputs: Path, count: int) -> np.ndarray:
    """diffusers' picture with the first `count` pictures (kept: the file's tests run in one worker)."""
    key = (models, count)
    if key not in _REFERENCES:
        pictures = [inputs / "first.png", inputs / "second.png"][:count]
        _REFERENCES[key] = reference(models, "dev", images=pictures or None)
    return _REFERENCES[key]


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_edit_workflow_matches_diffusers_with_one_reference(edit_setup: tuple[Path, Path], tmp_path: Path) -> None:
    models, inputs = edit_setup
    graph = tiny_workflow("dev_edit", **{"14": {"image": "first.png"}})
    ours = _run(graph, models, inputs, tmp_path / "one")
    theirs = _theirs(models, inputs, 1)
    assert ours.std() > 5
    # The tiny random network reads its references weakly (512 zero text tokens share the
    # attention), so a wrong layout can stay above 40 dB: the 8-bit difference is held too.
    assert psnr(ours, theirs) >= 40.0 and _max_diff(ours, theirs) <= 2
    assert _max_diff(ours, _theirs(models, inputs, 0)) > 2  # the reference changes the picture


def test_edit_workflow_matches_diffusers_with_two_references(
    edit_setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyd.models.families import _flux2_references

    models, inputs = edit_setup
    graph = tiny_workflow("dev_edit", **{"14": {"image": "first.png"}})
    add_reference(graph, "second.png")
    ours = _run(graph, models, inputs, tmp_path / "two")
    theirs = _theirs(models, inputs, 2)
    assert psnr(ours, theirs) >= 40.0 and _max_diff(ours, theirs) <= 2
    # The comparison can fail: with one reference fewer the picture differs...
    assert _max_diff(ours, _theirs(models, inputs, 1)) > 2
    # ...and so it does with time offsets of 1, 2 instead of diffusers' 10, 20.
    monkeypatch.setattr(_flux2_references, "TIME_SCALE", 1)
    assert _max_diff(_run(graph, models, inputs, tmp_path / "wrong_ids"), theirs) > 2
