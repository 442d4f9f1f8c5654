"""Wan 2.1 image-to-video's CLIP-vision input: what ComfyUI's WanModel does with `clip_fea`.

A Wan 2.1 I2V (or first/last-frame, FLF2V) transformer carries `img_emb` (LayerNorm, Linear, GELU,
Linear, LayerNorm from the CLIP tower's 1280-wide penultimate hidden states to the model width;
FLF2V files add `img_emb.emb_pos`, a learned position table of 514 tokens) and, in every block's
cross-attention, `k_img` / `v_img` / `norm_k_img`. ComfyUI's conditioning carries the
CLIP_VISION_OUTPUT; the model reads its `penultimate_hidden_states` ([B, 257, 1280], or 514 tokens
when WanFirstLastFrameToVideo joined two images), embeds them, puts them before the text tokens and
lets each block attend to the first `n` tokens with the image projections and to the rest with the
text ones, the two results added before the output projection.

diffusers' WanTransformer3DModel has the same weights but finds the split by assuming 512 text
tokens, and its FLF position table expects the two images as two batch rows. Here the split comes
from the image token count of the call (`image_tokens`), as ComfyUI's `context_img_len`, and the
embedder adds the position table to the joined tokens as ComfyUI does. Without image features an
image model attends to the whole text context with both projections, as ComfyUI's does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The image token count of the transformer call running in this context (None: no image).
_IMAGE_TOKENS: ContextVar[int | None] = ContextVar("wan_image_tokens", default=None)


@contextmanager
def image_tokens(count: int | None) -> Iterator[None]:
    token = _IMAGE_TOKENS.set(count)
    try:
        yield
    finally:
        _IMAGE_TOKENS.reset(token)


def _attend(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    b = q.shape[0]
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, heads * q.shape[-1])


class ImageCrossAttention:
    """Attention processor of an I2V block's cross-attention (ComfyUI's split, see above)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: Any = None,
    ) -> Tensor:
        if encoder_hidden_states is None:
            raise ValueError("a Wan image-to-video cross-attention needs a context")
        count = _IMAGE_TOKENS.get()
        image = encoder_hidden_states[:, :count]
        text = encoder_hidden_states[:, count:] if count is not None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states))
        out = _attend(q, attn.norm_k(attn.to_k(text)), attn.to_v(text), attn.heads)
        out = out + _attend(q, attn.norm_added_k(attn.add_k_proj(image)), attn.add_v_proj(image), attn.heads)
        return attn.to_out[1](attn.to_out[0](out.type_as(hidden_states)))


@cache
def image_embedding_class() -> type[nn.Module]:
    from diffusers.models.transformers.transformer_wan import WanImageEmbedding

    class ImageEmbedding(WanImageEmbedding):
        """diffusers' image embedder with ComfyUI's position rule: the joined tokens, cut to the
        table's length, plus the table."""

        def forward(self, encoder_hidden_states_image: Tensor) -> Tensor:
            x = encoder_hidden_states_image
            if self.pos_embed is not None:
                table = self.pos_embed.to(dtype=x.dtype, device=x.device)
                x = x[:, : table.shape[1]] + table[:, : x.shape[1]]
            return self.norm2(self.ff(self.norm1(x)))

    return ImageEmbedding


POSITION_TABLE = "img_emb.emb_pos"  # FLF2V's stored name (diffusers: image_embedder.pos_embed)


def position_table_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """The config entry of an FLF2V file's image position table (nothing without one)."""
    shape = shapes.get(prefix + POSITION_TABLE)
    return {"pos_embed_seq_len": shape[1]} if shape is not None else {}


def install(model: nn.Module) -> nn.Module:
    """Give an empty WanTransformer3DModel with an image embedder ComfyUI's image path (call it
    where the model was built, under init_empty_weights: the new embedder is empty too)."""
    config = model.config
    if config.image_dim is None:
        return model
    width = config.num_attention_heads * config.attention_head_dim
    model.condition_embedder.image_embedder = image_embedding_class()(
        config.image_dim, width, pos_embed_seq_len=config.get("pos_embed_seq_len")
    )
    for block in model.blocks:
        block.attn2.processor = ImageCrossAttention()
    return model


def clip_features(item: dict[str, Any]) -> Tensor | None:
    """The `clip_fea` of a conditioning entry: its CLIP_VISION_OUTPUT's penultimate hidden states."""
    output = item.get("clip_vision_output")
    if output is None:
        return None
    states = getattr(output, "penultimate_hidden_states", None)
    if not isinstance(states, Tensor) or states.ndim != 3:
        raise ValueError("a Wan image-to-video model needs a CLIP_VISION_OUTPUT with penultimate_hidden_states")
    return states


def with_clip_features(builder: Any, image_dim: int) -> Any:
    """The vector-conditioning builder of an image-embedding model: `builder`'s values plus
    `clip_fea` when the entry carries a CLIP vision output."""

    def build(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
        out = dict(builder(item, dims)) if builder is not None else {}
        features = clip_features(item)
        if features is not None:
            if features.shape[-1] != image_dim:
                raise ValueError(
                    f"the CLIP vision output is {features.shape[-1]} wide; this Wan model's image embedder "
                    f"takes {image_dim} (the penultimate layer of CLIP ViT-H, clip_vision_h)"
                )
            out["clip_fea"] = features
        return out

    return build


def transformer_inputs(transformer: nn.Module, added: dict[str, Tensor], dtype: torch.dtype) -> Tensor | None:
    """The image features to hand an image-embedding transformer (None: none, or no embedder)."""
    if transformer.config.image_dim is None:
        return None
    features = added.get("clip_fea")
    return None if features is None else features.to(dtype)
