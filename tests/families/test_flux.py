"""Flux.1 end to end on tiny random files in ComfyUI's split layout (`make-tiny --family flux`).

The canonical workflows (comfyd/workflows/flux_{dev,schnell}_api.json: UNETLoader,
DualCLIPLoader type flux, VAELoader; dev through ModelSamplingFlux, FluxGuidance, BasicGuider and
SamplerCustomAdvanced, schnell through KSampler) run through `comfyd run` and through the server
(tests/server/test_flux_workflow.py), and their pictures are held to diffusers' FluxPipeline on the same files, prompt and initial noise
(>= 40 dB; flux_reference.py says why not ComfyUI).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfyd.cli import main
from comfyd.models.families import _flux_tiny
from comfyd.models.handles import LoraPatch
from comfyd.models.tiny import make_tiny, make_tiny_checkpoint
from tests.families.flux_reference import SIZE, psnr, reference, tiny_workflow


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flux") / "models"
    written = make_tiny(root, family="flux")
    assert sorted(p.relative_to(root).as_posix() for p in written) == sorted(_flux_tiny.NAMES.values())
    return root


@pytest.mark.slow
def test_dev_workflow_through_comfyd_run_matches_diffusers(
    flux_models: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = tiny_workflow("dev")
    path = tmp_path / "flux_dev.json"
    path.write_text(json.dumps(graph))
    out = tmp_path / "out"
    code = main(["run", str(path), "--models-dir", str(flux_models), "--output-dir", str(out), "-q", "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "success" and len(result["images"]) == 1
    ours = np.asarray(Image.open(out / Path(result["images"][0]).name).convert("RGB"))
    theirs = reference(flux_models, "dev", graph)
    assert ours.shape == (SIZE, SIZE, 3) and theirs.std() > 20  # noise-like: PSNR is strict
    assert psnr(ours, theirs) >= 40.0


def test_bad_flux_inputs_get_clear_errors(flux_models: Path, tmp_path: Path) -> None:
    from comfyd.models.manager import ModelManager
    from comfyd.settings import Settings

    make_tiny_checkpoint(flux_models / "diffusion_models", family="sd1", seed=0)
    manager = ModelManager(Settings(models_dir=flux_models, home=tmp_path / "home"))
    names = {k: Path(v).name for k, v in _flux_tiny.NAMES.items()}
    with pytest.raises(ValueError, match="CLIP type 'sdxl' is not supported yet; supported: .*flux"):
        manager.load_clip([names["clip_l"], names["t5xxl"]], "sdxl")
    with pytest.raises(ValueError, match="missing \\['t5xxl'\\]"):
        manager.load_clip([names["clip_l"], names["clip_l"].replace("clip-l", "nope")][:1], "flux")
    sd1_name = next(n for n in manager.list_files("unet") if "sd1" in n)
    with pytest.raises(ValueError, match="not a diffusion model comfyd can load"):
        manager.load_diffusion_model(sd1_name)
    (flux_models / "text_encoders" / "ae-misplaced.safetensors").write_bytes(
        (flux_models / _flux_tiny.NAMES["vae"]).read_bytes()
    )
    with pytest.raises(ValueError, match="not a text encoder comfyd can load"):
        manager.load_clip([names["clip_l"], "ae-misplaced.safetensors"], "flux")
    model = manager.load_diffusion_model(names["dev"])
    # The guidance strength reaches dev's transformer (FluxGuidance changes the picture).
    x, t, context = torch.randn(1, 16, 4, 4), torch.tensor([0.5]), torch.randn(1, 8, 32)
    pooled = torch.randn(1, 32)
    with torch.inference_mode():
        a, b = (model.unet(x, t, context, {"pooled": pooled, "guidance": torch.tensor([g])})[0] for g in (3.5, 1.0))
    assert a.shape == x.shape and not torch.allclose(a, b)
    # LoRAs apply (tests/models/test_flux_lora.py); a patch the manager never issued is refused.
    with pytest.raises(KeyError, match="unknown LoRA key"):
        with model.with_loras(LoraPatch("some-lora", 1.0)).patched():
            pass


@pytest.mark.slow
def test_all_in_one_checkpoint_draws_what_the_split_files_draw(flux_models: Path, tmp_path: Path) -> None:
    from comfyd.runner import LocalRunner
    from comfyd.settings import Settings

    split = tiny_workflow("dev")
    split["17"]["inputs"]["steps"] = 1
    one_file = json.loads(json.dumps(split))
    for node_id in ("10", "11", "12"):
        del one_file[node_id]
    one_file["4"] = {"class_type": "CheckpointLoaderSimple",
                     "inputs": {"ckpt_name": Path(_flux_tiny.NAMES["checkpoint"]).name}}
    one_file["30"]["inputs"]["model"] = ["4", 0]
    one_file["6"]["inputs"]["clip"] = ["4", 1]
    one_file["8"]["inputs"]["vae"] = ["4", 2]
    settings = Settings(models_dir=flux_models, output_dir=tmp_path / "out", home=tmp_path / "home")
    with LocalRunner(settings) as runner:
        results = [runner.run(graph, node_id="8") for graph in (split, one_file)]
    assert all(r.ok for r in results), [r.error for r in results]
    images = [r.values["8"][0] for r in results]
    assert images[0].shape == (1, SIZE, SIZE, 3)
    assert torch.equal(images[0], images[1])
