"""The video and audio nodes on their edges: bad files, the video budget, unsafe names, odd sizes,
and VideoHelperSuite's frame selection, pingpong, loops and temp outputs. Tiny clips, no model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
import torch

import comfyd.nodes  # noqa: F401  (registers the nodes)
from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import REGISTRY
from comfyd.nodes.video._media import MediaDecodeError, VideoTooLarge
from comfyd.nodes.video.vhs_combine import frame_order, next_vhs_counter
from comfyd.nodes.video.vhs_load import select_frames, target_size
from comfyd.safepath import UnsafePathError
from comfyd.settings import Settings


@pytest.fixture
def env(tmp_path: Path) -> NodeEnvironment:
    settings = Settings(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                        models_dir=tmp_path / "models", max_video_pixels=64 * 48 * 40)
    for folder in (settings.output_dir, settings.input_dir, settings.temp_dir):
        Path(folder).mkdir(parents=True)
    return NodeEnvironment(settings)


def ctx(env: NodeEnvironment, class_type: str, inputs: dict[str, Any] | None = None) -> NodeContext:
    return NodeContext(env=env, job_id="job", node_id="9", class_type=class_type,
                       prompt={"9": {"class_type": class_type, "inputs": inputs or {}}})


def run(env: NodeEnvironment, class_type: str, *args: Any, inputs: dict[str, Any] | None = None, **kw: Any) -> Any:
    return REGISTRY.get(class_type)().run(ctx(env, class_type, inputs), *args, **kw)


def frames(count: int, width: int = 64, height: int = 48) -> torch.Tensor:
    """Smooth colour gradients that brighten frame by frame (video codecs keep these well)."""
    y = torch.linspace(0, 1, height).view(1, height, 1, 1)
    x = torch.linspace(0, 1, width).view(1, 1, width, 1)
    t = torch.linspace(0, 1, count).view(count, 1, 1, 1)
    colour = torch.tensor([0.6, 0.3, 0.8]).view(1, 1, 1, 3)
    return (0.2 + 0.4 * x * colour + 0.2 * y + 0.2 * t).clamp(0, 1).expand(count, height, width, 3).contiguous()


def saved_clip(env: NodeEnvironment, count: int = 6, fps: float = 12.0, name: str = "clip.mp4") -> str:
    video = run(env, "CreateVideo", frames(count), fps)[0]
    entry = run(env, "SaveVideo", video, "clip", "auto", "auto").ui["images"][0]
    (env.input_dir / name).write_bytes((env.output_dir / entry["filename"]).read_bytes())
    return name


def test_a_saved_video_loads_back_with_its_frames_rate_and_size(env: NodeEnvironment) -> None:
    name = saved_clip(env, count=6, fps=12.0)
    video = run(env, "LoadVideo", name).values[0]
    images, audio, fps = run(env, "GetVideoComponents", video)
    assert images.shape == (6, 48, 64, 3) and audio is None and fps == 12.0
    # Smooth frames survive h264 closely (this is the encoder's loss, not a comparison with ComfyUI).
    assert (images - frames(6)).abs().mean() < 0.01


def test_corrupt_and_truncated_videos_get_a_clear_error(env: NodeEnvironment) -> None:
    (env.input_dir / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 100)
    good = (env.input_dir / saved_clip(env)).read_bytes()
    (env.input_dir / "cut.mp4").write_bytes(good[: len(good) // 3])
    for name in ("garbage.mp4", "cut.mp4"):
        video = run(env, "LoadVideo", name).values[0]
        with pytest.raises(MediaDecodeError, match=name):
            run(env, "GetVideoComponents", video)
    with pytest.raises(MediaDecodeError, match="garbage.mp4"):
        run(env, "VHS_LoadVideo", "garbage.mp4", 0, 0, 0, 0, 0, 1)
    with pytest.raises(MediaDecodeError, match="garbage.mp4"):
        run(env, "LoadAudio", "garbage.mp4")


def test_a_video_without_audio_is_no_audio_file(env: NodeEnvironment) -> None:
    with pytest.raises(MediaDecodeError, match="no audio stream"):
        run(env, "LoadAudio", saved_clip(env))


def test_the_video_budget_bounds_what_is_assembled_decoded_and_loaded(env: NodeEnvironment) -> None:
    # The budget here is 40 frames of 64x48.
    with pytest.raises(VideoTooLarge, match="COMFYD_MAX_VIDEO_PIXELS"):
        run(env, "CreateVideo", frames(41), 8.0)
    with pytest.raises(VideoTooLarge):
        run(env, "SaveWEBM", frames(41), "vp9", 8.0, 32.0, "x")
    with pytest.raises(VideoTooLarge):
        run(env, "VHS_VideoCombine", frames(41), 8, 0, "x", "image/gif", False, True)
    name = saved_clip(env, count=30)
    env.settings.max_video_pixels = 64 * 48 * 20
    video = run(env, "LoadVideo", name).values[0]
    with pytest.raises(VideoTooLarge, match="30 frames"):  # the container's own frame count, before decoding
        run(env, "GetVideoComponents", video)
    with pytest.raises(VideoTooLarge, match="21 frames"):  # counted as VHS selects them
        run(env, "VHS_LoadVideo", name, 0, 0, 0, 0, 0, 1)
    assert run(env, "VHS_LoadVideo", name, 0, 0, 0, 20, 0, 1)[1] == 20  # a cap that fits


def test_names_outside_the_folders_are_refused(env: NodeEnvironment) -> None:
    load_video = REGISTRY.get("LoadVideo").schema.input("file")
    load_audio = REGISTRY.get("LoadAudio").schema.input("audio")
    for spec in (load_video, load_audio):
        assert "Invalid" in spec.validator(env, "../../etc/passwd")
        assert spec.validator(env, "missing.mp4").startswith("Invalid")
    with pytest.raises(UnsafePathError):
        run(env, "LoadVideo", "../outside.mp4")
    save_prefix = REGISTRY.get("SaveVideo").schema.input("filename_prefix")
    assert "outside the output folder" in save_prefix.validator(env, "../../escape")
    assert REGISTRY.get("SaveAudio").schema.input("filename_prefix").validator(env, "/abs/name") is not None


def test_odd_sizes_and_empty_videos_are_refused_with_a_reason(env: NodeEnvironment) -> None:
    odd = run(env, "CreateVideo", frames(2, width=63), 8.0)[0]
    with pytest.raises(ValueError, match="even width and height"):
        run(env, "SaveVideo", odd, "x", "auto", "auto")
    with pytest.raises(ValueError, match="even width"):
        run(env, "SaveWEBM", frames(2, height=47), "vp9", 8.0, 32.0, "x")
    assert not list(env.output_dir.rglob("*.mp4")) and not list(env.output_dir.rglob(".comfyd-save-*"))


def test_vhs_combine_pingpong_loops_and_temp_output(env: NodeEnvironment) -> None:
    out = run(env, "VHS_VideoCombine", frames(4), 10, 1, "vhs/clip", "video/h264-mp4", True, False,
              inputs={"crf": 30, "pix_fmt": "yuv420p"})
    entry = out.ui["gifs"][0]
    assert entry["type"] == "temp" and entry["filename"] == "clip_00001.mp4" and entry["workflow"] == "clip_00001.png"
    with av.open(str(env.temp_dir / "vhs" / "clip_00001.mp4")) as container:
        # pingpong: 0 1 2 3 2 1, then loop_count=1 more pass of it.
        assert sum(1 for _ in container.decode(video=0)) == 12
        assert container.streams.video[0].codec_context.color_range == 1  # BT.709 "tv" range, as VHS
    assert out.values[0][0] is False and out.values[0][1][1].endswith("clip_00001.mp4")
    gif = run(env, "VHS_VideoCombine", frames(3), 8, 0, "anim", "image/gif", False, True).ui["gifs"][0]
    assert gif["filename"] == "anim_00001.gif" and gif["type"] == "output"
    from PIL import Image

    with Image.open(env.output_dir / "anim_00001.gif") as image:
        assert image.n_frames == 3 and image.info["duration"] == 120  # round(1000 / 8) in GIF's 1/100 s
    with pytest.raises(ValueError, match="pix_fmt"):
        run(env, "VHS_VideoCombine", frames(2), 8, 0, "x", "video/webm", False, True, inputs={"pix_fmt": "rgb48"})
    assert next_vhs_counter(env.output_dir, "anim") == 2


def test_vhs_frame_selection_follows_its_clock() -> None:
    source = list(range(12))  # stand-ins for 12 frames at 12 fps

    def pick(**kw: Any) -> list[int]:
        args = {"fps": 12.0, "force_rate": 0, "skip_first": 0, "every_nth": 1, "cap": 0, **kw}
        return list(select_frames(iter(source), **args))  # type: ignore[arg-type]

    assert pick() == source
    assert pick(force_rate=6) == [0, 2, 4, 6, 8, 10]
    assert pick(force_rate=24)[:6] == [0, 1, 1, 2, 2, 3]  # the first frame once, as in VHS
    assert pick(skip_first=3, every_nth=2, cap=3) == [3, 5, 7]
    assert list(frame_order(4, pingpong=True)) == [0, 1, 2, 3, 2, 1]
    assert target_size(70, 66, 0, 0, 8) == (72, 64) and target_size(64, 48, 32, 0, 8) == (32, 24)


def test_vhs_load_sizes_and_frame_rules(env: NodeEnvironment) -> None:
    name = saved_clip(env, count=7)
    images, count, _audio, info = run(env, "VHS_LoadVideo", name, 0, 32, 0, 0, 0, 1, format="Wan")
    # Wan wants 4n+1 frames: 7 -> 5; 32 wide keeps the aspect ratio, rounded to 8.
    assert images.shape == (5, 24, 32, 3) and count == 5
    assert info["loaded_width"] == 32 and info["source_frame_count"] == 7 and info["loaded_fps"] == 12.0


def test_audio_round_trip_and_batch_names(env: NodeEnvironment) -> None:
    t = torch.arange(8000, dtype=torch.float32) / 8000
    waveform = torch.stack([torch.sin(2 * torch.pi * 300 * t), torch.cos(2 * torch.pi * 200 * t)]) * 0.4
    audio = {"waveform": torch.stack([waveform, waveform * 0.5]), "sample_rate": 8000}
    entries = run(env, "SaveAudio", audio, "sound/take_%batch_num%").ui["audio"]
    assert [e["filename"] for e in entries] == ["take_0_00001_.flac", "take_1_00002_.flac"]
    (env.input_dir / "take.flac").write_bytes((env.output_dir / "sound" / "take_0_00001_.flac").read_bytes())
    loaded = run(env, "LoadAudio", "take.flac")[0]
    assert loaded["sample_rate"] == 8000 and loaded["waveform"].shape == (1, 2, 8000)
    assert (loaded["waveform"][0] - waveform).abs().max() < 1e-4  # FLAC at 16 bits
    preview = run(env, "PreviewAudio", audio).ui["audio"]
    assert all(e["type"] == "temp" and e["filename"].startswith("ComfyUI_temp_") for e in preview)
