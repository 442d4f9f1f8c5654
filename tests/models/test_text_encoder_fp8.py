"""Text encoders stored in fp8 keep their linear weights in fp8 (comfyd.models.text_encoder_fp8):
the conditioning is the upcast-at-load encoder's bit for bit, the model manager counts the fp8
bytes, LoRAs patch the fp8 weights as they patch the diffusion model's, and offloading to host
memory and back keeps it all. Tiny T5 (Flux / Chroma) and UMT5 (Wan) files written in fp8 stand in
for `t5xxl_fp8_e4m3fn` and `umt5_xxl_fp8_e4m3fn`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from comfyd.models import clip_residency, t5_encoder, text_encoder_fp8
from comfyd.models.families import _flux_tiny, _wan_tiny
from comfyd.models.manager import ModelManager, module_bytes
from comfyd.models.text_encoding import encode_text

from .conftest import make_settings

FP8 = torch.float8_e4m3fn
META = torch.device("meta")
T5 = "t5-fp8.safetensors"
UMT5 = "umt5-fp8.safetensors"
PROMPT = "a (red:1.3) fox in the snow"


def _to_fp8(path: Path, out: Path) -> None:
    """Every floating tensor of `path` in fp8, as ComfyUI's fp8 text-encoder files store them."""
    tensors = load_file(str(path))
    save_file({k: v.to(FP8) if v.is_floating_point() else v for k, v in tensors.items()}, str(out))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("te-fp8")
    folder = root / "text_encoders"
    folder.mkdir()
    source = tmp_path_factory.mktemp("te-source")
    _to_fp8(_flux_tiny.write_tiny_t5(source / "t5.safetensors", seed=3), folder / T5)
    from comfyd.models import tiny, umt5_encoder

    encoder = tiny.random_module(umt5_encoder.empty_encoder(_wan_tiny.TINY_UMT5), 3, "wan-umt5xxl")
    state = {k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state = {k: v.to(FP8) for k, v in state.items()}
    state[umt5_encoder.SPIECE_KEY] = torch.frombuffer(
        bytearray(_wan_tiny.tiny_spiece_model()), dtype=torch.uint8
    )
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / UMT5))
    return root


def _manager(root: Path, **settings: Any) -> ModelManager:
    return ModelManager(make_settings(root, device="cpu", **settings))


def _upcast_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loading before fp8 storage: every weight read into the compute dtype."""
    monkeypatch.setattr(text_encoder_fp8, "t5_storage_dtype", lambda tf, prefix: None)


def _linears(encoder: nn.Module) -> list[nn.Linear]:
    return [m for m in encoder.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(("name", "clip_type"), [(T5, "chroma"), (UMT5, "wan")])
def test_fp8_linear_weights_stay_fp8_and_condition_as_the_upcast_encoder(
    root: Path, monkeypatch: pytest.MonkeyPatch, name: str, clip_type: str
) -> None:
    clip = _manager(root).load_clip([name], clip_type)
    (encoder,) = clip.text_encoders.values()
    kept = encode_text(clip, PROMPT)[0][0]
    assert {m.weight.dtype for m in _linears(encoder)} == {FP8}  # back in fp8 after the encode
    others = {
        p.dtype
        for n, p in encoder.named_parameters()
        if not isinstance(encoder.get_submodule(n.rsplit(".", 1)[0]), nn.Linear)
    }
    compute = next(iter(others))
    assert others == {compute} and compute not in text_encoder_fp8.FP8_DTYPES  # embeddings and norms

    with monkeypatch.context() as patch:
        _upcast_at_load(patch)
        upcast_clip = _manager(root).load_clip([name], clip_type)
        upcast = encode_text(upcast_clip, PROMPT)[0][0]
    (upcast_encoder,) = upcast_clip.text_encoders.values()
    assert {p.dtype for p in upcast_encoder.parameters()} == {compute}
    assert torch.equal(kept, upcast)

    # The model manager's bytes: one per linear weight value instead of the compute dtype's size.
    linear_values = sum(m.weight.numel() for m in _linears(encoder))
    saved = linear_values * (torch.empty(0, dtype=compute).element_size() - 1)
    assert module_bytes(encoder)[0] + module_bytes(encoder)[1] == sum(module_bytes(upcast_encoder)) - saved


def test_full_size_t5xxl_in_fp8_holds_about_half_its_bf16_bytes() -> None:
    """The T5-XXL of Flux (t5xxl_fp8_e4m3fn: 4.76B parameters, 4.63B in linear layers), built on
    the meta device."""
    config = t5_encoder.infer_config(_t5xxl_shapes(), "")
    fp8, bf16 = (
        t5_encoder.share_embedding(t5_encoder.empty_encoder(config)).to(torch.bfloat16) for _ in "ab"
    )
    assert text_encoder_fp8.keep_linears_in(fp8, FP8, torch.bfloat16) > 0
    fp8_bytes, bf16_bytes = sum(module_bytes(fp8, host=META)), sum(module_bytes(bf16, host=META))
    assert 9.5e9 < bf16_bytes < 9.6e9 and 4.85e9 < fp8_bytes < 4.95e9
    assert 0.49 < fp8_bytes / bf16_bytes < 0.52


def _t5xxl_shapes() -> dict[str, tuple[int, ...]]:
    d, ff, heads = 4096, 10240, 64
    shapes: dict[str, tuple[int, ...]] = {
        "shared.weight": (32128, d),
        "encoder.final_layer_norm.weight": (d,),
    }
    for i in range(24):
        attn, mlp = f"encoder.block.{i}.layer.0.SelfAttention.", f"encoder.block.{i}.layer.1.DenseReluDense."
        shapes |= {f"{attn}{p}.weight": (d, d) for p in "qkvo"}
        shapes |= {f"{mlp}wi_0.weight": (ff, d), f"{mlp}wi_1.weight": (ff, d), f"{mlp}wo.weight": (d, ff)}
    shapes["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (32, heads)
    return shapes


def test_a_lora_patches_the_fp8_weights_and_restores_them(root: Path) -> None:
    mm = _manager(root)
    clip = mm.load_clip([T5], "chroma")
    (encoder,) = clip.text_encoders.values()
    name = "encoder.block.0.layer.0.SelfAttention.q.weight"
    weight = dict(encoder.named_parameters())[name]
    gen = torch.Generator().manual_seed(4)
    down, up = torch.randn(2, weight.shape[1], generator=gen), torch.randn(weight.shape[0], 2, generator=gen)
    layer = "lora_te1_encoder_block_0_layer_0_SelfAttention_q"
    (root / "loras").mkdir(exist_ok=True)
    save_file(
        {f"{layer}.lora_down.weight": down, f"{layer}.lora_up.weight": up},
        str(root / "loras" / "t5.safetensors"),
    )
    base = weight.detach().clone()
    without = encode_text(clip, PROMPT)[0][0]
    patched_clip = clip.with_loras(mm.lora_patch("t5.safetensors", 0.5))
    with patched_clip.patched() as encoders:
        after = dict(encoders["t5xxl"].named_parameters())[name].detach().clone()
    # As the diffusion model's fp8 layers: the change in fp32, the sum rounded back to fp8 once.
    assert after.dtype == FP8
    assert torch.equal(after.float(), (base.float() + 0.5 * up @ down).to(FP8).float())
    assert torch.equal(weight, base)
    changed = encode_text(patched_clip, PROMPT)[0][0]
    assert not torch.equal(changed, without)
    assert torch.equal(encode_text(clip, PROMPT)[0][0], without)


def test_an_fp8_text_encoder_offloads_to_the_host_and_comes_back(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moves: list[str] = []
    stash: dict[int, dict[str, torch.Tensor]] = {}

    def move(module: Any, device: torch.device) -> None:  # meta plays host memory (see test_clip_offload)
        tensors = lambda: [*module.named_parameters(), *module.named_buffers()]  # noqa: E731
        if device.type == "meta":
            stash[id(module)] = {n: t.detach().clone() for n, t in tensors()}
            module.to(device)
        else:
            saved = stash.pop(id(module))
            module.to_empty(device=device)
            with torch.no_grad():
                for n, t in tensors():
                    t.copy_(saved[n])
        moves.append(device.type)

    monkeypatch.setattr(clip_residency, "move_module", move)
    manager = _manager(
        root,
        model_cache_device_bytes=1 << 40,
        model_cache_host_bytes=1 << 40,
        text_encoder_offload="after_encode",
    )
    manager.host_device = META
    clip = manager.load_clip([T5], "chroma")
    (encoder,) = clip.text_encoders.values()
    fp8_bytes = sum(module_bytes(encoder))
    before = encode_text(clip, PROMPT)[0][0]
    assert moves == ["meta"] and manager.stats()["host_bytes"] == fp8_bytes
    after = encode_text(clip, PROMPT)[0][0]
    assert moves == ["meta", "cpu", "meta"] and torch.equal(before, after)
    assert {m.weight.dtype for m in _linears(encoder)} == {FP8}


def test_a_second_forward_waits_while_the_first_has_a_unit_cast_up(root: Path) -> None:
    """On a CPU the device gate lets encodes run at once; the casts of one must not meet the other
    mid-layer (the second would find the weights back in fp8)."""
    clip = _manager(root).load_clip([T5], "chroma")
    (encoder,) = clip.text_encoders.values()
    unit = text_encoder_fp8.cast_units(encoder)[0]
    inside, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def pause(module: Any, args: Any) -> None:
        seen.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            inside.set()
            release.wait(30)

    handle = unit.register_forward_pre_hook(pause)
    ids = torch.tensor([[37, 1, 0]])
    outputs: dict[str, torch.Tensor] = {}

    def run() -> None:
        with torch.no_grad():
            outputs[threading.current_thread().name] = encoder(input_ids=ids).last_hidden_state

    first, second = threading.Thread(target=run, name="first"), threading.Thread(target=run, name="second")
    first.start()
    assert inside.wait(30)
    second.start()
    second.join(0.5)
    blocked = second.is_alive() and seen == ["first"]
    release.set()
    first.join(30)
    second.join(30)
    handle.remove()
    assert blocked
    assert seen == ["first", "second"] and torch.equal(outputs["first"], outputs["second"])


class _Stored:
    """Just the keys and dtypes of a file."""

    def __init__(self, dtypes: dict[str, torch.dtype]) -> None:
        self.dtypes = dtypes

    def keys(self) -> list[str]:
        return list(self.dtypes)

    def dtype(self, key: str) -> torch.dtype:
        return self.dtypes[key]


def test_which_t5_files_stay_in_fp8() -> None:
    norm, q = "encoder.final_layer_norm.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"
    rule = text_encoder_fp8.t5_storage_dtype
    assert rule(_Stored({norm: FP8, q: FP8}), "") == FP8  # ComfyUI's rule: the final norm's dtype
    assert rule(_Stored({norm: torch.float16, q: torch.float8_e5m2}), "") == torch.float8_e5m2
    assert rule(_Stored({norm: torch.bfloat16, q: torch.bfloat16}), "") is None
    # Scaled fp8 (a scale per weight, with or without the marker) is dequantized at load instead.
    assert rule(_Stored({norm: FP8, q: FP8, "scaled_fp8": FP8}), "") is None
    assert (
        rule(
            _Stored(
                {
                    f"te.{norm}": FP8,
                    f"te.{q}": FP8,
                    "te.encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.float32,
                }
            ),
            "te.",
        )
        is None
    )
    assert rule(_Stored({f"te.{norm}": FP8, f"te.{q}": FP8}), "te.") == FP8
