"""SaveImage / PreviewImage / SaveImageWebsocket: ComfyUI's files, names, metadata and pixels."""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from comfyd.engine.schema import REGISTRY
from comfyd.nodes.image import save_load as image_io
from comfyd.nodes.image.save_load import (
    PreviewImage,
    SaveImage,
    SaveImageWebsocket,
    expand_prefix_tokens,
    image_to_uint8,
    next_counter,
)
from comfyd.safepath import UnsafePathError

PROMPT = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}}
WORKFLOW = {"nodes": [{"id": 9, "type": "SaveImage"}], "links": [], "version": 0.4}


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, read straight from the bytes (independent of Pillow)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + payload)
        chunks.append((kind, payload))
        pos += 12 + length
    return chunks


def text_chunks(data: bytes) -> dict[str, str]:
    texts = {}
    for kind, payload in png_chunks(data):
        if kind == b"tEXt":
            key, _, value = payload.partition(b"\x00")
            texts[key.decode("latin-1")] = value.decode("latin-1")
    return texts


def gradient(batch: int = 1, height: int = 8, width: int = 12) -> torch.Tensor:
    values = torch.linspace(0, 1, batch * height * width * 3)
    return values.reshape(batch, height, width, 3)


def test_saves_numbered_files_with_prompt_and_workflow_chunks(make_ctx, env) -> None:
    ctx = make_ctx(prompt=PROMPT, extra_pnginfo={"workflow": WORKFLOW})
    first = SaveImage().run(ctx, images=gradient())
    second = SaveImage().run(make_ctx(job_id="job-2", prompt=PROMPT), images=gradient())
    assert first.values == ()
    assert first.ui == {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}
    assert second.ui["images"][0]["filename"] == "ComfyUI_00002_.png"
    data = (env.output_dir / "ComfyUI_00001_.png").read_bytes()
    texts = text_chunks(data)
    assert set(texts) == {"prompt", "workflow"}
    assert json.loads(texts["prompt"]) == PROMPT
    assert json.loads(texts["workflow"]) == WORKFLOW
    assert texts["prompt"] == json.dumps(PROMPT)  # ComfyUI's exact serialisation


def test_file_bytes_are_comfyuis_encoding(make_ctx, env) -> None:
    images = gradient()
    SaveImage().run(make_ctx(prompt=PROMPT), images=images)
    info = PngInfo()
    info.add_text("prompt", json.dumps(PROMPT))
    expected = io.BytesIO()
    pixels = np.clip(255.0 * images[0].numpy(), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(expected, format="PNG", pnginfo=info, compress_level=4)
    assert (env.output_dir / "ComfyUI_00001_.png").read_bytes() == expected.getvalue()


def test_pixels_are_truncated_not_rounded(make_ctx, env) -> None:
    values = torch.tensor([0.999, 0.5, 1.5, -0.2, 0.0, 1.0, 0.0039, 0.0040], dtype=torch.float32)
    images = values.reshape(1, 1, 8, 1).expand(1, 1, 8, 3).contiguous()
    SaveImage().run(make_ctx(), images=images)
    with Image.open(env.output_dir / "ComfyUI_00001_.png") as img:
        row = np.asarray(img)[0, :, 0].tolist()
    assert row == [254, 127, 255, 0, 0, 255, 0, 1]
    assert image_to_uint8(images[0])[0, :, 0].tolist() == row


def test_no_prompt_writes_no_metadata(make_ctx, env) -> None:
    SaveImage().run(make_ctx(), images=gradient())
    assert text_chunks((env.output_dir / "ComfyUI_00001_.png").read_bytes()) == {}


def test_batch_gets_consecutive_counters_and_size(make_ctx, env) -> None:
    result = SaveImage().run(
        make_ctx(), images=gradient(batch=3, height=8, width=12), filename_prefix="batch"
    )
    names = [entry["filename"] for entry in result.ui["images"]]
    assert names == ["batch_00001_.png", "batch_00002_.png", "batch_00003_.png"]
    with Image.open(env.output_dir / names[2]) as img:
        assert img.size == (12, 8) and img.mode == "RGB"


def test_counter_continues_after_highest_existing(env) -> None:
    out = env.output_dir
    for name in (
        "ComfyUI_00041_.png",
        "ComfyUI_00007_.png",
        "ComfyUIX_00099_.png",
        "ComfyUI_temp_abcde_00050_.png",
    ):
        (out / name).write_bytes(b"")
    assert next_counter(out, "ComfyUI") == 42
    assert next_counter(out, "ComfyUIX") == 100
    assert next_counter(out, "other") == 1
    assert next_counter(out / "missing", "ComfyUI") == 1


def test_subfolder_prefix(make_ctx, env) -> None:
    result = SaveImage().run(make_ctx(), images=gradient(), filename_prefix="portraits/fox/run")
    assert result.ui["images"] == [
        {"filename": "run_00001_.png", "subfolder": "portraits/fox", "type": "output"}
    ]
    assert (env.output_dir / "portraits" / "fox" / "run_00001_.png").is_file()


@pytest.mark.parametrize(
    "prefix", ["../escape", "sub/../../escape", "/tmp/escape", "..\\escape", "%2e%2e/escape"]
)
def test_traversal_prefix_is_refused(make_ctx, env, prefix: str) -> None:
    with pytest.raises(UnsafePathError, match="outside the output folder"):
        SaveImage().run(make_ctx(), images=gradient(), filename_prefix=prefix)
    parent = env.output_dir.parent
    assert sorted(p.name for p in parent.iterdir()) == ["input", "output", "temp"]
    assert list(env.output_dir.iterdir()) == []


def test_prefix_tokens() -> None:
    now = time.struct_time((2025, 3, 7, 9, 5, 2, 0, 66, 0))
    assert expand_prefix_tokens("img_%width%x%height%", 640, 480, now) == "img_640x480"
    assert (
        expand_prefix_tokens("%year%-%month%-%day%_%hour%%minute%%second%", 1, 1, now) == "2025-03-07_090502"
    )
    assert expand_prefix_tokens("%date:yyyy-MM-dd%/ComfyUI", 1, 1, now) == "2025-03-07/ComfyUI"
    assert expand_prefix_tokens("%date:yy.M.d hh-mm-ss%", 1, 1, now) == "25.3.7 09-05-02"
    assert expand_prefix_tokens("plain", 1, 1, now) == "plain"


def test_concurrent_saves_never_collide(make_ctx, env, monkeypatch: pytest.MonkeyPatch) -> None:
    workers, per_worker = 8, 2
    # Widen the gap between choosing a counter and creating the file, so every job picks the
    # same number and only exclusive creation keeps them apart.
    scan = image_io.next_counter

    def slow_next_counter(folder: Path, stem: str) -> int:
        counter = scan(folder, stem)
        time.sleep(0.02)
        return counter

    monkeypatch.setattr(image_io, "next_counter", slow_next_counter)
    barrier = threading.Barrier(workers)
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def job(index: int) -> None:
        try:
            images = torch.full((per_worker, 8, 8, 3), index / 10)
            barrier.wait()
            out = SaveImage().run(make_ctx(job_id=f"job-{index}"), images=images, filename_prefix="race")
            with lock:
                results.extend(entry["filename"] for entry in out.ui["images"])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results) == len(set(results)) == workers * per_worker
    files = sorted(p.name for p in env.output_dir.iterdir() if not p.name.startswith(".comfyd-names"))
    assert files == sorted(results)
    assert all(re.fullmatch(r"race_\d{5}_\.png", name) for name in files)
    # Every file is a complete PNG holding one job's pixels.
    seen = set()
    for name in files:
        with Image.open(env.output_dir / name) as img:
            seen.add(int(np.asarray(img)[0, 0, 0]))
    assert len(seen) == workers


def test_preview_image_goes_to_temp(make_ctx, env) -> None:
    images = gradient()
    result = PreviewImage().run(make_ctx("PreviewImage", prompt=PROMPT), images=images)
    (entry,) = result.ui["images"]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    assert re.fullmatch(r"ComfyUI_temp_[a-z]{5}_00001_\.png", entry["filename"])
    data = (env.temp_dir / entry["filename"]).read_bytes()
    assert list(env.output_dir.iterdir()) == []
    info = PngInfo()
    info.add_text("prompt", json.dumps(PROMPT))
    expected = io.BytesIO()
    Image.fromarray(image_to_uint8(images[0])).save(expected, format="PNG", pnginfo=info, compress_level=1)
    assert data == expected.getvalue()


def test_save_image_websocket_emits_png_frames_and_writes_nothing(make_ctx, env) -> None:
    events: list[tuple[str, dict]] = []
    progress: list[tuple[int, int]] = []
    ctx = make_ctx(
        "SaveImageWebsocket",
        node_id="save_ws",
        on_emit=lambda event, data: events.append((event, data)),
        on_progress=lambda value, total, preview: progress.append((value, total)),
    )
    images = gradient(batch=2)
    node = SaveImageWebsocket()
    result = node.run(ctx, images=images)
    assert result.values == () and not result.ui
    assert [event for event, _ in events] == ["binary_image", "binary_image"]
    for index, (_event, data) in enumerate(events):
        assert data["format"] == "PNG" and data["node"] == "save_ws"
        with Image.open(io.BytesIO(data["image"])) as img:
            assert np.array_equal(np.asarray(img), image_to_uint8(images[index]))
        assert text_chunks(data["image"]) == {}
    assert progress == [(0, 2), (1, 2)]
    assert list(env.output_dir.iterdir()) == [] and list(env.temp_dir.iterdir()) == []
    assert node.fingerprint(ctx, images=images) != node.fingerprint(ctx, images=images)


def test_bad_images_value_is_a_clear_error(make_ctx) -> None:
    with pytest.raises(ValueError, match=r"IMAGE shaped \[B, H, W"):
        SaveImage().run(make_ctx(), images=torch.zeros(8, 8, 3))


def test_schemas_match_comfyui() -> None:
    save = REGISTRY.get("SaveImage").schema.object_info()
    assert save["output_node"] is True and save["category"] == "image" and save["output"] == []
    assert save["input"]["required"]["filename_prefix"][1]["default"] == "ComfyUI"
    assert save["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    preview = REGISTRY.get("PreviewImage").schema.object_info()
    assert list(preview["input"]["required"]) == ["images"] and preview["output_node"] is True
    ws = REGISTRY.get("SaveImageWebsocket").schema.object_info()
    assert ws["category"] == "api/image" and ws["output_node"] is True


def test_output_dir_created_on_demand(make_ctx, env, tmp_path: Path) -> None:
    env.settings.output_dir = tmp_path / "fresh" / "out"
    SaveImage().run(make_ctx(), images=gradient())
    assert (tmp_path / "fresh" / "out" / "ComfyUI_00001_.png").is_file()


def test_rerun_of_the_same_job_overwrites_its_files(make_ctx, env) -> None:
    """A job re-run after a crash (same job, node, index) reuses its names; others do not."""
    first = SaveImage().run(make_ctx(job_id="job-a"), images=gradient(batch=2))
    other = SaveImage().run(make_ctx(job_id="job-b"), images=gradient())
    again = SaveImage().run(make_ctx(job_id="job-a"), images=gradient(batch=2))
    names = [e["filename"] for e in first.ui["images"]]
    assert names == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    assert [e["filename"] for e in again.ui["images"]] == names
    assert other.ui["images"][0]["filename"] == "ComfyUI_00003_.png"
    pngs = sorted(p.name for p in env.output_dir.iterdir() if p.suffix == ".png")
    assert pngs == ["ComfyUI_00001_.png", "ComfyUI_00002_.png", "ComfyUI_00003_.png"]


def test_traversal_prefix_is_refused_at_validation(env) -> None:
    from comfyd.nodes.image.save_load import check_filename_prefix

    assert check_filename_prefix(env, "fine/sub/name") is None
    for prefix in ("../escape", "/tmp/x", "%2e%2e/escape", "a/../../b"):
        assert "outside the output folder" in check_filename_prefix(env, prefix)
