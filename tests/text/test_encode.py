"""encode_text against plain transformers CLIP runs on tiny random encoders (ComfyUI semantics)."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest
import torch

from comfyd.models.clip_tokens import END_TOKEN, START_TOKEN, tokenize_words
from comfyd.models.handles import ClipHandle, LoraPatch
from comfyd.models.text_encoding import encode_text, encode_text_sdxl, tokenize_text

ATOL = 1e-5


def chunk_ids(words: list[int], pad: int = END_TOKEN) -> list[int]:
    return [START_TOKEN, *words, END_TOKEN] + [pad] * (75 - len(words))


def reference(model: torch.nn.Module, ids: list[list[int]]) -> Any:
    """transformers' own forward (causal mask only), all hidden states kept."""
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), output_hidden_states=True)


def test_unweighted_prompt_equals_last_hidden_state(sd1_clip: ClipHandle, sd1_model: torch.nn.Module) -> None:
    cond, options = encode_text(sd1_clip, "a red cat, sitting")[0]
    ref = reference(sd1_model, [chunk_ids(tokenize_words("a red cat, sitting"))])
    assert cond.shape == (1, 77, 32) and cond.dtype == torch.float32
    torch.testing.assert_close(cond, ref.last_hidden_state, atol=ATOL, rtol=0)
    # pooled: final hidden state at the first end token (unprojected for SD1)
    torch.testing.assert_close(options["pooled_output"], ref.pooler_output, atol=ATOL, rtol=0)
    assert set(options) == {"pooled_output"}


def test_weighted_tokens_interpolate_against_the_empty_prompt(
    sd1_clip: ClipHandle, sd1_model: torch.nn.Module
) -> None:
    cond = encode_text(sd1_clip, "a (red:1.5) cat, ((blue))")[0][0]
    a, red, cat, comma, blue = (tokenize_words(w)[0] for w in ("a", "red", "cat", ",", "blue"))
    ref = reference(sd1_model, [chunk_ids([a, red, cat, comma, blue]), chunk_ids([])])
    z, z_empty = ref.last_hidden_state[0], ref.last_hidden_state[1]
    expected = z.clone()
    expected[2] = (z[2] - z_empty[2]) * 1.5 + z_empty[2]
    expected[5] = (z[5] - z_empty[5]) * (1.1 * 1.1) + z_empty[5]
    torch.testing.assert_close(cond[0], expected, atol=ATOL, rtol=0)
    # unweighted positions are untouched, weighted ones really moved
    assert not torch.allclose(cond[0, 2], z[2], atol=1e-3)


def test_weight_zero_gives_the_empty_prompt_token(sd1_clip: ClipHandle, sd1_model: torch.nn.Module) -> None:
    cond = encode_text(sd1_clip, "(cat:0)")[0][0]
    z_empty = reference(sd1_model, [chunk_ids([])]).last_hidden_state[0]
    torch.testing.assert_close(cond[0, 1], z_empty[1], atol=ATOL, rtol=0)


def test_clip_set_last_layer_takes_hidden_state_then_final_norm(
    sd1_clip: ClipHandle, sd1_model: torch.nn.Module
) -> None:
    ids = [chunk_ids(tokenize_words("a red cat"))]
    ref = reference(sd1_model, ids)
    with torch.no_grad():
        penultimate = sd1_model.final_layer_norm(ref.hidden_states[-2])
        first = sd1_model.final_layer_norm(ref.hidden_states[1])
    torch.testing.assert_close(
        encode_text(sd1_clip.with_layer(-2), "a red cat")[0][0], penultimate, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(
        encode_text(sd1_clip.with_layer(-3), "a red cat")[0][0], first, atol=ATOL, rtol=0
    )
    # -1 is the last layer; beyond the depth ComfyUI falls back to the last layer as well
    for layer in (-1, -24):
        torch.testing.assert_close(
            encode_text(sd1_clip.with_layer(layer), "a red cat")[0][0],
            ref.last_hidden_state,
            atol=ATOL,
            rtol=0,
        )
    # the pooled output stays the final layer's
    pooled = encode_text(sd1_clip.with_layer(-2), "a red cat")[0][1]["pooled_output"]
    torch.testing.assert_close(pooled, ref.pooler_output, atol=ATOL, rtol=0)


def test_long_prompt_concatenates_chunks(sd1_clip: ClipHandle, sd1_model: torch.nn.Module) -> None:
    prompt = " ".join(f"word{i}" for i in range(40))
    chunks = tokenize_text(sd1_clip, prompt)["l"]
    assert len(chunks) == 2
    cond, options = encode_text(sd1_clip, prompt)[0]
    assert cond.shape == (1, 154, 32)
    ref = reference(sd1_model, [[slot for slot, _ in chunk] for chunk in chunks])
    torch.testing.assert_close(cond[0, :77], ref.last_hidden_state[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(cond[0, 77:], ref.last_hidden_state[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(options["pooled_output"], ref.pooler_output[0:1], atol=ATOL, rtol=0)


def _with_vocab_row(model: torch.nn.Module, row: int, vector: torch.Tensor) -> torch.nn.Module:
    """A copy of `model` whose vocabulary row `row` holds `vector` (to feed a vector via input_ids)."""
    patched = copy.deepcopy(model)
    with torch.no_grad():
        patched.embeddings.token_embedding.weight[row] = vector
    return patched


def test_embedding_vector_replaces_the_token_embedding_in_its_slot(
    sd1_clip: ClipHandle, sd1_model: torch.nn.Module
) -> None:
    torch.manual_seed(7)
    vectors = torch.randn(2, 32) * 0.02
    cond = encode_text(sd1_clip, "a embedding:style cat", embeddings=lambda name: {"l": vectors})[0][0]
    a, cat = tokenize_words("a")[0], tokenize_words("cat")[0]
    free_rows = (40000, 40001)
    manual = _with_vocab_row(_with_vocab_row(sd1_model, free_rows[0], vectors[0]), free_rows[1], vectors[1])
    ref = reference(manual, [chunk_ids([a, *free_rows, cat])])
    torch.testing.assert_close(cond, ref.last_hidden_state, atol=ATOL, rtol=0)


def test_embedding_of_wrong_width_is_dropped_and_padded_at_the_end(
    sd1_clip: ClipHandle, sd1_model: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        cond = encode_text(
            sd1_clip, "a embedding:wide cat", embeddings=lambda name: {"l": torch.ones(1, 64)}
        )[0][0]
    assert "does not fit" in caplog.text
    a, cat = tokenize_words("a")[0], tokenize_words("cat")[0]
    ref = reference(sd1_model, [chunk_ids([a, cat])])  # the slot disappears; a pad joins the end
    torch.testing.assert_close(cond, ref.last_hidden_state, atol=ATOL, rtol=0)


def test_fp16_weights_run_in_fp32(sd1_model: torch.nn.Module, clip_factory: Any) -> None:
    half = copy.deepcopy(sd1_model).half()
    cond = encode_text(clip_factory("sd1", {"l": half}), "a (red:1.2) cat")[0][0]
    assert cond.dtype == torch.float32
    assert half.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16  # weights left as they are
    # the same math as fp32 over the fp16-rounded weights (ComfyUI's manual_cast)
    rounded = copy.deepcopy(half).float()
    fp32 = encode_text(clip_factory("sd1", {"l": rounded}), "a (red:1.2) cat")[0][0]
    torch.testing.assert_close(cond, fp32, atol=1e-6, rtol=0)
    ref = reference(rounded, [chunk_ids(tokenize_words("a cat"))]).last_hidden_state
    plain = encode_text(clip_factory("sd1", {"l": half}), "a cat")[0][0]
    torch.testing.assert_close(plain, ref, atol=ATOL, rtol=0)


def test_sd2_pads_with_zero_and_uses_normed_penultimate_layer(sd2_clip: ClipHandle) -> None:
    model = sd2_clip.text_encoders["h"]
    cond, options = encode_text(sd2_clip, "a red cat")[0]
    ids = [chunk_ids(tokenize_words("a red cat"), pad=0)]
    ref = reference(model, ids)
    with torch.no_grad():
        expected = model.final_layer_norm(ref.hidden_states[-2])
    torch.testing.assert_close(cond, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(options["pooled_output"], ref.pooler_output, atol=ATOL, rtol=0)


def test_sdxl_concatenates_penultimate_l_and_g_without_norm(sdxl_clip: ClipHandle) -> None:
    clip_l, clip_g = sdxl_clip.text_encoders["l"], sdxl_clip.text_encoders["g"]
    cond, options = encode_text(sdxl_clip, "a red cat")[0]
    words = tokenize_words("a red cat")
    ref_l = reference(clip_l, [chunk_ids(words)])
    ref_g = reference(clip_g, [chunk_ids(words, pad=0)])
    assert cond.shape == (1, 77, 32 + 48)
    torch.testing.assert_close(cond[..., :32], ref_l.hidden_states[-2], atol=ATOL, rtol=0)
    torch.testing.assert_close(cond[..., 32:], ref_g.hidden_states[-2], atol=ATOL, rtol=0)
    # pooled: bigG's projected pooled output
    assert options["pooled_output"].shape == (1, 40)
    torch.testing.assert_close(options["pooled_output"], ref_g.text_embeds, atol=ATOL, rtol=0)


def test_sdxl_clip_set_last_layer_minus_one_is_the_raw_last_layer(sdxl_clip: ClipHandle) -> None:
    cond = encode_text(sdxl_clip.with_layer(-1), "a red cat")[0][0]
    ref_l = reference(sdxl_clip.text_encoders["l"], [chunk_ids(tokenize_words("a red cat"))])
    torch.testing.assert_close(cond[..., :32], ref_l.hidden_states[-1], atol=ATOL, rtol=0)
    assert not torch.allclose(cond[..., :32], ref_l.last_hidden_state, atol=1e-3)  # no final norm


def test_sdxl_separate_prompts_are_aligned_with_empty_chunks(sdxl_clip: ClipHandle) -> None:
    long_text = " ".join(["cat"] * 100)
    cond = encode_text_sdxl(sdxl_clip, text_g=long_text, text_l="dog")[0][0]
    assert cond.shape == (1, 154, 80)
    ref_l = reference(sdxl_clip.text_encoders["l"], [chunk_ids(tokenize_words("dog")), chunk_ids([])])
    torch.testing.assert_close(cond[0, :77, :32], ref_l.hidden_states[-2][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(cond[0, 77:, :32], ref_l.hidden_states[-2][1], atol=ATOL, rtol=0)


def test_sdxl_node_encoding_refuses_an_sd1_clip(sd1_clip: ClipHandle) -> None:
    with pytest.raises(ValueError, match="SDXL CLIP"):
        encode_text_sdxl(sd1_clip, "a", "b")


class ScalingPatcher:
    """A stand-in LoRA patcher: scales the last layer's fc2 weight, restores it afterwards."""

    def __init__(self) -> None:
        self.saved: dict[int, torch.Tensor] = {}

    def _weight(self, module: torch.nn.Module) -> torch.Tensor:
        return module.encoder.layers[-1].mlp.fc2.weight

    def apply(self, module: Any, patches: tuple[LoraPatch, ...]) -> None:
        weight = self._weight(module)
        self.saved[id(module)] = weight.detach().clone()
        with torch.no_grad():
            weight.mul_(1.0 + sum(p.strength for p in patches))

    def restore(self, module: Any) -> None:
        with torch.no_grad():
            self._weight(module).copy_(self.saved.pop(id(module)))


def test_loras_apply_during_encoding_and_are_removed_after(
    sd1_clip: ClipHandle, sd1_model: torch.nn.Module
) -> None:
    from dataclasses import replace

    before = sd1_model.encoder.layers[-1].mlp.fc2.weight.detach().clone()
    plain = encode_text(sd1_clip, "a red cat")[0][0]
    patched_clip = replace(sd1_clip, patcher=ScalingPatcher()).with_loras(LoraPatch("lora", 1.0))
    patched = encode_text(patched_clip, "a red cat")[0][0]
    assert not torch.allclose(plain, patched, atol=1e-4)
    assert torch.equal(sd1_model.encoder.layers[-1].mlp.fc2.weight, before)
    torch.testing.assert_close(encode_text(sd1_clip, "a red cat")[0][0], plain, atol=0, rtol=0)


def test_bad_inputs_give_clear_errors(sd1_clip: ClipHandle) -> None:
    with pytest.raises(TypeError, match="string"):
        encode_text(sd1_clip, None)  # type: ignore[arg-type]
    from dataclasses import replace

    with pytest.raises(ValueError, match="family 'sd9'"):
        encode_text(replace(sd1_clip, family="sd9"), "a")
