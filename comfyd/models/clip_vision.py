"""CLIP vision encoders (CLIP_VISION): ViT-L/H/G image towers on transformers'
CLIPVisionModelWithProjection, read offline from safetensors.

Two stored layouts are read, as ComfyUI reads them (comfy/clip_vision.py):
- transformers names (`vision_model.*`, `visual_projection.weight`): the usual `clip_vision/` file;
- OpenCLIP names (`<prefix>transformer.resblocks.*`, `conv1`, `proj` ...) under a prefix:
  `visual.` in a standalone file, `embedder.model.visual.` inside an SD2.1 unCLIP checkpoint.

The architecture is not read from shapes: as ComfyUI does, the number of layers picks a fixed
config (48 layers: ViT-bigG, 31+: ViT-H, 23+: ViT-L at 224 px, or 336 px when the position
table says so; 27 layers 1152 wide: SigLIP at 384 or 512 px, on transformers' SiglipVisionModel)
and every tensor must then fit it. LLaVA projectors and DINOv2 files are refused by name. Weights are rounded as the text encoders' are (ComfyUI keeps them in fp16 and
computes in float32).

`preprocess` is ComfyUI's clip_preprocess: RGB only, bicubic antialiased resize (shorter side to
the tower's size and a centre crop, or a plain squash to size x size), quantised to 8 bits,
then normalised with CLIP's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from comfyd.models.device_gate import DeviceGate
from comfyd.models.handles import held
from comfyd.models.keymap import TRANSPOSE, Source, openclip_block_source
from comfyd.models.tensorfile import ModelFileError, TensorFile

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_LAYER = "vision_model.encoder.layers.{}.layer_norm1.weight"
OPENCLIP_FIRST_BLOCK = "transformer.resblocks.0.attn.in_proj_weight"
STANDALONE_OPENCLIP_PREFIX = "visual."

_COMMON = {"num_channels": 3, "patch_size": 14, "layer_norm_eps": 1e-5, "num_attention_heads": 16}
# The fixed towers ComfyUI recognises (values of the public laion / openai configs).
VISION_CONFIGS: dict[str, dict[str, Any]] = {
    "vit-l": dict(_COMMON, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  projection_dim=768, hidden_act="quick_gelu", image_size=224),
    "vit-l-336": dict(_COMMON, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      projection_dim=768, hidden_act="quick_gelu", image_size=336),
    "vit-h": dict(_COMMON, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  projection_dim=1024, hidden_act="gelu", image_size=224),
    "vit-g": dict(_COMMON, hidden_size=1664, intermediate_size=8192, num_hidden_layers=48,
                  projection_dim=1280, hidden_act="gelu", image_size=224),
    # Tests only: ViT-H's width (what Wan 2.1 I2V's image embedder reads) at two narrow layers and
    # 28 px; recognised only in a file comfyd's make-tiny marked (`TINY_MARK`), never by shape.
    "tiny-vit-h": dict(_COMMON, hidden_size=1280, intermediate_size=256, num_hidden_layers=2,
                       projection_dim=64, hidden_act="gelu", image_size=28),
}  # fmt: skip
TINY_KIND = "tiny-vit-h"
TINY_MARK = "comfyd.tiny_clip_vision"
# SigLIP towers (Flux Redux's image encoder): ComfyUI's configs, with its LayerNorm eps (torch's
# default 1e-5, not SigLIP's 1e-6), no class token and no pooling head.
_SIGLIP = {"num_channels": 3, "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
           "num_attention_heads": 16, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-5,
           "vision_use_head": False}
VISION_CONFIGS.update({
    "siglip-384": dict(_SIGLIP, image_size=384, patch_size=14),
    "siglip-512": dict(_SIGLIP, image_size=512, patch_size=16),
})  # fmt: skip
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
# Position-table length of each SigLIP tower, as ComfyUI tells them apart.
SIGLIP_POSITIONS = {729: "siglip-384", 1024: "siglip-512"}


class ClipVisionFormatError(ModelFileError):
    """A file that holds no CLIP vision tower comfyd can run; the message says what it found."""


@dataclass
class ClipVisionOutput:
    """CLIP_VISION_OUTPUT, with ComfyUI's field names (attribute or item access)."""

    # None in an output WanFirstLastFrameToVideo joined from two (ComfyUI keeps only the
    # penultimate states there).
    last_hidden_state: torch.Tensor | None  # [B, tokens, width]: the last layer, before post_layernorm
    penultimate_hidden_states: torch.Tensor  # [B, tokens, width]
    image_embeds: torch.Tensor | None  # [B, projection_dim]: post_layernorm(class token) @ projection
    mm_projected: torch.Tensor | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass
class ClipVisionHandle:
    """CLIP_VISION: a loaded image tower and the preprocessing it expects."""

    key: str
    kind: str  # "vit-l" | "vit-l-336" | "vit-h" | "vit-g" | "siglip-384" | "siglip-512"
    model: Any  # transformers CLIPVisionModelWithProjection (SiglipVisionModel for SigLIP)
    device: torch.device
    dtype: torch.dtype
    gate: DeviceGate | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return int(VISION_CONFIGS[self.kind]["image_size"])

    @property
    def siglip(self) -> bool:
        return self.kind.startswith("siglip")

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        norm = (SIGLIP_MEAN, SIGLIP_STD) if self.siglip else (CLIP_MEAN, CLIP_STD)
        pixels = preprocess(image.float(), self.image_size, *norm, crop=crop)
        with held(self.gate), torch.inference_mode():
            out = self.model(
                pixel_values=pixels.to(device=self.device, dtype=self.dtype), output_hidden_states=True
            )
        last = out.last_hidden_state.float().cpu()
        return ClipVisionOutput(
            last_hidden_state=last,  # SigLIP: after its post_layernorm, as ComfyUI returns it
            penultimate_hidden_states=out.hidden_states[-2].float().cpu(),
            # SigLIP has no projection: ComfyUI's image_embeds are the whole normalised sequence.
            image_embeds=last if self.siglip else out.image_embeds.float().cpu(),
        )


def preprocess(
    image: torch.Tensor, size: int, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
    crop: bool = True,
) -> torch.Tensor:  # fmt: skip
    """IMAGE [B, H, W, C] in 0..1 -> normalised pixels [B, 3, size, size] (ComfyUI's rules)."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ValueError(f"an IMAGE [batch, height, width, >=3 channels] is needed, got {tuple(image.shape)}")
    pixels = image[..., :3].movedim(-1, 1)
    height, width = pixels.shape[2], pixels.shape[3]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        pixels = torch.nn.functional.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top = (pixels.shape[2] - size) // 2
        left = (pixels.shape[3] - size) // 2
        pixels = pixels[:, :, top : top + size, left : left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean_t) / std_t


# --- recognising the tower ---------------------------------------------------------------------
class _HfNames:
    """transformers names stored as they are (after `prefix`: SiglipVisionModel's parameters
    lack the stored `vision_model.`)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        return None if name.endswith("position_ids") else Source(self.prefix + name)


class _OpenClipVisualNames:
    """transformers CLIPVisionModelWithProjection names -> OpenCLIP visual-tower keys."""

    _TOP = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.pre_layrnorm.weight": "ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "ln_pre.bias",
        "vision_model.post_layernorm.weight": "ln_post.weight",
        "vision_model.post_layernorm.bias": "ln_post.bias",
    }
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        p = self.prefix
        if name == "visual_projection.weight":
            return Source(p + "proj", TRANSPOSE)
        if name in self._TOP:
            return Source(p + self._TOP[name])
        head = "vision_model.encoder.layers."
        if not name.startswith(head):
            return None
        index, _, inner = name[len(head) :].partition(".")
        return openclip_block_source(f"{p}transformer.resblocks.{index}.", inner)


def _layer_count(has_layer: Any) -> int:
    count = 0
    while has_layer(count):
        count += 1
    return count


def recognise(tf: TensorFile, prefix: str | None = None) -> tuple[str, Any]:
    """(tower kind, name translator) of the vision tower in `tf` (under `prefix` if given)."""
    keys = set(tf.keys())
    prefixes = [prefix] if prefix is not None else ["", STANDALONE_OPENCLIP_PREFIX]
    for p in prefixes:
        if f"{p}{OPENCLIP_FIRST_BLOCK}" in keys:
            names: Any = _OpenClipVisualNames(p)
            layers = _layer_count(lambda i, p=p: f"{p}transformer.resblocks.{i}.ln_1.weight" in keys)
            width = tf.shape(f"{p}ln_pre.weight")[0] if f"{p}ln_pre.weight" in keys else 0
            positions = tf.shape(f"{p}positional_embedding")[0] if f"{p}positional_embedding" in keys else 0
            return _kind(tf.path.name, layers, width, positions, keys), names
    if prefix is None and HF_LAYER.format(0) in keys and tf.metadata.get(TINY_MARK) == TINY_KIND:
        return TINY_KIND, _HfNames()
    if prefix is None and HF_LAYER.format(0) in keys:
        layers = _layer_count(lambda i: HF_LAYER.format(i) in keys)
        width = tf.shape(HF_LAYER.format(0))[0]
        position_key = "vision_model.embeddings.position_embedding.weight"
        positions = tf.shape(position_key)[0] if position_key in keys else 0
        kind = _kind(tf.path.name, layers, width, positions, keys)
        return kind, _HfNames("vision_model." if kind.startswith("siglip") else "")
    if any(k.startswith("encoder.layer.") and "layer_scale" in k for k in keys):
        raise ClipVisionFormatError(f"{tf.path.name} is a DINOv2 image encoder; comfyd runs CLIP vision towers only")
    where = f" under {prefix}" if prefix else ""
    raise ClipVisionFormatError(
        f"{tf.path.name} holds no CLIP vision model{where}: expected vision_model.encoder.layers.* "
        "(transformers) or visual.transformer.resblocks.* (OpenCLIP)"
    )


def _kind(file_name: str, layers: int, width: int, positions: int, keys: set[str]) -> str:
    if layers >= 48:
        return "vit-g"
    if layers >= 31:
        return "vit-h"
    if layers >= 23:
        if width == 1152:
            if positions not in SIGLIP_POSITIONS:
                raise ClipVisionFormatError(
                    f"{file_name}: a SigLIP vision tower with {positions} positions; ComfyUI and comfyd know "
                    "729 (384 px) and 1024 (512 px)"
                )
            return SIGLIP_POSITIONS[positions]
        if "multi_modal_projector.linear_1.bias" in keys:
            raise ClipVisionFormatError(f"{file_name} is a LLaVA vision tower, which comfyd does not run yet")
        return "vit-l-336" if positions == 577 else "vit-l"
    raise ClipVisionFormatError(
        f"{file_name}: a CLIP vision tower of {layers} layers; ComfyUI and comfyd know ViT-L (24 layers), "
        "ViT-H (32) and ViT-bigG (48)"
    )


def build(tf: TensorFile, kind: str, names: Any, device: torch.device, dtype: torch.dtype,
          rounding: torch.dtype | None) -> Any:  # fmt: skip
    """The tower as a transformers CLIPVisionModelWithProjection, filled from `tf`."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from comfyd.models.detect import UnknownCheckpointLayout
    from comfyd.models.loader import materialize

    with init_empty_weights():
        if kind.startswith("siglip"):
            from transformers import SiglipVisionConfig, SiglipVisionModel

            model = SiglipVisionModel(SiglipVisionConfig(**VISION_CONFIGS[kind]))
        else:
            model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION_CONFIGS[kind]))
    try:
        return materialize(model, names, tf, device, dtype, rounding=rounding, what=f"CLIP vision {kind}")
    except UnknownCheckpointLayout as exc:
        raise ClipVisionFormatError(str(exc)) from None


def load_clip_vision(
    tf: TensorFile, key: str, plan: Any, prefix: str | None = None, gate: DeviceGate | None = None
) -> ClipVisionHandle:
    """A CLIP_VISION handle from a standalone file, or from a checkpoint's tower under `prefix`."""
    kind, names = recognise(tf, prefix)
    # ComfyUI keeps the weights in the text encoders' dtype (fp16 by default) and computes in
    # float32; an explicit fp32 setting keeps them as stored.
    rounding = plan.clip_weight_rounding if plan.clip_dtype == torch.float32 else plan.clip_dtype
    model = build(tf, kind, names, plan.device, torch.float32, rounding)
    return ClipVisionHandle(key=key, kind=kind, model=model, device=plan.device, dtype=torch.float32, gate=gate)
