"""SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple and FreSca held to ComfyUI itself.

`data/slg_comfyui_reference.safetensors` holds what ComfyUI 0.3.64 sampled with its own nodes
(bench/slg_comfyui_parity.py --save-reference) on a cut SD3.5 MMDiT, a cut Flux and a cut Chroma with fixed
conditioning tensors, and its FreSca `Fourier_filter` on random 4-D and 5-D tensors. The tests
rebuild the same seeded files and hold comfyd's sampler and filter to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bench.slg_comfyui_parity as parity
from comfyd.sampling.fresca import FreScaPatch, frequency_scaled

REFERENCE = Path(__file__).resolve().parent / "data" / "slg_comfyui_reference.safetensors"


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REFERENCE))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slg")
    parity.make_files(path)
    return path


@pytest.mark.parametrize(
    "case", ["sd3_dit", "sd3_simple", "sd3_fresca", "flux_dit", "flux_simple", "chroma_dit", "chroma_simple"]
)
def test_patched_sampling_matches_comfyuis_latent(
    case: str, work: Path, reference: dict[str, torch.Tensor]
) -> None:
    family = parity.CASES[case][0]
    ours, theirs = parity.comfyd_sample(work, case), reference[case]
    assert ours.shape == theirs.shape == (1, 16, parity.SIZE // 8, parity.SIZE // 8)
    # Each patch moves ComfyUI's latent by ~1 or more; comfyd lands within 4e-5 of it.
    assert float((theirs - reference[f"{family}_plain"]).abs().max()) > 0.5
    assert float((ours - theirs).abs().max()) < 1e-4


def test_frequency_filter_matches_comfyuis(reference: dict[str, torch.Tensor]) -> None:
    for i, (shape, low, high, cutoff) in enumerate(parity.FILTER_CASES):
        x = reference[f"filter{i}_input"]
        assert tuple(x.shape) == shape
        torch.testing.assert_close(frequency_scaled(x, low, high, cutoff), reference[f"filter{i}_output"])
    half = frequency_scaled(reference["filter0_input"].half(), 0.7, 1.3, 2)
    assert half.dtype == torch.float16  # computed in float32, handed back in the input's dtype


def test_fresca_leaves_a_run_without_negative_prompt_alone() -> None:
    predictions = FreScaPatch(0.5, 2.0, 1).bind(None)  # type: ignore[arg-type]
    cond = torch.randn(1, 4, 8, 8)
    assert predictions(cond, 1.0, cond, None) == (cond, None)
    uncond = torch.randn(1, 4, 8, 8)
    new_cond, same = predictions(cond, 1.0, cond, uncond)
    assert same is uncond
    torch.testing.assert_close(new_cond, frequency_scaled(cond - uncond, 0.5, 2.0, 1) + uncond)


def test_nodes_pass_empty_layer_lists_through_and_refuse_other_families(work: Path) -> None:
    from dataclasses import replace

    from comfyd.models.manager import ModelManager
    from comfyd.nodes.advanced.skip_layer_guidance_dit import SkipLayerGuidanceDiT, SkipLayerGuidanceDiTSimple
    from comfyd.settings import Settings

    manager = ModelManager(Settings(models_dir=work, device="cpu", home=work / "home"))
    sd3 = manager.load_diffusion_model(Path(parity.FILES["sd3"]).name)
    assert SkipLayerGuidanceDiT().run(None, sd3, "", "x", 3.0, 0.01, 0.15, 0.0)[0] is sd3  # type: ignore[arg-type]
    assert SkipLayerGuidanceDiTSimple().run(None, sd3, "", "", 0.0, 1.0)[0] is sd3  # type: ignore[arg-type]
    (patched,) = SkipLayerGuidanceDiT().run(None, sd3, "0, x1", "", 3.0, 0.01, 0.15, 0.5)  # type: ignore[arg-type]
    (slg,) = patched.guidance.post_cfg
    assert (slg.layers, slg.single_layers, slg.rescaling_scale) == ((0, 1), (), 0.5)
    other = replace(sd3, unet=torch.nn.Identity(), family="sd15")
    with pytest.raises(ValueError, match="not supported on sd15 models"):
        SkipLayerGuidanceDiT().run(None, other, "1", "", 3.0, 0.01, 0.15, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SkipLayerGuidanceDiTSimple is not supported"):
        SkipLayerGuidanceDiTSimple().run(None, other, "", "2", 0.0, 1.0)  # type: ignore[arg-type]
