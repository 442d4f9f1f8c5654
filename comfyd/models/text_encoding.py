"""CLIPTextEncode: prompt text -> CONDITIONING, with ComfyUI's numbers (reference §9).

Per text encoder (comfy/sd1_clip.py: ClipTokenWeightEncoder.encode_token_weights, SDClipModel):
- the prompt's 77-token chunks (clip_tokens.py) are encoded as one batch, plus the empty prompt
  [start, end, pad...] when any weight differs from 1;
- each token with weight w != 1 becomes (z - z_empty) * w + z_empty, position by position;
- chunks are concatenated along the token axis: [1, 77 * chunks, dim];
- the output is the last layer after final_layer_norm, or with a layer index (CLIPSetLastLayer, or
  the family's default) the hidden state after that layer, normalised or not per family;
- pooled output: final (normalised) hidden state of the first chunk at its first end token,
  through text_projection where the family uses the projected one.

T5 encoders (Flux's T5-XXL) take the whole prompt as one sequence: `t5_encoder`; Qwen-Image's
Qwen2.5-VL takes it inside its chat template: `qwen25_encoder`; Z-Image's Qwen3 likewise:
`qwen3_encoder`; Lumina 2's Gemma 2 as one weighted sequence: `gemma2_encoder`.

Each family declares its encoders' recipes (layer, norm, pad token, pooled projection), the
order their outputs are concatenated in on the feature axis (SDXL: [CLIP-L, bigG]) and which
encoder's pooled output the model takes (`comfyd.models.families`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from comfyd.models import (
    clip_forward,
    families,
    flux2_text,
    gemma2_encoder,
    hidream_llama,
    llama_encoder,
    qwen3_encoder,
    qwen25_encoder,
    t5_encoder,
    t5_first_chunk,
    tokenizer_options,
    umt5_encoder,
)
from comfyd.models.clip_tokens import Chunk, ChunkLayout, EmbeddingLookup, tokenize_prompt
from comfyd.models.families import EncoderRecipe
from comfyd.models.handles import ClipHandle

logger = logging.getLogger(__name__)

# CONDITIONING: [[cond [1, tokens, dim], {"pooled_output": tensor | None, ...}], ...]
Conditioning = list[list[Any]]
# encoder key ("l", "g", ...) -> that encoder's chunks
EncoderTokens = dict[str, list[Chunk]]

# Conditioning tensors leave the encoder on the CPU, as ComfyUI's intermediate device.
OUTPUT_DEVICE = torch.device("cpu")


def encoder_recipe(family: str, key: str) -> EncoderRecipe:
    """The recipe of encoder `key` in a `family` checkpoint; ValueError for unknown combinations."""
    spec = families.get(family)
    if key not in spec.encoder_names:
        raise ValueError(f"no text encoding recipe for encoder {key!r} of model family {family!r}")
    return spec.encoder(key).recipe


def encode_text(clip: ClipHandle, text: str, embeddings: EmbeddingLookup | None = None) -> Conditioning:
    """CLIPTextEncode: `text` with ComfyUI's weight syntax -> CONDITIONING."""
    if not isinstance(text, str):
        raise TypeError(f"prompt text must be a string, got {type(text).__name__}")
    return conditioning_from_tokens(clip, tokenize_text(clip, text, embeddings))


def encode_text_sdxl(
    clip: ClipHandle, text_g: str, text_l: str, embeddings: EmbeddingLookup | None = None
) -> Conditioning:
    """CLIPTextEncodeSDXL's encoding: bigG reads `text_g`, CLIP-L reads `text_l`.

    When the two prompts give different chunk counts, the shorter side is extended with
    empty-prompt chunks so both cover the same tokens (as ComfyUI does).
    """
    if _family_encoders(clip.family) != {"l", "g"} or set(clip.text_encoders) != {"l", "g"}:
        raise ValueError(
            f"CLIPTextEncodeSDXL needs an SDXL CLIP with 'l' and 'g' encoders, got family {clip.family!r} "
            f"with encoders {sorted(clip.text_encoders)}"
        )
    tokens = {
        "g": tokenize_for_encoder(clip, "g", text_g, embeddings),
        "l": tokenize_for_encoder(clip, "l", text_l, embeddings),
    }
    longest = max(len(chunks) for chunks in tokens.values())
    for key, chunks in tokens.items():
        while len(chunks) < longest:
            chunks.extend(tokenize_for_encoder(clip, key, ""))
    return conditioning_from_tokens(clip, tokens)


def tokenize_text(clip: ClipHandle, text: str, embeddings: EmbeddingLookup | None = None) -> EncoderTokens:
    """The chunks every encoder of `clip` receives for `text`."""
    return {key: tokenize_for_encoder(clip, key, text, embeddings) for key in _encoder_keys(clip)}


def tokenize_for_encoder(
    clip: ClipHandle, key: str, text: str, embeddings: EmbeddingLookup | None = None
) -> list[Chunk]:
    recipe = encoder_recipe(clip.family, key)
    spec = families.get(clip.family).encoder(key)
    kind = spec.kind
    if spec.stacked_layers:  # Flux.2: Mistral Small / Qwen3 in its templates, no weights
        return [[(token, 1.0) for token in flux2_text.tokens(kind, clip.tokenizers[key], text)]]
    if kind == "t5":
        pads = tokenizer_options.padding(_options(clip), spec, spec.min_length)
        if spec.max_length is not None:  # HiDream: the first 128-token chunk only
            return [t5_first_chunk.first_chunk(text, spec.max_length, pads.min_length, pads.min_padding)]
        return [t5_encoder.tokenize(text, pads.min_length, pads.min_padding)]  # one sequence, no 77-token chunks
    if kind == "llama" and spec.all_layers:  # HiDream: the plain prompt, every layer
        return [hidream_llama.tokenize(clip.tokenizers[key], text)]
    if kind == "umt5":
        end, pad, length = spec.sequence or (umt5_encoder.END_TOKEN, umt5_encoder.PAD_TOKEN, umt5_encoder.MIN_LENGTH)
        pads = tokenizer_options.padding(_options(clip), spec, length)
        return [umt5_encoder.tokenize(clip.tokenizers[key], text, pads.min_length, end, pad, pads.min_padding)]
    if kind == "llama":  # HunyuanVideo: the prompt inside ComfyUI's template, one sequence
        return [llama_encoder.tokenize(clip.tokenizers[key], text)]
    if kind == "qwen25_7b":  # the chat template, no weights: plain ids
        return [[(token, 1.0) for token in qwen25_encoder.tokenize(clip.tokenizers[key], text)]]
    if kind == "qwen3_4b":  # Z-Image's chat template, no weights
        return [[(token, 1.0) for token in qwen3_encoder.tokenize(clip.tokenizers[key], text)]]
    if kind == "gemma2_2b":  # Lumina 2: one weighted sequence after the begin token
        return [gemma2_encoder.tokenize(clip.tokenizers[key], text)]
    return tokenize_prompt(text, _chunk_layout(clip, key, recipe.layout), embedding_key=key, embeddings=embeddings)


def _options(clip: ClipHandle) -> tuple[tuple[str, int], ...]:
    """The CLIP's tokenizer options (T5TokenizerOptions); none on a handle-like without them."""
    return getattr(clip, "tokenizer_options", ())


def _chunk_layout(clip: ClipHandle, key: str, layout: ChunkLayout) -> ChunkLayout:
    """ComfyUI's long-CLIP rule (comfy/text_encoders/long_clipl.py, applied by its CLIP loaders): a
    CLIP file whose position table is not 77 long (Long-CLIP's 248, HiDream's CLIP-L and CLIP-G)
    takes chunks of that length."""
    config = getattr(clip.text_encoders.get(key), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions != layout.length:
        return replace(layout, length=positions)
    return layout


def conditioning_from_tokens(clip: ClipHandle, tokens: EncoderTokens) -> Conditioning:
    family = families.get(clip.family)
    outputs = encoder_outputs(clip, tokens)
    cond, pooled = family.join_encodings(outputs)
    extra: dict[str, Any] = {"pooled_output": pooled, **family.conditioning_extras(outputs)}
    for key in _encoder_keys(clip):
        if family.encoder(key).attention_mask and family.encoder(key).conditioning_mask:  # the text's padding mask, [1, tokens] (LTX-Video)
            ids = [token for token, _ in tokens[key][0]]
            extra["attention_mask"] = torch.tensor([t5_encoder.attention_mask(ids)], dtype=torch.long)
    return [[cond, extra]]


def encode_tokens(clip: ClipHandle, tokens: EncoderTokens) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode pre-tokenized chunks with every encoder of `clip` (LoRAs applied) -> (cond, pooled)."""
    return families.get(clip.family).join_encodings(encoder_outputs(clip, tokens))


def encoder_outputs(
    clip: ClipHandle, tokens: EncoderTokens
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each encoder's (output, pooled) for pre-tokenized chunks (LoRAs applied)."""
    keys = _encoder_keys(clip)
    missing = [key for key in keys if key not in tokens]
    if missing:
        raise ValueError(f"no tokens for text encoder(s) {missing} of the {clip.family} CLIP")
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    with torch.no_grad(), clip.patched() as encoders:
        for key in keys:
            recipe = encoder_recipe(clip.family, key)
            family_spec = families.get(clip.family)
            kind = family_spec.encoder(key).kind
            if layers := family_spec.encoder(key).stacked_layers:  # Flux.2: three hidden states per token
                ids = [int(t) for t, _ in tokens[key][0]]
                outputs[key] = (flux2_text.encode_tokens(kind, encoders[key], ids, layers), None)
                continue
            if kind == "llama" and family_spec.encoder(key).all_layers:  # HiDream
                outputs[key] = (hidream_llama.encode(encoders[key], tokens[key][0]), None)
                continue
            if kind == "llama":
                outputs[key] = (llama_encoder.encode(encoders[key], tokens[key][0]), None)
                continue
            if kind == "t5" and family_spec.encoder(key).attention_mask:
                outputs[key] = (t5_encoder.encode(encoders[key], tokens[key][0], masked=True, zero_masked=False), None)
                continue
            if kind == "umt5" and family_spec.encoder(key).sequence is not None:  # AuraFlow's Pile-T5
                end, pad, _ = family_spec.encoder(key).sequence
                sequence = tokens[key][0] if tokens[key] else [(end, 1.0)]
                outputs[key] = (umt5_encoder.encode(encoders[key], sequence, end, pad), None)
                continue
            if kind in ("t5", "umt5"):
                # No tokens at all (CLIPTextEncodeSD3's empty_padding "none"): the end token alone.
                sequence = tokens[key][0] if tokens[key] else [(t5_encoder.END_TOKEN, 1.0)]
                if kind == "t5":
                    empty_end = family_spec.encoder(key).empty_prompt_end
                    outputs[key] = (t5_encoder.encode(encoders[key], sequence, empty_end=empty_end), None)
                else:
                    outputs[key] = (umt5_encoder.encode(encoders[key], sequence), None)
                continue
            if not tokens[key]:
                continue  # a CLIP given no tokens is left out (CLIPTextEncodeSD3, as ComfyUI)
            if kind == "qwen25_7b":
                outputs[key] = (qwen25_encoder.encode(encoders[key], [int(t) for t, _ in tokens[key][0]]), None)
                continue
            if kind == "gemma2_2b":
                outputs[key] = (gemma2_encoder.encode(encoders[key], tokens[key][0], clip.layer_idx), None)
                continue
            if kind == "qwen3_4b":
                ids = [int(t) for t, _ in tokens[key][0]]
                outputs[key] = (qwen3_encoder.encode(encoders[key], ids, clip.layer_idx), None)
                continue
            outputs[key] = encode_chunks(encoders[key], tokens[key], recipe, clip.layer_idx)
    return outputs


def encode_chunks(
    encoder: Any, chunks: list[Chunk], recipe: EncoderRecipe, layer_idx: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder's output for a prompt's chunks: ([1, 77 * chunks, dim], pooled [1, dim'])."""
    if not chunks:
        raise ValueError("a prompt always has at least one chunk; got none")
    weighted = any(weight != 1.0 for chunk in chunks for _, weight in chunk)
    sequences = [[slot for slot, _ in chunk] for chunk in chunks]
    if weighted:
        sequences.append(recipe.layout.empty_chunk(max(len(seq) for seq in sequences)))

    embeds, pooled_index = _input_embeddings(encoder, sequences, recipe.layout)
    capture = _captured_layer(layer_idx if layer_idx is not None else recipe.default_layer, encoder)
    result = clip_forward.run_text_encoder(encoder, embeds, capture)
    if result.captured is None:
        hidden = result.final
    elif recipe.norm_intermediate:
        hidden = clip_forward.final_layer_norm(encoder, result.captured)
    else:
        hidden = result.captured

    pooled = result.final[0:1, pooled_index]
    if recipe.projected_pooled:
        projected = clip_forward.project_pooled(encoder, pooled)
        if projected is not None:
            pooled = projected

    pieces = []
    for index, chunk in enumerate(chunks):
        z = hidden[index]
        if weighted:
            z = _interpolate_weights(z, hidden[-1], [weight for _, weight in chunk])
        pieces.append(z)
    cond = torch.cat(pieces, dim=0).unsqueeze(0)
    return cond.to(OUTPUT_DEVICE), pooled.to(OUTPUT_DEVICE)


def _interpolate_weights(z: torch.Tensor, z_empty: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """(z - z_empty) * w + z_empty for tokens with w != 1; others unchanged (ComfyUI, no renorm)."""
    count = min(len(weights), z.shape[0])
    w = torch.tensor(weights[:count], dtype=z.dtype, device=z.device).unsqueeze(-1)
    changed = torch.tensor([weight != 1.0 for weight in weights[:count]], device=z.device).unsqueeze(-1)
    head = torch.where(changed, (z[:count] - z_empty[:count]) * w + z_empty[:count], z[:count])
    return torch.cat([head, z[count:]], dim=0)


def _captured_layer(layer_idx: int | None, encoder: Any) -> int | None:
    """0-based layer whose output is used, or None for the last layer + final norm (ComfyUI rules)."""
    if layer_idx is None:
        return None
    layers = clip_forward.num_layers(encoder)
    if abs(layer_idx) > layers:  # ComfyUI falls back to the last layer
        return None
    if layer_idx < 0:
        return layers + layer_idx
    if layer_idx >= layers:
        raise ValueError(f"CLIP layer index {layer_idx} is out of range for a {layers}-layer text encoder")
    return layer_idx


def _input_embeddings(
    encoder: Any, sequences: list[list[Any]], layout: ChunkLayout
) -> tuple[torch.Tensor, int]:
    """Token embeddings [B, T, dim] (fp32) with embedding vectors in their slots.

    Also returns the pooled position of the first sequence: ComfyUI counts the slots up to and
    including the first end token (plus any embedding vectors) and takes that count minus one.
    """
    device = clip_forward.encoder_device(encoder)
    rows_per_sequence = []
    pooled_index = 0
    for seq_index, sequence in enumerate(sequences):
        # Vector slots get the pad token's row here; _place_vectors swaps the vectors in.
        ids = [layout.pad_token if isinstance(slot, torch.Tensor) else int(slot) for slot in sequence]
        vocab_rows = clip_forward.token_embeddings(
            encoder, torch.tensor(ids, dtype=torch.long, device=device)
        )
        if any(isinstance(slot, torch.Tensor) for slot in sequence):
            rows, counted = _place_vectors(sequence, vocab_rows, layout.end_token)
        else:
            rows = vocab_rows
            counted = ids.index(layout.end_token) + 1 if layout.end_token in ids else len(ids)
        rows_per_sequence.append(rows)
        if seq_index == 0:
            pooled_index = counted - 1
    return torch.stack(rows_per_sequence), pooled_index


def _place_vectors(sequence: list[Any], vocab_rows: torch.Tensor, end_token: int) -> tuple[torch.Tensor, int]:
    """Rows of a sequence holding embedding vectors, and its counted slots (see _input_embeddings).

    A vector whose width does not match the encoder is dropped with a warning and a pad row is
    appended at the end instead, keeping the length (ComfyUI's SDClipModel.process_tokens).
    """
    dim = vocab_rows.shape[-1]
    rows: list[torch.Tensor] = []
    pad_rows: list[torch.Tensor] = []
    counted = 0
    seen_end = False
    for position, slot in enumerate(sequence):
        if isinstance(slot, torch.Tensor):
            if slot.numel() != dim:
                logger.warning(
                    "embedding vector of width %d does not fit a %d-wide text encoder; ignoring it",
                    slot.shape[-1],
                    dim,
                )
                pad_rows.append(vocab_rows[position])  # this slot was embedded as the pad token
                continue
            rows.append(slot.reshape(dim).to(device=vocab_rows.device, dtype=vocab_rows.dtype))
            counted += 1
        else:
            rows.append(vocab_rows[position])
            if not seen_end:
                counted += 1
                seen_end = int(slot) == end_token
    return torch.stack(rows + pad_rows), counted


def _family_encoders(family: str) -> set[str]:
    try:
        return set(families.get(family).encoder_names)
    except ValueError:
        return set()


def _encoder_keys(clip: ClipHandle) -> list[str]:
    keys = list(clip.text_encoders)
    if not keys:
        raise ValueError(f"the {clip.family} CLIP has no text encoder")
    family = families.get(clip.family)
    expected = family.encoder_names
    if family.missing_encoders(set(keys)) or not set(keys) <= set(expected):
        raise ValueError(
            f"a {clip.family} CLIP needs text encoder(s) {list(expected)}, got {sorted(keys)}"
        )
    return [name for name in expected if name in keys]
