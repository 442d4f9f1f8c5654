"""Workflows embedded in images: the text chunks ComfyUI (and comfyd) write into PNG and WEBP.

A PNG from ComfyUI's SaveImage carries `prompt` (the API prompt that ran) and `workflow` (the
UI graph) as tEXt chunks. ComfyUI's animated WEBP writes them into EXIF tags as
`prompt:{...}` / `workflow:{...}` strings. Only those chunks are read; pixels are not decoded.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_CHUNK_BYTES = 64 << 20


class EmbeddedWorkflowError(ValueError):
    pass


def is_image_file(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(PNG_SIGNATURE) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def read_embedded(path: str | Path) -> dict[str, Any]:
    """{'prompt': ..., 'workflow': ...} as far as the image carries them (parsed JSON)."""
    data = Path(path).read_bytes()
    try:
        if data.startswith(PNG_SIGNATURE):
            texts = _png_texts(data)
        elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            texts = _webp_texts(data)
        else:
            raise EmbeddedWorkflowError(f"{path}: not a PNG or WEBP file")
    except (zlib.error, UnicodeDecodeError, struct.error) as exc:
        raise EmbeddedWorkflowError(f"{path}: a damaged text chunk ({exc})") from exc
    found: dict[str, Any] = {}
    for key in ("prompt", "workflow"):
        if key in texts:
            try:
                found[key] = json.loads(texts[key])
            except json.JSONDecodeError as exc:
                raise EmbeddedWorkflowError(f"{path}: its '{key}' chunk is not JSON ({exc})") from exc
    return found


def workflow_from_image(path: str | Path) -> tuple[dict[str, Any], str]:
    """The workflow to run from an image, and which chunk it came from.

    The `prompt` chunk (API format: what actually ran) wins; a `workflow` (UI) chunk alone is
    returned for conversion.
    """
    found = read_embedded(path)
    if isinstance(found.get("prompt"), dict) and found["prompt"]:
        return found["prompt"], "prompt"
    if isinstance(found.get("workflow"), dict):
        return found["workflow"], "workflow"
    raise EmbeddedWorkflowError(f"{path}: the image carries no ComfyUI workflow (no 'prompt' or 'workflow' chunk)")


def _png_texts(data: bytes) -> dict[str, str]:
    texts: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if length > MAX_CHUNK_BYTES or len(body) < length:
            break
        if kind == b"tEXt" and b"\0" in body:
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            texts[key.decode("latin-1")] = _inflate(rest[1:]).decode("latin-1")
        elif kind == b"iTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (_inflate(text) if compressed else text).decode("utf-8")
        elif kind == b"IEND":
            break
    return texts


def _inflate(raw: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(raw, MAX_CHUNK_BYTES)
    if inflater.unconsumed_tail:
        raise EmbeddedWorkflowError("a compressed text chunk is larger than 64 MiB")
    return out


def _webp_texts(data: bytes) -> dict[str, str]:
    texts: dict[str, str] = {}
    pos = 12
    while pos + 8 <= len(data):
        kind, length = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + length]
        pos += 8 + length + (length & 1)
        if kind == b"EXIF":
            texts.update(_exif_strings(body))
    return texts


def _exif_strings(exif: bytes) -> dict[str, str]:
    """`key:value` ASCII strings of the first IFD (where ComfyUI puts prompt and workflow)."""
    if exif.startswith(b"Exif\0\0"):
        exif = exif[6:]
    if exif[:2] not in (b"II", b"MM"):
        return {}
    order = "<" if exif[:2] == b"II" else ">"
    texts: dict[str, str] = {}
    try:
        (offset,) = struct.unpack(order + "I", exif[4:8])
        (count,) = struct.unpack(order + "H", exif[offset : offset + 2])
        for i in range(count):
            entry = exif[offset + 2 + 12 * i : offset + 14 + 12 * i]
            _tag, kind, n, value_at = struct.unpack(order + "HHII", entry)
            if kind not in (2, 7) or n <= 4:
                continue
            raw = exif[value_at : value_at + n].rstrip(b"\0").decode("utf-8", "replace")
            key, sep, value = raw.partition(":")
            if sep and key in ("prompt", "workflow"):
                texts[key] = value
    except (struct.error, IndexError):
        return texts
    return texts
