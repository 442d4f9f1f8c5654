"""KSampler / KSamplerAdvanced and the latent nodes, end to end on tiny random diffusers UNets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel

import comfyd.nodes.latent.basic  # noqa: F401  (registers the nodes)
import comfyd.nodes.sampling.ksampler  # noqa: F401
from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.errors import ExecutionInterrupted
from comfyd.engine.schema import REGISTRY
from comfyd.models.handles import ModelHandle
from comfyd.sampling.noise import initial_noise
from comfyd.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore:Should have t:UserWarning")

REFERENCE = Path(__file__).parents[1] / "engine" / "comfyui_validation_errors"
CONTEXT_DIM = 16


def tiny_unet(sdxl: bool = False) -> UNet2DConditionModel:
    torch.manual_seed(0)
    extra = {}
    if sdxl:
        # text_time: pooled text embedding (here 32 wide) + 6 size numbers x 8 Fourier features.
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
        )
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=8,
        **extra,
    ).eval()


@pytest.fixture(scope="module")
def sd1_model() -> ModelHandle:
    return ModelHandle("tiny-sd1", "sd1", "eps", tiny_unet(), 0.18215, torch.device("cpu"), torch.float32)


def conditioning(value: float, pooled: torch.Tensor | None = None) -> list:
    g = torch.Generator().manual_seed(int(value * 10) + 100)
    return [[torch.randn(1, 77, CONTEXT_DIM, generator=g), {"pooled_output": pooled}]]


def context(events: list) -> NodeContext:
    env = NodeEnvironment(settings=Settings())
    return NodeContext(env=env, job_id="job", node_id="3", class_type="KSampler",
                       on_progress=lambda value, total, preview: events.append((value, total)))  # fmt: skip


def node(name: str):
    return REGISTRY.get(name)()


def test_ksampler_node_end_to_end(sd1_model):
    events: list = []
    latent = node("EmptyLatentImage").run(context([]), width=64, height=48, batch_size=2)[0]
    (out,) = node("KSampler").run(
        context(events), model=sd1_model, seed=5, steps=3, cfg=6.5, sampler_name="dpmpp_2m",
        scheduler="karras", positive=conditioning(1), negative=conditioning(2), latent_image=latent, denoise=1.0,
    )  # fmt: skip
    assert out["samples"].shape == (2, 4, 6, 8)
    assert out["samples"].dtype == torch.float32 and torch.isfinite(out["samples"]).all()
    assert events == [(1, 3), (2, 3), (3, 3)]
    # Same seed, same latent; the result does not alias the input.
    (again,) = node("KSampler").run(
        context([]), model=sd1_model, seed=5, steps=3, cfg=6.5, sampler_name="dpmpp_2m",
        scheduler="karras", positive=conditioning(1), negative=conditioning(2), latent_image=latent, denoise=1.0,
    )  # fmt: skip
    assert torch.equal(out["samples"], again["samples"])
    assert latent["samples"].eq(0).all()


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde", "uni_pc_bh2", "lms"])
def test_ksampler_node_other_samplers(sd1_model, sampler):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = node("KSampler").run(
        context([]), model=sd1_model, seed=1, steps=2, cfg=1.0, sampler_name=sampler, scheduler="normal",
        positive=conditioning(1), negative=conditioning(2), latent_image=latent,
    )  # fmt: skip
    assert torch.isfinite(out["samples"]).all()


def test_ksampler_node_interrupt(sd1_model):
    ctx = context([])
    ctx.on_progress = lambda value, total, preview: ctx.interrupt.set() if value == 1 else None
    with pytest.raises(ExecutionInterrupted):
        node("KSampler").run(
            ctx, model=sd1_model, seed=1, steps=5, cfg=7.0, sampler_name="euler", scheduler="normal",
            positive=conditioning(1), negative=conditioning(2), latent_image={"samples": torch.zeros(1, 4, 8, 8)},
        )  # fmt: skip


def test_ksampler_advanced_two_stage_equals_one_pass(sd1_model):
    """Leftover-noise handoff: steps [0, 2) then [2, 4) without new noise = steps [0, 4)."""
    kw = dict(model=sd1_model, noise_seed=9, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal",
              positive=conditioning(1), negative=conditioning(2))  # fmt: skip
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    advanced = node("KSamplerAdvanced")
    (first,) = advanced.run(context([]), add_noise="enable", latent_image=latent, start_at_step=0, end_at_step=2,
                            return_with_leftover_noise="enable", **kw)  # fmt: skip
    (second,) = advanced.run(context([]), add_noise="disable", latent_image=first, start_at_step=2, end_at_step=10000,
                             return_with_leftover_noise="disable", **kw)  # fmt: skip
    (whole,) = advanced.run(context([]), add_noise="enable", latent_image=latent, start_at_step=0, end_at_step=10000,
                            return_with_leftover_noise="disable", **kw)  # fmt: skip
    torch.testing.assert_close(second["samples"], whole["samples"], rtol=1e-4, atol=1e-4)


def test_sdxl_unet_gets_added_conditioning():
    model = ModelHandle(
        "tiny-sdxl", "sdxl", "eps", tiny_unet(sdxl=True), 0.13025, torch.device("cpu"), torch.float32
    )
    pooled = torch.randn(1, 32)
    (out,) = node("KSampler").run(
        context([]), model=model, seed=2, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal",
        positive=conditioning(1, pooled), negative=conditioning(2, pooled * 0),
        latent_image={"samples": torch.zeros(1, 4, 8, 8)},
    )  # fmt: skip
    assert torch.isfinite(out["samples"]).all()


def test_v_prediction_model_runs(sd1_model):
    from dataclasses import replace

    model = replace(sd1_model, family="sd2", prediction="v")
    (out,) = node("KSampler").run(
        context([]), model=model, seed=2, steps=2, cfg=4.0, sampler_name="heun", scheduler="simple",
        positive=conditioning(1), negative=conditioning(2), latent_image={"samples": torch.zeros(1, 4, 8, 8)},
    )  # fmt: skip
    assert torch.isfinite(out["samples"]).all()


def _input_config(class_type: str, name: str):
    return REGISTRY.get(class_type).schema.input(name).input_config(None)


@pytest.mark.parametrize("case,input_name", [("bad_int.json", "steps"), ("cfg_out_of_range.json", "cfg")])
def test_ksampler_input_config_matches_comfyui(case, input_name):
    body = json.loads((REFERENCE / case).read_text())["response"]
    error = body["node_errors"]["3"]["errors"][0]
    assert error["extra_info"]["input_name"] == input_name
    assert _input_config("KSampler", input_name) == error["extra_info"]["input_config"]


def test_node_schemas_follow_comfyui():
    ks = REGISTRY.get("KSampler").schema
    assert [s.name for s in ks.inputs] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                           "positive", "negative", "latent_image", "denoise"]  # fmt: skip
    assert _input_config("KSampler", "seed") == ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                                         "control_after_generate": True}]  # fmt: skip
    assert _input_config("KSampler", "denoise") == [
        "FLOAT",
        {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01},
    ]
    adv = REGISTRY.get("KSamplerAdvanced").schema
    assert [s.name for s in adv.inputs] == [
        "model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
        "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise",
    ]  # fmt: skip
    assert _input_config("KSamplerAdvanced", "add_noise") == [["enable", "disable"], {}]
    assert _input_config("KSamplerAdvanced", "return_with_leftover_noise") == [["disable", "enable"], {}]
    assert _input_config("KSamplerAdvanced", "end_at_step") == [
        "INT",
        {"default": 10000, "min": 0, "max": 10000},
    ]
    assert _input_config("EmptyLatentImage", "width") == [
        "INT",
        {"default": 512, "min": 16, "max": 16384, "step": 8},
    ]
    assert _input_config("EmptyLatentImage", "batch_size") == ["INT", {"default": 1, "min": 1, "max": 4096}]
    assert _input_config("LatentUpscale", "upscale_method")[0] == ["nearest-exact", "bilinear", "area", "bicubic",
                                                                   "bislerp"]  # fmt: skip
    assert _input_config("LatentUpscaleBy", "scale_by") == ["FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0,
                                                                      "step": 0.01}]  # fmt: skip
    categories = {name: REGISTRY.get(name).schema.category for name in (
        "KSampler", "KSamplerAdvanced", "EmptyLatentImage", "LatentUpscale", "LatentUpscaleBy", "RepeatLatentBatch",
        "LatentFromBatch", "SetLatentNoiseMask")}  # fmt: skip
    assert categories == {
        "KSampler": "sampling", "KSamplerAdvanced": "sampling", "EmptyLatentImage": "latent",
        "LatentUpscale": "latent", "LatentUpscaleBy": "latent", "RepeatLatentBatch": "latent/batch",
        "LatentFromBatch": "latent/batch", "SetLatentNoiseMask": "latent/inpaint",
    }  # fmt: skip


# --- latent nodes ------------------------------------------------------------------------------


def test_empty_latent_image():
    (latent,) = node("EmptyLatentImage").run(context([]), width=520, height=264, batch_size=3)
    assert latent["samples"].shape == (3, 4, 33, 65) and latent["samples"].eq(0).all()


@pytest.mark.parametrize(
    "width,height,expected",
    [(128, 96, (12, 16)), (0, 96, (12, 22)), (256, 0, (17, 32)), (16, 16, (8, 8)), (0, 0, (6, 11))],
)
def test_latent_upscale_sizes(width, height, expected):
    latent = {"samples": torch.randn(1, 4, 6, 11), "batch_index": [4]}
    (out,) = node("LatentUpscale").run(context([]), samples=latent, upscale_method="bilinear", width=width,
                                       height=height, crop="disabled")  # fmt: skip
    assert tuple(out["samples"].shape[-2:]) == expected
    assert out["batch_index"] == [4]


def test_latent_upscale_center_crop():
    samples = torch.arange(4 * 8 * 16, dtype=torch.float32).reshape(1, 4, 8, 16)
    (out,) = node("LatentUpscale").run(context([]), samples={"samples": samples}, upscale_method="nearest-exact",
                                       width=64, height=64, crop="center")  # fmt: skip
    # 8x16 cropped to its centre 8x8 (columns 4..11), then 8x8 -> 8x8.
    assert torch.equal(out["samples"], samples[..., 4:12])


def test_latent_upscale_by_and_bislerp():
    samples = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    for method in ("nearest-exact", "bilinear", "area", "bicubic", "bislerp"):
        (out,) = node("LatentUpscaleBy").run(context([]), samples={"samples": samples}, upscale_method=method,
                                             scale_by=1.5)  # fmt: skip
        assert out["samples"].shape == (2, 4, 9, 9), method
        assert torch.isfinite(out["samples"]).all()
    # bislerp at the same size is the identity; its norms interpolate linearly between neighbours.
    (same,) = node("LatentUpscaleBy").run(context([]), samples={"samples": samples}, upscale_method="bislerp",
                                          scale_by=1.0)  # fmt: skip
    torch.testing.assert_close(same["samples"], samples, rtol=1e-5, atol=1e-5)
    (double,) = node("LatentUpscaleBy").run(context([]), samples={"samples": samples}, upscale_method="bislerp",
                                            scale_by=2.0)  # fmt: skip
    norms = double["samples"].norm(dim=1)
    source_norms = samples.norm(dim=1)
    assert norms.max() <= source_norms.max() * 1.0001


def test_repeat_latent_batch_extends_batch_index_and_masks():
    latent = {"samples": torch.randn(2, 4, 4, 4), "batch_index": [3, 4], "noise_mask": torch.ones(2, 1, 8, 8)}
    (out,) = node("RepeatLatentBatch").run(context([]), samples=latent, amount=3)
    assert out["samples"].shape == (6, 4, 4, 4)
    assert torch.equal(out["samples"][4:], latent["samples"])
    assert out["batch_index"] == [3, 4, 5, 6, 7, 8]
    assert out["noise_mask"].shape == (6, 1, 8, 8)
    (plain,) = node("RepeatLatentBatch").run(
        context([]), samples={"samples": torch.zeros(1, 4, 2, 2)}, amount=2
    )
    assert "batch_index" not in plain


def test_latent_from_batch_sets_batch_index_and_keeps_noise():
    latent = {"samples": torch.randn(4, 4, 4, 4), "noise_mask": torch.rand(4, 1, 8, 8)}
    (out,) = node("LatentFromBatch").run(context([]), samples=latent, batch_index=2, length=5)
    assert torch.equal(out["samples"], latent["samples"][2:])
    assert out["batch_index"] == [2, 3]
    assert torch.equal(out["noise_mask"], latent["noise_mask"][2:])
    (again,) = node("LatentFromBatch").run(context([]), samples=out, batch_index=1, length=1)
    assert again["batch_index"] == [3]
    (clamped,) = node("LatentFromBatch").run(context([]), samples=latent, batch_index=63, length=1)
    assert clamped["batch_index"] == [3]
    # The cut sample gets the noise it had in the batch.
    full = initial_noise(latent["samples"], 11)
    assert torch.equal(initial_noise(again["samples"], 11, again["batch_index"]), full[3:4])


def test_set_latent_noise_mask():
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = node("SetLatentNoiseMask").run(context([]), samples=latent, mask=torch.ones(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64)
    assert "noise_mask" not in latent
    with pytest.raises(ValueError, match="MASK"):
        node("SetLatentNoiseMask").run(context([]), samples=latent, mask=torch.ones(3))
