"""The first chunk of a T5 prompt with a chunk length (HiDream's T5-XXL: 128 tokens), as ComfyUI's
SDTokenizer cuts it and HiDream keeps it (`[t5xxl[0]]` in comfy/text_encoders/hidream.py).

ComfyUI tokenizes each weighted segment of the prompt as one group (without its end token) and
fills chunks of `length - 1` tokens plus the end token. A group that does not fit the room left:
one of 8 tokens or more is split there (the chunk is full: `length` tokens); a shorter one moves
whole to the next chunk, and this chunk ends early with its end token, unpadded (only the last
chunk is padded). A prompt that fits ends with the end token, then `min_padding` pads (the
last chunk's, T5TokenizerOptions), and is padded to `min_length`.
"""

from __future__ import annotations

from comfyd.models import t5_encoder
from comfyd.models.prompt_weights import parse_prompt_weights
from comfyd.models.tokenizer_options import Padding, pad

MAX_WORD_LENGTH = 8  # ComfyUI's SDTokenizer.max_word_length: longer groups are split, shorter moved


def first_chunk(text: str, length: int, min_length: int, min_padding: int = 0) -> t5_encoder.T5Tokens:
    tokenizer = t5_encoder.shipped_tokenizer()
    room = length - 1  # the end token closes the chunk
    chunk: t5_encoder.T5Tokens = []
    for segment in parse_prompt_weights(text):
        if segment.text == "":
            continue
        with t5_encoder._LOCK:
            ids = tokenizer(segment.text, verbose=False)["input_ids"][:-1]
        group = [(int(t), float(segment.weight)) for t in ids]
        if len(chunk) + len(group) > room:
            if len(group) >= MAX_WORD_LENGTH:
                chunk.extend(group[: room - len(chunk)])
            return [*chunk, (t5_encoder.END_TOKEN, 1.0)]
        chunk.extend(group)
    chunk.append((t5_encoder.END_TOKEN, 1.0))
    return pad(chunk, t5_encoder.PAD_TOKEN, Padding(min_padding, min_length))
