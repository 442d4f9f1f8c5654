"""Qwen-Image-Edit prompts: text and pictures through Qwen2.5-VL, as ComfyUI 0.3.64 encodes them
(comfy/text_encoders/qwen_image.py, llama.py's Qwen25_7BVLI, sd1_clip's embedding insertion).

Template: a prompt that starts with `<|im_start|>` (or `<|start_header_id|>`) is taken as it is;
otherwise a template given by the node (TextEncodeQwenImageEditPlus' edit template) wraps it, else
the edit template with one `<|vision_start|><|image_pad|><|vision_end|>` before the prompt when
pictures are given, else Qwen-Image's text template. Each `<|image_pad|>` token, in order, is
replaced by the next picture's vision tokens (extra pad tokens stay plain tokens, extra pictures are
unused). Positions (multimodal rotary, three axes): text tokens count up on all three; a picture of
r x c merged tokens starting at position p takes (p, p + row, p + column), and the text after it
goes on from p + max(r, c). The last layer's output is kept from the first token of the user turn,
exactly as for text prompts (`qwen25_encoder.template_end`).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from comfyd.models import qwen25_encoder, qwen25_vision

IMAGE_PAD = 151655
VISION_TAG = "<|vision_start|><|image_pad|><|vision_end|>"
_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n"
)
EDIT_TEMPLATE = _SYSTEM + VISION_TAG + "{}<|im_end|>\n<|im_start|>assistant\n"
PLUS_TEMPLATE = _SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"
_LOCK = threading.Lock()


class MissingVisionTower(ValueError):
    """An Edit node was given a text encoder file without Qwen2.5-VL's `visual.*` tower."""


def templated(text: str, template: str | None, with_images: bool) -> str:
    if text.startswith("<|im_start|>") or text.startswith("<|start_header_id|>"):
        return text
    if template is not None:
        return template.format(text)
    return EDIT_TEMPLATE.format(text) if with_images else qwen25_encoder.TEMPLATE.format(text)


def tokenize(tokenizer: Any, text: str, template: str | None = None, with_images: bool = False) -> list[int]:
    text = templated(text, template, with_images).replace("\\)", ")").replace("\\(", "(")
    with _LOCK:
        return [int(t) for t in tokenizer(text)["input_ids"]]


def vision_tower(encoder: nn.Module) -> nn.Module:
    tower = getattr(encoder, "visual", None)
    if tower is None:
        raise MissingVisionTower(
            "this Qwen2.5-VL text encoder file has no vision tower (no 'visual.*' weights), which "
            "TextEncodeQwenImageEdit / TextEncodeQwenImageEditPlus need to read the image; use a "
            "qwen_2.5_vl_7b file that carries it (ComfyUI's split_files/text_encoders ones do), or "
            "leave the image input unconnected"
        )
    return tower


def _template_end(ids: list[int], length: int) -> int:
    """ComfyUI's dropped-token count, its length check made on the sequence with vision tokens."""
    end = -1
    starts = 0
    for index, token in enumerate(ids):
        if token == qwen25_encoder.IM_START and starts < 2:
            end = index
            starts += 1
    if length > end + 3 and ids[end + 1] == qwen25_encoder.USER and ids[end + 2] == qwen25_encoder.NEWLINE:
        end += 3
    return end


def sequence(
    encoder: nn.Module, ids: list[int], images: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input embeddings [1, L, width], positions [3, 1, L]) with the pictures' vision tokens."""
    param = encoder.get_input_embeddings().weight
    pieces: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    position = 0
    run: list[int] = []
    remaining = list(images)

    def flush() -> None:
        nonlocal position, run
        if run:
            ids_tensor = torch.tensor([run], dtype=torch.long, device=param.device)
            pieces.append(encoder.get_input_embeddings()(ids_tensor)[0])
            positions.append(torch.arange(position, position + len(run)).expand(3, -1))
            position += len(run)
            run = []

    for token in ids:
        if token != IMAGE_PAD or not remaining:
            run.append(token)
            continue
        flush()
        tokens, grid = qwen25_vision.embed_image(vision_tower(encoder), remaining.pop(0))
        if tokens.shape[-1] != param.shape[-1]:
            raise ValueError(
                f"the vision tower's tokens are {tokens.shape[-1]} wide, the text encoder's {param.shape[-1]}"
            )
        rows, cols = int(grid[0, 1]) // qwen25_vision.MERGE, int(grid[0, 2]) // qwen25_vision.MERGE
        row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions.append(position + torch.stack([torch.zeros(rows * cols, dtype=torch.long),
                                                 row.reshape(-1), col.reshape(-1)]))  # fmt: skip
        pieces.append(tokens.to(device=param.device, dtype=param.dtype))
        position += max(rows, cols)
    flush()
    return torch.cat(pieces).unsqueeze(0), torch.cat(positions, dim=1).unsqueeze(1).to(param.device)


def encode(encoder: nn.Module, ids: list[int], images: list[torch.Tensor]) -> torch.Tensor:
    """[1, tokens kept, width] float32 on the CPU."""
    if not ids:
        raise ValueError("a Qwen-Image-Edit prompt has no tokens")
    if not images or IMAGE_PAD not in ids:
        return qwen25_encoder.encode(encoder, ids)
    with torch.no_grad():
        embeds, positions = sequence(encoder, ids, images)
        hidden = encoder(inputs_embeds=embeds, position_ids=positions, use_cache=False).last_hidden_state
    return hidden[:, _template_end(ids, hidden.shape[1]) :].float().to("cpu")
