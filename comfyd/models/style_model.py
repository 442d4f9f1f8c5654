"""Style models (STYLE_MODEL): the T2I-Adapter style adapter, which turns a CLIP vision tower's
last hidden state into extra context tokens for the text conditioning.

The adapter (TencentARC's `t2iadapter_style`): the image tokens plus 8 learned style tokens go
through a LayerNorm, three pre-norm transformer blocks (torch's MultiheadAttention, QuickGELU
MLP) and a final LayerNorm; the 8 style tokens are projected to the 768-wide SD1 context. ComfyUI
builds it at these fixed sizes (width 1024, 8 heads, 3 blocks, 8 tokens) and loads the file
strictly; so does comfyd. It runs on the CPU in float32, as in ComfyUI.

Flux Redux (`redux_up.*`, `redux_down.*`; ComfyUI's comfy/ldm/flux/redux.py): a SigLIP tower's
1152-wide tokens go up to 3 x 4096, through SiLU, and down to 4096-wide T5 context tokens (729 of
them for a 384 px SigLIP), which StyleModelApply appends to a Flux prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from comfyd.models.tensorfile import ModelFileError, TensorFile

WIDTH, CONTEXT, HEADS, LAYERS, TOKENS = 1024, 768, 8, 3, 8


class StyleModelFormatError(ModelFileError):
    """A style_models file comfyd cannot run; the message says why."""


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-norm transformer block on [tokens, batch, width] (sequence first)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, width * 4), gelu=_QuickGELU(), c_proj=nn.Linear(width * 4, width))
        )
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    # Parameter names are the stored ones (`transformer_layes` is the original spelling).
    def __init__(self) -> None:
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_Block(WIDTH, HEADS) for _ in range(LAYERS)])
        self.style_embedding = nn.Parameter(torch.zeros(1, TOKENS, WIDTH))
        self.ln_post = nn.LayerNorm(WIDTH)
        self.ln_pre = nn.LayerNorm(WIDTH)
        self.proj = nn.Parameter(torch.zeros(WIDTH, CONTEXT))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[B, tokens, 1024] -> [B, 8, 768]."""
        style = self.style_embedding.expand(image_tokens.shape[0], -1, -1)
        x = self.ln_pre(torch.cat([image_tokens, style], dim=1))
        x = self.transformer_layes(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, -TOKENS:, :]) @ self.proj


REDUX_WIDTH, REDUX_CONTEXT = 1152, 4096


class ReduxEncoder(nn.Module):
    """Flux Redux: SigLIP tokens [B, n, 1152] -> context tokens [B, n, 4096]."""

    def __init__(self, context: int = REDUX_CONTEXT) -> None:
        super().__init__()
        self.redux_up = nn.Linear(REDUX_WIDTH, context * 3)
        self.redux_down = nn.Linear(context * 3, context)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.redux_down(torch.nn.functional.silu(self.redux_up(image_tokens)))


@dataclass(frozen=True)
class StyleModelHandle:
    key: str
    model: nn.Module  # StyleAdapter or ReduxEncoder

    def tokens(self, clip_vision_output: Any) -> torch.Tensor:
        """The style tokens for a CLIP_VISION_OUTPUT ([B, 8, 768] T2I style; [B, n, 4096] Redux)."""
        redux = isinstance(self.model, ReduxEncoder)
        width, tower = (REDUX_WIDTH, "SigLIP") if redux else (WIDTH, "ViT-L CLIP")
        hidden = getattr(clip_vision_output, "last_hidden_state", None)
        if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3 or hidden.shape[-1] != width:
            got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else None
            what = "Flux Redux" if redux else "the style adapter"
            raise ValueError(f"{what} needs a {tower} vision output ({width}-wide tokens), got {got}")
        with torch.inference_mode():
            return self.model(hidden.to(device="cpu", dtype=torch.float32))


def load_style_model(tf: TensorFile, key: str) -> StyleModelHandle:
    keys = set(tf.keys())
    redux = "redux_down.weight" in keys
    if not redux and "style_embedding" not in keys:
        raise StyleModelFormatError(
            f"{tf.path.name} is not a style model: no style_embedding (T2I-Adapter style) or "
            "redux_down (Flux Redux) tensor"
        )
    if redux:  # built empty: a default init of its 64M parameters would be thrown away
        with torch.device("meta"):
            model: nn.Module = ReduxEncoder()
    else:
        model = StyleAdapter()
    state = {name: tf.get(name).to(torch.float32) for name in keys}
    try:
        model.load_state_dict(state, strict=True, assign=redux)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:3]
        what = (
            f"the Flux Redux encoder ({REDUX_WIDTH} -> {REDUX_CONTEXT * 3} -> {REDUX_CONTEXT})"
            if redux
            else f"the T2I-Adapter style model (width {WIDTH}, {LAYERS} blocks, {TOKENS} tokens)"
        )
        raise StyleModelFormatError(
            f"{tf.path.name} does not fit {what}: {' '.join(s.strip() for s in first)}"
        ) from None
    model.requires_grad_(False)
    model.eval()
    return StyleModelHandle(key=key, model=model)
