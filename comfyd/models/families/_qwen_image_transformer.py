"""The Qwen-Image transformer: ComfyUI's file layout onto diffusers' `QwenImageTransformer2DModel`,
its config read from the shapes, and the network call the sampler makes.

Stored layout (qwen_image*.safetensors in `diffusion_models/`; `model.diffusion_model.` in
all-in-one files): `img_in`, `txt_norm`, `txt_in`, `time_text_embed.timestep_embedder.linear_{1,2}`,
`transformer_blocks.N.{img,txt}_mod.1`, `transformer_blocks.N.attn.{to_q,to_k,to_v,to_out.0,
add_{q,k,v}_proj,to_add_out,norm_q,norm_k,norm_added_q,norm_added_k}`,
`transformer_blocks.N.{img,txt}_mlp.net.{0.proj,2}`, `norm_out.linear`, `proj_out`: diffusers'
own names, so the key map is the identity. ComfyUI reads only the input width and the depth from
the file (heads 24 x 128, text width 3584 are fixed); comfyd reads every width from the shapes, so
smaller test transformers load too.

The sampler calls a UNet-shaped network; `QwenImageNetwork` takes the latent as ComfyUI hands it
to the model ([B, 16, 1, h, w], or [B, 16, h, w]), pads it to whole 2x2 patches by wrapping around,
packs the patches, and positions them as ComfyUI's Qwen-Image does: image tokens at (0, row -
rows // 2, column - columns // 2), text tokens at (t, t, t) from max(rows // 2, columns // 2) on,
rotary angles in float64 (`ComfyRope` replaces diffusers' table, which centres odd grids one
place differently). Reference latents (a conditioning's `reference_latents`, e.g. from
ReferenceLatent) are packed the same way and appended after the image tokens, reference i at
(i + 1, centred row, centred column), ComfyUI's default "index" method; only the image tokens'
output is kept. The text conditioning goes in unmasked, as ComfyUI's attention ignores the
mask; prompts of different lengths are never batched together (`exact_context_batches`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from comfyd.models.families._flux_inputs import pack, unpack
from comfyd.models.families._flux_transformer import rope_axes
from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import Source

PATCH = 2
ROPE_THETA = 10000
REFERENCE_KEY = "ref_latent_"
MARKER_KEYS = ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.attn.add_q_proj.weight")
_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.")


def is_qwen_image_transformer(keys: set[str], prefix: str) -> bool:
    return (
        all(prefix + key in keys for key in MARKER_KEYS)
        and f"{prefix}transformer_blocks.0.img_mod.1.weight" in keys
    )


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers QwenImageTransformer2DModel config values of the transformer under `prefix`."""
    hidden, in_channels = shapes[f"{prefix}img_in.weight"]
    head_dim = shapes[f"{prefix}transformer_blocks.0.attn.norm_q.weight"][0]
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k[len(prefix) :]))}
    return {
        "patch_size": PATCH,
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}proj_out.weight"][0] // (PATCH * PATCH),
        "num_layers": len(blocks),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes[f"{prefix}txt_in.weight"][1],
        "guidance_embeds": False,
        "axes_dims_rope": list(rope_axes(head_dim)),
    }


class QwenImageTranslator:
    """diffusers parameter names -> stored keys: the same names, under `prefix`."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        return Source(self.prefix + name.removeprefix("transformer."))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import QwenImageTransformer2DModel

    with init_empty_weights():
        net = QwenImageTransformer2DModel.from_config(dict(config))
    net.pos_embed = ComfyRope(list(config["axes_dims_rope"]))
    return net


def _axis_angles(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[n, dim / 2] rotary angles of one position axis, float64 as ComfyUI computes them."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=positions.device)
    return positions.to(torch.float64)[:, None] * (1.0 / (ROPE_THETA**scale))[None, :]


class ComfyRope(nn.Module):
    """Rotary factors (complex, [tokens, head_dim / 2]) of the image and text tokens at ComfyUI's
    positions; called by diffusers' transformer in place of its own table."""

    def __init__(self, axes_dim: list[int]) -> None:
        super().__init__()
        self.axes_dim = axes_dim

    def _factors(self, ids: torch.Tensor) -> torch.Tensor:
        angles = torch.cat([_axis_angles(ids[:, i], d) for i, d in enumerate(self.axes_dim)], dim=-1)
        return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)

    def forward(
        self, video_fhw: Any, max_txt_seq_len: Any = None, device: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        shapes = video_fhw[0] if isinstance(video_fhw, list) else video_fhw
        shapes = shapes if isinstance(shapes, list) else [shapes]
        image_ids = []
        for index, (_frames, rows, cols, *offsets) in enumerate(shapes):
            row0, col0 = offsets if offsets else (0, 0)
            ids = torch.zeros(rows, cols, 3, dtype=torch.float64, device=device)
            ids[..., 0] = float(index)
            ids[..., 1] = (torch.arange(rows, device=device, dtype=torch.float64) + row0 - rows // 2)[:, None]
            ids[..., 2] = (torch.arange(cols, device=device, dtype=torch.float64) + col0 - cols // 2)[None, :]
            image_ids.append(ids.reshape(rows * cols, 3))
        _, rows, cols, *_ = shapes[0]
        start = max(rows // 2, cols // 2)
        text = torch.arange(start, start + int(max_txt_seq_len), device=device, dtype=torch.float64)
        return self._factors(torch.cat(image_ids)), self._factors(text[:, None].expand(-1, 3))


def reference_builder(mean: Sequence[float], std: Sequence[float]) -> Any:
    """The vector-conditioning builder that hands a conditioning's `reference_latents` (ReferenceLatent,
    Qwen-Image-Edit) to the network as `ref_latent_<i>`, normalised as ComfyUI's process_latent_in
    normalises them (Wan 2.1's per-channel mean and std)."""

    def build(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, torch.Tensor]:
        references = item.get("reference_latents") or []
        method = item.get("reference_latents_method")
        if references and method not in (None, "index"):
            raise ValueError(
                f"reference latent method {method!r} is not supported yet for Qwen-Image (only 'index')"
            )
        out: dict[str, torch.Tensor] = {}
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        for index, latent in enumerate(references):
            if (
                not isinstance(latent, torch.Tensor)
                or latent.ndim not in (4, 5)
                or latent.shape[1] != len(mean)
            ):
                raise ValueError(f"a Qwen-Image reference latent must be [B, {len(mean)}, (1,) H, W]")
            latent = latent.float() if latent.ndim == 5 else latent.float().unsqueeze(2)
            out[f"{REFERENCE_KEY}{index}"] = (latent - m) / s
        return out

    return build


class QwenImageNetwork(TransformerNetwork):
    """The UNet-shaped call around a QwenImageTransformer2DModel (see the module docstring)."""

    exact_context_batches = True  # prompts of different lengths run as separate batches

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        video = x.ndim == 5
        if video:
            if x.shape[2] != 1:
                raise ValueError(f"Qwen-Image samples single images; got a latent with {x.shape[2]} frames")
            x = x[:, :, 0]
        height, width = x.shape[-2:]
        packed, rows, cols = pack(x)
        shapes: list[tuple[int, ...]] = [(1, rows, cols)]
        added = added_cond_kwargs or {}
        count = sum(1 for key in added if key.startswith(REFERENCE_KEY))
        for index in range(count):  # ComfyUI's "index" method: reference i at frame position i + 1
            ref = added[f"{REFERENCE_KEY}{index}"]
            if ref.shape[2] != 1:
                raise ValueError("a Qwen-Image reference latent must be a single frame")
            ref_packed, ref_rows, ref_cols = pack(ref[:, :, 0].to(packed.dtype))
            packed = torch.cat([packed, ref_packed.expand(packed.shape[0], -1, -1)], dim=1)
            shapes.append((1, ref_rows, ref_cols))
        tokens = rows * cols
        out = self.transformer(
            hidden_states=packed,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep.to(packed.dtype),
            img_shapes=[shapes],
            return_dict=False,
        )[0]
        out = unpack(out[:, :tokens], rows, cols)[:, :, :height, :width]
        return (out.unsqueeze(2) if video else out,)
