"""ControlNet semantics in the sampling loop, on tiny models: what a control adds, when, to which
prompts, how controls chain and batch, and where T2I-Adapter residuals land."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.models.control_link import ControlLink, ControlRun, broadcast_hint
from comfyd.models.manager import ModelManager
from comfyd.models.text_encoding import encode_text
from comfyd.nodes.conditioning.controlnet import (
    ControlNetApply,
    ControlNetApplyAdvanced,
    SetUnionControlNetType,
)
from comfyd.sampling.control import ControlResiduals, share_with_uncond, unet_kwargs
from comfyd.sampling.ksampler import common_ksampler

from .conftest import controlnet_name

HINT = torch.linspace(0, 1, 64 * 64 * 3).reshape(1, 64, 64, 3)


def _ctx(manager: ModelManager) -> NodeContext:
    return NodeContext(env=NodeEnvironment(manager.settings, models=manager), job_id="j", node_id="1",
                       class_type="ControlNetApplyAdvanced")


def _setup(manager: ModelManager, family: str = "sd1") -> tuple[Any, Any, Any, ControlLink]:
    model, clip, _ = manager.load_checkpoint(f"comfyd-tiny-{family}.safetensors")
    positive, negative = encode_text(clip, "a red fox"), encode_text(clip, "blurry")
    return model, positive, negative, ControlLink(manager.load_control_model(controlnet_name(family)))


def _sample(model: Any, positive: Any, negative: Any, steps: int = 3) -> torch.Tensor:
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return common_ksampler(model, 7, steps, 5.0, "euler", "normal", positive, negative, latent)["samples"]


def test_controlnet_changes_the_sample_only_inside_its_range(cn_manager: ModelManager) -> None:
    model, positive, negative, link = _setup(cn_manager)
    node = ControlNetApplyAdvanced()
    plain = _sample(model, positive, negative)
    full = node.run(_ctx(cn_manager), positive, negative, link, HINT, 1.0, 0.0, 1.0)
    never = node.run(_ctx(cn_manager), positive, negative, link, HINT, 1.0, 0.0, 0.0)
    assert not torch.allclose(_sample(model, *full), plain, atol=1e-4)
    assert torch.equal(_sample(model, *never), plain)  # an empty range adds nothing
    # Strength 0 hands the conditioning back unchanged, as ComfyUI does.
    assert node.run(_ctx(cn_manager), positive, negative, link, HINT, 0.0, 0.0, 1.0) == (positive, negative)


def test_positive_and_negative_share_one_control_and_one_batch(cn_manager: ModelManager) -> None:
    model, positive, negative, link = _setup(cn_manager)
    pos, neg = ControlNetApplyAdvanced().run(_ctx(cn_manager), positive, negative, link, HINT, 1.0, 0.0, 1.0)
    assert pos[0][1]["control"] is neg[0][1]["control"]
    assert pos[0][1]["control_apply_to_uncond"] is False
    calls: list[int] = []
    module = link.model.module
    original = module.forward

    def counting(sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(sample.shape[0])
        return original(sample, *args, **kwargs)

    module.forward = counting
    try:
        _sample(model, pos, neg, steps=2)
    finally:
        del module.forward
    assert calls == [2, 2]  # one ControlNet call per step, over [uncond, cond]


def test_old_apply_node_lends_its_control_to_the_negative_prompt(cn_manager: ModelManager) -> None:
    model, positive, negative, link = _setup(cn_manager)
    (pos,) = ControlNetApply().run(_ctx(cn_manager), positive, link, HINT, 1.0)
    assert pos[0][1]["control_apply_to_uncond"] is True
    prompts = [[{**pos[0][1], "cross_attn": pos[0][0]}], [{**negative[0][1], "cross_attn": negative[0][0]}]]
    share_with_uncond(prompts, ["positive", "negative"])
    assert prompts[1][0]["control"] is pos[0][1]["control"]
    # The same control on both prompts is what ControlNetApplyAdvanced gives at full range.
    both = ControlNetApplyAdvanced().run(_ctx(cn_manager), positive, negative, link, HINT, 1.0, 0.0, 1.0)
    assert torch.equal(_sample(model, pos, negative), _sample(model, *both))


def test_chained_controls_add_up(cn_manager: ModelManager) -> None:
    _, positive, negative, link = _setup(cn_manager)
    other = ControlLink(cn_manager.load_control_model(controlnet_name("sd1", "diffusers")))
    node = ControlNetApplyAdvanced()
    first = node.run(_ctx(cn_manager), positive, negative, link, HINT, 0.5, 0.0, 1.0)
    second = node.run(_ctx(cn_manager), *first, other, HINT, 2.0, 0.0, 1.0)
    chained = second[0][0][1]["control"]
    assert chained.previous is first[0][0][1]["control"] and chained.model is other.model
    x = torch.randn(2, 4, 8, 8)
    t = torch.full((2,), 500.0)
    context = torch.cat([negative[0][0], positive[0][0]])
    run = chained.for_run(lambda p: 10.0 if p == 0 else 0.0)
    both = run(x, t, 1.0, context, None, 2)
    alone_a = first[0][0][1]["control"].for_run(lambda p: 10.0 if p == 0 else 0.0)(x, t, 1.0, context, None, 2)
    alone_b = ControlRun(ControlLink(other.model, hint=HINT.movedim(-1, 1), strength=2.0), 10.0, 0.0, None)
    b = alone_b(x, t, 1.0, context, None, 2)
    for i in range(len(both.output)):
        assert torch.allclose(both.output[i], alone_a.output[i] + b.output[i], atol=1e-6)
    # Outside the second control's range only the first one's residuals come back.
    late = node.run(_ctx(cn_manager), *first, other, HINT, 2.0, 0.5, 1.0)[0][0][1]["control"]
    sigmas = {0.0: 10.0, 0.5: 0.5, 1.0: 0.0}
    assert torch.equal(late.for_run(sigmas.__getitem__)(x, t, 1.0, context, None, 2).middle[0], alone_a.middle[0])


def test_residuals_are_the_controlnet_output_times_strength(cn_manager: ModelManager) -> None:
    _, positive, _, link = _setup(cn_manager)
    x, t = torch.randn(1, 4, 8, 8), torch.full((1,), 300.0)
    strong = ControlRun(ControlLink(link.model, hint=HINT.movedim(-1, 1), strength=1.5), 1e9, 0.0, None)
    residuals = strong(x, t, 1.0, positive[0][0], None, 1)
    down, mid = link.model.module(x, t, encoder_hidden_states=positive[0][0], controlnet_cond=HINT.movedim(-1, 1),
                                  return_dict=False)
    assert torch.allclose(residuals.middle[0], mid * 1.5) and len(residuals.output) == len(down)


def test_sdxl_controlnet_takes_the_vector_conditioning(cn_manager: ModelManager) -> None:
    model, positive, negative, link = _setup(cn_manager, "sdxl")
    assert link.model.module.config.addition_embed_type == "text_time"
    pos, neg = ControlNetApplyAdvanced().run(_ctx(cn_manager), positive, negative, link, HINT, 1.0, 0.0, 1.0)
    assert not torch.allclose(_sample(model, pos, neg, steps=2), _sample(model, positive, negative, steps=2))


def test_union_type_is_an_extra_argument_on_a_new_link(cn_manager: ModelManager) -> None:
    *_, link = _setup(cn_manager)
    (typed,) = SetUnionControlNetType().run(_ctx(cn_manager), link, "depth")
    (auto,) = SetUnionControlNetType().run(_ctx(cn_manager), link, "auto")
    assert typed.extra_args == {"control_type": [1]} and auto.extra_args == {"control_type": []}
    assert link.extra_args == {} and typed.model is link.model


def test_hint_broadcast_follows_comfyui() -> None:
    hint = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert broadcast_hint(hint[:1], 4, 2).shape[0] == 1
    assert broadcast_hint(hint[:2], 4, 2).flatten().tolist() == [0, 1, 0, 1]
    assert broadcast_hint(hint, 4, 2).flatten().tolist() == [0, 1, 0, 1]
    assert broadcast_hint(hint[:1].repeat(1, 1, 1, 1), 3, 1).shape[0] == 1


def test_t2i_residuals_land_at_the_end_of_each_level() -> None:
    features = [torch.full((1, 1), float(i)) for i in range(4)]
    per_block: list[Any] = []
    for f in features:
        per_block += [None, None, f]
    kwargs = unet_kwargs(ControlResiduals(input=per_block[::-1]), per_level=2, levels=4)
    assert [float(r) for r in kwargs["down_intrablock_additional_residuals"]] == [0, 1, 2, 3]
    # A two-level UNet takes the first two; ComfyUI never reaches the other two.
    kwargs = unet_kwargs(ControlResiduals(input=per_block[::-1]), per_level=2, levels=2)
    assert [float(r) for r in kwargs["down_intrablock_additional_residuals"]] == [0, 1]
    with pytest.raises(ValueError, match="input block 2"):
        unet_kwargs(ControlResiduals(input=per_block[::-1]), per_level=1, levels=2)
    assert unet_kwargs(None, 2, 4) == {}


@pytest.mark.slow
def test_t2i_adapter_residuals_reach_a_four_level_unet(tmp_path: Any) -> None:
    from diffusers import UNet2DConditionModel

    from comfyd.models.control_model import load_control_model
    from comfyd.models.devices import compute_plan
    from comfyd.models.tiny_control import write_tiny_t2i_adapter
    from comfyd.sampling.denoiser import UNetDenoiser
    from comfyd.sampling.sigmas import discrete_schedule

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=16,
        attention_head_dim=8, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ).eval()
    path = write_tiny_t2i_adapter(tmp_path / "t2i.safetensors", seed=2, channels=32)
    adapter = load_control_model(path, "k", path.name, compute_plan("cpu", "auto"))
    link = ControlLink(adapter).with_hint(HINT, 0.5, (0.0, 1.0), None)
    denoiser = UNetDenoiser(unet, discrete_schedule(), "eps", torch.float32, "cpu")
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    with torch.inference_mode():
        run = link.for_run(lambda p: 1e9 if p == 0 else 0.0)
        controlled = denoiser(x, 3.0, context, None, control=run, batched_number=2)
        plain = denoiser(x, 3.0, context, None)
        features = adapter.module(HINT.movedim(-1, 1))
        c_in, _, index = denoiser.sigma_terms(3.0)
        expected = unet(x / c_in, torch.full((2,), float(index)), encoder_hidden_states=context,
                        down_intrablock_additional_residuals=[f * 0.5 for f in features], return_dict=False)[0]
    assert not torch.allclose(controlled, plain)
    assert torch.allclose(controlled, x - expected * 3.0, atol=1e-5)
