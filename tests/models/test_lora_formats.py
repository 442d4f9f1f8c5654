"""LyCORIS formats: LoCon (lora_mid), LoHa, LoKr, DoRA, diff / diff_b and set_weight patch the
weights they name, by their formulas (written out independently here), stack in order and
restore bit for bit. ComfyUI's own renders of these files are in tests/fidelity (lora_cases.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyd.models.lora import module_index
from comfyd.models.manager import ModelManager
from comfyd.models.tiny import make_tiny_lora
from comfyd.models.tiny_lycoris import FORMATS, make_tiny_lycoris

from .conftest import make_settings, share_checkpoint, single_name


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, models_root: Path) -> Path:
    root = tmp_path_factory.mktemp("lycoris-models")
    sd1 = share_checkpoint(models_root, root, single_name("sd1"))
    for seed, fmt in enumerate(FORMATS, start=1):
        make_tiny_lycoris(root / "loras", sd1, fmt, seed=seed, name=f"{fmt}.safetensors")
    make_tiny_lycoris(root / "loras", sd1, "lokr", seed=9, name="lokr-flat.safetensors", cp=False)
    plain = make_tiny_lora(root / "loras", sd1, "kohya", seed=7, name="plain.safetensors")
    # One layer with a LoRA pair and a diff: ComfyUI lets the diff win.
    tensors = load_file(plain)
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    shape = (tensors[f"{layer}.lora_up.weight"].shape[0], tensors[f"{layer}.lora_down.weight"].shape[1])
    tensors[f"{layer}.diff"] = torch.full(shape, 0.25, dtype=torch.float16)
    save_file(tensors, str(root / "loras" / "lora-and-diff.safetensors"))
    return root


@pytest.fixture(scope="module")
def mm(root: Path) -> ModelManager:
    return ModelManager(make_settings(root, device="cpu"))


@pytest.fixture(scope="module")
def loaded(mm: ModelManager):
    return mm.load_checkpoint("comfyd-tiny-sd1.safetensors")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _params_named(raw: dict[str, torch.Tensor], index: dict[str, str], prefix: str) -> dict[str, dict[str, torch.Tensor]]:
    """module name -> {part: tensor} for every layer of the file under `prefix`."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        if key.startswith(prefix):
            path, _, part = key[len(prefix) :].partition(".")
            out.setdefault(index[path], {})[part] = value.float()
    return out


def _expected(fmt: str, w: torch.Tensor, b: torch.Tensor | None, t: dict[str, torch.Tensor], s: float):
    """The patched (weight, bias) by each format's formula, written without the adapter code."""
    alpha = float(t["alpha"]) if "alpha" in t else None
    if fmt in ("locon", "dora"):
        up, down = t["lora_up.weight"].flatten(1), t["lora_down.weight"].flatten(1)
        if "lora_mid.weight" in t:  # Tucker: delta[o,i,k,l] = sum up[o,m] mid[m,n,k,l] down[n,i]
            delta = torch.einsum("om,mnkl,ni->oikl", up, t["lora_mid.weight"], down)
        else:
            delta = (up @ down).reshape(w.shape)
        delta = delta * (alpha / down.shape[0])
        if fmt == "locon":
            return w + s * delta, b
        scale = t["dora_scale"]
        changed = w + delta
        if scale.shape[0] == w.shape[0]:  # output axis: the base weight's row norms (ComfyUI's choice)
            norm = w.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
        else:
            norm = changed.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (w.dim() - 2))
        target = changed * scale.reshape(norm.shape) / (norm + torch.finfo(torch.float32).eps)
        return w + s * (target - w), b
    if fmt == "loha":
        def factor(i: int) -> torch.Tensor:
            a, bb = t[f"hada_w{i}_a"], t[f"hada_w{i}_b"]
            if f"hada_t{i}" in t:  # CP: per kernel position, a^T @ core @ b
                return torch.einsum("ip,ijkl,jr->prkl", a, t[f"hada_t{i}"], bb)
            return a @ bb
        return w + s * (alpha / t["hada_w1_b"].shape[0]) * (factor(1) * factor(2)).reshape(w.shape), b
    if fmt == "lokr":
        rank = None
        w1 = t.get("lokr_w1")
        if w1 is None:
            w1, rank = t["lokr_w1_a"] @ t["lokr_w1_b"], t["lokr_w1_b"].shape[0]
        w2 = t.get("lokr_w2")
        if w2 is None:
            rank = t["lokr_w2_b"].shape[0]
            if "lokr_t2" in t:
                w2 = torch.einsum("ip,ijkl,jr->prkl", t["lokr_w2_a"], t["lokr_t2"], t["lokr_w2_b"])
            else:
                w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return w + s * (alpha / rank) * torch.kron(w1, w2.contiguous()).reshape(w.shape), b
    if fmt == "diff":
        return w + s * t["diff"].reshape(w.shape), (b + s * t["diff_b"] if "diff_b" in t else b)
    assert fmt == "set"
    return t["set_weight"].reshape(w.shape), b


@pytest.mark.parametrize("fmt", [*FORMATS, "lokr-flat"])
def test_each_format_patches_its_layers_by_its_formula_and_restores(fmt: str, mm: ModelManager, loaded, root: Path) -> None:
    model, clip, _ = loaded
    raw = load_file(root / "loras" / f"{fmt}.safetensors")
    kind = fmt.removesuffix("-flat")
    strength = 0.7
    for module, role, prefix, patched_handle in (
        (model.unet, "unet", "lora_unet_", model.with_loras(mm.lora_patch(f"{fmt}.safetensors", strength))),
        (clip.text_encoders["l"], "l", "lora_te_", clip.with_loras(mm.lora_patch(f"{fmt}.safetensors", strength))),
    ):
        base = _state(module)
        layers = _params_named(raw, module_index(module, role, "sd1"), prefix)
        assert layers, (fmt, role)
        with patched_handle.patched() as patched:
            after = _state(patched if role == "unet" else patched["l"])
        expected_changed = set()
        for name, tensors in layers.items():
            w, b = base[f"{name}.weight"], base.get(f"{name}.bias")
            want_w, want_b = _expected(kind, w, b, tensors, strength)
            torch.testing.assert_close(after[f"{name}.weight"], want_w, rtol=1e-5, atol=1e-5, msg=f"{fmt} {name}")
            expected_changed.add(f"{name}.weight")
            if want_b is not b:
                torch.testing.assert_close(after[f"{name}.bias"], want_b, rtol=1e-5, atol=1e-5)
                expected_changed.add(f"{name}.bias")
        changed = {k for k, v in after.items() if not torch.equal(v, base[k])}
        assert changed == expected_changed, (fmt, role, changed ^ expected_changed)
        # Bit for bit back.
        assert all(torch.equal(v, base[k]) for k, v in module.state_dict().items()), (fmt, role)


def test_the_diff_file_also_changes_norms_and_biases(root: Path) -> None:
    raw = load_file(root / "loras" / "diff.safetensors")
    assert any("in_layers_0.diff" in k or "norm1.diff" in k for k in raw)  # GroupNorm / LayerNorm
    assert any(k.endswith(".diff_b") for k in raw)


def test_formats_stack_in_order_and_restore_bit_for_bit(mm: ModelManager, loaded, root: Path) -> None:
    model, _, _ = loaded
    base = _state(model.unet)
    chain = [("locon", 0.6), ("dora", 0.8), ("diff", -0.5), ("loha", 1.3), ("lokr", 0.4), ("set", 1.0)]
    stacked = model.with_loras(*(mm.lora_patch(f"{fmt}.safetensors", s) for fmt, s in chain))
    with stacked.patched() as unet:
        after = _state(unet)
    # The same chain by the formulas, each seeing the result of the one before.
    index = module_index(model.unet, "unet", "sd1")
    want = {k: v.float().clone() for k, v in base.items()}
    for fmt, s in chain:
        for name, tensors in _params_named(load_file(root / "loras" / f"{fmt}.safetensors"), index, "lora_unet_").items():
            w, b = _expected(fmt, want[f"{name}.weight"], want.get(f"{name}.bias"), tensors, s)
            want[f"{name}.weight"] = w
            if b is not None:
                want[f"{name}.bias"] = b
    for key, value in after.items():
        torch.testing.assert_close(value, want[key], rtol=1e-5, atol=1e-5, msg=key)
    assert all(torch.equal(v, base[k]) for k, v in model.unet.state_dict().items())
    # A DoRA after a LoCon is not the sum of the two applied alone: order matters, as in ComfyUI.
    assert not all(torch.equal(after[k], base[k]) for k in after)


def test_a_diff_beside_a_lora_pair_replaces_it_as_in_comfyui(mm: ModelManager, loaded) -> None:
    model, _, _ = loaded
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    base = model.unet.get_parameter(name).detach().clone()
    with model.with_loras(mm.lora_patch("lora-and-diff.safetensors", 2.0)).patched() as unet:
        torch.testing.assert_close(unet.get_parameter(name), base + 0.5, rtol=0, atol=1e-6)


def test_strength_scales_a_set_weight_not_at_all(mm: ModelManager, loaded, root: Path) -> None:
    model, _, _ = loaded
    raw = load_file(root / "loras" / "set.safetensors")
    layers = _params_named(raw, module_index(model.unet, "unet", "sd1"), "lora_unet_")
    name = next(iter(layers))
    for strength in (0.3, -2.0):
        with model.with_loras(mm.lora_patch("set.safetensors", strength)).patched() as unet:
            value = unet.get_parameter(f"{name}.weight")
            assert torch.equal(value, layers[name]["set_weight"].reshape(value.shape)), strength
    assert math.isfinite(float(model.unet.get_parameter(f"{name}.weight").sum()))
