"""What a model file is, from its safetensors header alone (no tensor is read).

A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON:
`{name: {dtype, shape, data_offsets}, "__metadata__": {...}}`. The key names and shapes tell
the model family; the shapes and dtypes give the parameter count and the bytes the weights take.
Used by `comfyd check` to report families comfyd cannot run yet before any GPU time is spent.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 128 << 20
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}
# Families comfyd runs today; every other family is detected and reported as not supported.
SUPPORTED_FAMILIES = frozenset({"sd1", "sd2", "sdxl", "sd_vae", "sd1_lora", "sdxl_lora", "lora", "embedding", "clip_l", "clip_g",
                                "flux", "flux_lora", "t5", "flux_sd3_vae", "wan", "wan_vae", "sd3", "chroma",
                                "hunyuan_video", "hunyuan_video_vae", "llama_text_encoder", "qwen_image",
                                "qwen25_vl", "qwen_image_lora", "ltxv", "flux2", "flux2_vae", "z_image",
                                "qwen3", "auraflow", "mistral3_text_encoder", "hidream", "lumina2", "gemma2"})


class HeaderError(ValueError):
    pass


@dataclass(frozen=True)
class ModelHeader:
    path: Path
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, Any]

    @property
    def parameters(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors.values())

    @property
    def weight_bytes(self) -> int:
        return sum(math.prod(shape) * DTYPE_BYTES.get(dtype, 2) for dtype, shape in self.tensors.values())

    def shape(self, key: str) -> tuple[int, ...] | None:
        entry = self.tensors.get(key)
        return entry[1] if entry else None


def read_header(path: str | Path) -> ModelHeader:
    """Parse the header of a .safetensors file; HeaderError if it is not one."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise HeaderError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise HeaderError(f"{path}: header length {length} is implausible (not a safetensors file?)")
        body = f.read(length)
    try:
        header = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeaderError(f"{path}: header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise HeaderError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, entry in header.items():
        if isinstance(entry, dict) and "shape" in entry:
            tensors[key] = (str(entry.get("dtype", "F16")), tuple(int(d) for d in entry["shape"]))
    return ModelHeader(path, tensors, dict(metadata) if isinstance(metadata, dict) else {})


def _strip(keys: list[str]) -> list[str]:
    for prefix in ("model.diffusion_model.", "diffusion_model.", "model."):
        if keys and sum(k.startswith(prefix) for k in keys) > len(keys) // 2:
            return [k[len(prefix):] if k.startswith(prefix) else k for k in keys]
    return keys


def detect_family(header: ModelHeader) -> str:
    """A family name for the file: sd1, sd2, sdxl, flux, wan, sd3, ..., or "unknown"."""
    keys = list(header.tensors)
    key_set = set(keys)

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if any(k.startswith(("lora_unet_", "lora_te", "lora_transformer_")) for k in keys) or has(".lora_A.") or has(".lora_down."):
        if has("double_blocks") or has("single_transformer_blocks") or has("transformer_blocks"):
            if has("double_blocks") or has("single_transformer_blocks"):
                return "flux_lora"
            # Qwen-Image's block names (Flux's BFL img_mod / img_mlp sit under double_blocks).
            return "qwen_image_lora" if any(has(p) for p in ("img_mod", "txt_mod", "img_mlp", "txt_mlp")) else "dit_lora"
        if has("lora_te2_") or has("lora_unet_label_emb"):
            return "sdxl_lora"
        return "lora"
    if any(k.startswith("model.diffusion_model.input_blocks") for k in keys):
        if has("conditioner.embedders.1"):
            return "sdxl"
        if has("cond_stage_model.model.transformer"):
            return "sd2"
        return "sd1"
    if "string_to_param" in key_set or key_set == {"emb_params"} or key_set <= {"clip_l", "clip_g"}:
        return "embedding"
    if any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys):
        return "sd3"  # an all-in-one SD3 file: its text encoders may hold most of the keys
    if any(k.endswith("cond_seq_linear.weight") for k in keys) and has("double_layers.0.attn.w1q."):
        return "auraflow"  # fal's MMDiT, alone or all-in-one with Pile-T5 and the VAE
    if any(k.startswith("model.diffusion_model.cap_embedder.") for k in keys):  # a NextDiT, all-in-one
        if "model.diffusion_model.cap_pad_token" in key_set:
            return "z_image"
        return "lumina2"
    stripped = set(_strip(keys))
    if "caption_projection.0.linear.weight" in stripped and any(k.startswith("double_stream_blocks.") for k in stripped):
        return "hidream"  # ComfyUI's HiDream key; its blocks are double_stream_blocks, not Flux's double_blocks
    if any(k.startswith("double_blocks.") for k in stripped):
        if any(k.startswith("txt_in.individual_token_refiner") for k in stripped):
            return "hunyuan_video"
        if any(k.startswith("distilled_guidance_layer") for k in stripped):
            return "chroma"
        if "single_stream_modulation.lin.weight" in stripped:
            return "flux2"
        return "flux"
    if any(k.startswith("joint_blocks.") for k in stripped):
        return "sd3"
    if "patch_embedding.weight" in stripped and any(k.startswith("blocks.0.self_attn") for k in stripped):
        return "wan"
    if any(k.startswith("transformer_blocks.0.img_mod") for k in stripped):
        return "qwen_image"
    if any(k.startswith(("noise_refiner.", "cap_embedder.")) for k in stripped):
        if "cap_pad_token" in stripped:  # Z-Image's pad tokens; Lumina 2 has none
            return "z_image"
        return "lumina2"
    if any(k.startswith("adaln_single") for k in stripped) and any(k.startswith("transformer_blocks.") for k in stripped):
        return "ltxv"
    if any(k.startswith("model.diffusion_model.adaln_single") for k in keys):  # LTX-Video, a small transformer
        return "ltxv"
    if any(k.startswith(("encoder.block.", "shared.")) for k in keys) or has("encoder.block.0.layer.0.SelfAttention"):
        return "t5"
    if has("text_model.encoder.layers.") or has("transformer.text_model.encoder.layers."):
        width = next((s[1] for k, (_, s) in header.tensors.items() if k.endswith("token_embedding.weight") and len(s) == 2), 0)
        return {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}.get(width, "clip")
    if has("model.layers.0.self_attn.k_proj.bias"):  # Qwen2.5(-VL): biased q/k/v (Qwen-Image's encoder)
        return "qwen25_vl"
    if has("model.layers.0.self_attn.q_norm.weight"):  # per-head q/k norms: Qwen3 (Z-Image's encoder)
        return "qwen3"
    vocab = next((s[0] for k, (_, s) in header.tensors.items() if k.endswith("embed_tokens.weight") and len(s) == 2), 0)
    if vocab == 131072 and has("layers.0.self_attn.q_proj") and not has("layers.0.self_attn.q_proj.bias"):
        return "mistral3_text_encoder"  # Flux.2 [dev]'s Mistral Small 3.x: Tekken's vocabulary
    if any(k.startswith("model.layers.0.pre_feedforward_layernorm.") for k in keys):  # Gemma 2 (Lumina 2's encoder)
        return "gemma2"
    if has("layers.0.self_attn.q_proj") and not has("layers.0.self_attn.q_proj.bias") and has("model.embed_tokens"):
        return "llama_text_encoder"  # HunyuanVideo's LLaVA-Llama-3 (Qwen's have q/k/v biases)
    if has("model.layers.0.self_attn.q_proj") or has("layers.0.self_attn.q_proj"):
        return "llm_text_encoder"
    if has("decoder.conv_in.conv.weight") and has("encoder.down.0.block.0.conv1.conv.weight"):
        return "hunyuan_video_vae"
    if has("decoder.conv_in.weight"):
        if any(k.endswith("bn.running_mean") for k in keys):  # the Flux.2 VAE's latent batch norm
            return "flux2_vae"
        shape = header.shape(next(k for k in keys if k.endswith("decoder.conv_in.weight"))) or ()
        if len(shape) == 5:
            return "video_vae"
        return {4: "sd_vae", 16: "flux_sd3_vae"}.get(shape[1] if len(shape) > 1 else 0, "vae")
    if has("decoder.head.0.gamma") or has("decoder.middle.0.residual"):
        return "wan_vae"
    if any(k.startswith("input_blocks.") for k in stripped) or any(k.startswith("down_blocks.") for k in keys):
        return "unet"
    return "unknown"


def is_supported(family: str) -> bool:
    return family in SUPPORTED_FAMILIES
