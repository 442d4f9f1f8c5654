"""Video and audio outputs take SaveImage's path: websocket `executed`, /history, /view (content
type, byte ranges), the output store with their content types, and the prediction response.
Real nodes and real encoders (PyAV), no model."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import av
import numpy as np

from comfyd.http.routes_files import bytes_response
from tests.server.test_animated_outputs import real_nodes_runtime
from tests.server.test_comfy_flow import connect, follow


def write_tone(path: Path, seconds: float = 1.0, rate: int = 22050) -> None:
    """A stereo 440 Hz tone as FLAC."""
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    samples = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]) * 0.25
    with av.open(str(path), mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(samples.T.reshape(1, -1).copy(), format="flt", layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def video_workflow() -> dict[str, Any]:
    def node(class_type: str, **inputs: Any) -> dict[str, Any]:
        return {"class_type": class_type, "inputs": inputs}

    return {
        "1": node("EmptyImage", width=64, height=48, batch_size=2, color=0xFF0000),
        "2": node("EmptyImage", width=64, height=48, batch_size=2, color=0x0000FF),
        "3": node("ImageBatch", image1=["1", 0], image2=["2", 0]),
        "4": node("LoadAudio", audio="tone.flac"),
        "5": node("CreateVideo", images=["3", 0], fps=8.0, audio=["4", 0]),
        "10": node("SaveVideo", video=["5", 0], filename_prefix="video/clip", format="auto", codec="auto"),
        "11": node("SaveAudio", audio=["4", 0], filename_prefix="audio/tone"),
        "12": node("VHS_VideoCombine", images=["3", 0], frame_rate=8, loop_count=0, filename_prefix="vhs/combined",
                   format="video/h264-mp4", pingpong=False, save_output=True, crf=20, pix_fmt="yuv420p",
                   save_metadata=True, trim_to_audio=False),
    }


def test_video_and_audio_outputs_reach_history_view_store_and_predictions(start_server) -> None:
    server = start_server(runtime=real_nodes_runtime)
    Path(server.settings.input_dir).mkdir(parents=True, exist_ok=True)
    write_tone(Path(server.settings.input_dir) / "tone.flac")
    stored: list[tuple[str, str]] = []
    store = server.services.output_store
    original_put = store.put

    def recording_put(job_id: str, filename: str, data: bytes, content_type: str = "image/png", metadata=None):
        stored.append((filename, content_type))
        return original_put(job_id, filename, data, content_type, metadata)

    store.put = recording_put
    client_id = uuid.uuid4().hex
    ws = connect(server.ws_url, client_id)
    ws.recv()
    with server.client() as http:
        answer = http.post("/prompt", json={"prompt": video_workflow(), "client_id": client_id})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        executed = {d["node"]: d["output"] for t, d in follow(ws, prompt_id) if t == "executed"}

        clip = {"filename": "clip_00001_.mp4", "subfolder": "video", "type": "output"}
        # ComfyUI 0.3.64's PreviewVideo: videos under "images", flagged animated.
        assert executed["10"] == {"images": [clip], "animated": [True]}
        assert executed["11"] == {"audio": [{"filename": "tone_00001_.flac", "subfolder": "audio", "type": "output"}]}
        assert executed["12"] == {"gifs": [{"filename": "combined_00001.mp4", "subfolder": "vhs", "type": "output",
                                            "format": "video/h264-mp4", "frame_rate": 8,
                                            "workflow": "combined_00001.png"}]}
        history = http.get(f"/history/{prompt_id}").json()[prompt_id]
        assert {k: history["outputs"][k] for k in ("10", "11", "12")} == executed

        view = http.get("/view", params=clip)
        assert view.status_code == 200 and view.headers["content-type"] == "video/mp4"
        with av.open(io.BytesIO(view.content)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            assert len(frames) == 4 and frames[0].shape == (48, 64, 3)
            assert container.streams.video[0].average_rate == 8
            assert container.streams.audio[0].codec_context.name == "aac"
        # Red then blue frames (colours survive the encoder within a few levels).
        assert frames[0][..., 0].mean() > 240 and frames[3][..., 2].mean() > 240

        size = len(view.content)
        part = http.get("/view", params=clip, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == view.content[:100]
        assert part.headers["content-range"] == f"bytes 0-99/{size}"
        tail = http.get("/view", params=clip, headers={"Range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == view.content[-10:]
        beyond = http.get("/view", params=clip, headers={"Range": f"bytes={size + 10}-"})
        assert beyond.status_code == 416
        audio = http.get("/view", params={"filename": "tone_00001_.flac", "subfolder": "audio", "type": "output"})
        assert audio.status_code == 200 and audio.headers["content-type"] == "audio/flac"

        assert sorted(stored) == [
            ("audio/tone_00001_.flac", "audio/flac"),
            ("vhs/combined_00001.mp4", "video/mp4"),
            ("video/clip_00001_.mp4", "video/mp4"),
        ]
        record = server.wait_job(prompt_id)
        assert len(record.output_keys) == 3
        prediction = http.get(f"/predictions/{prompt_id}")
        assert prediction.status_code == 200, prediction.text
        assert len(prediction.json()["output"]) == 3

        # The frontend's upload of a video (through /upload/image), then a job loading it.
        upload = http.post("/upload/image", files={"image": ("mine.mp4", view.content, "video/mp4")})
        assert upload.status_code == 200 and upload.json()["name"] == "mine.mp4", upload.text
        again = http.post("/prompt", json={"prompt": {
            "1": {"class_type": "VHS_LoadVideo", "inputs": {"video": "mine.mp4", "force_rate": 0, "custom_width": 0,
                                                            "custom_height": 0, "frame_load_cap": 0,
                                                            "skip_first_frames": 1, "select_every_nth": 1}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loaded"}},
        }, "client_id": client_id})
        assert again.status_code == 200, again.text
        loaded = {d["node"]: d["output"] for t, d in follow(ws, again.json()["prompt_id"]) if t == "executed"}
        # 4 frames (red, red, blue, blue), the first skipped.
        assert [e["filename"] for e in loaded["2"]["images"]] == [f"loaded_0000{i}_.png" for i in (1, 2, 3)]
        from PIL import Image

        with Image.open(Path(server.settings.output_dir) / "loaded_00003_.png") as image:
            assert image.size == (64, 48) and image.getpixel((10, 10))[2] > 240
    ws.close()


def test_byte_ranges_of_outputs_held_by_the_store() -> None:
    data = bytes(range(200))
    whole = bytes_response(data, "video/mp4", None, {})
    assert whole.status_code == 200 and whole.body == data and whole.headers["accept-ranges"] == "bytes"
    middle = bytes_response(data, "video/mp4", "bytes=10-19", {})
    assert middle.status_code == 206 and middle.body == data[10:20]
    assert middle.headers["content-range"] == "bytes 10-19/200"
    assert bytes_response(data, "video/mp4", "bytes=150-", {}).body == data[150:]
    assert bytes_response(data, "video/mp4", "bytes=-5", {}).body == data[-5:]
    assert bytes_response(data, "video/mp4", "bytes=190-500", {}).body == data[190:]
    refused = bytes_response(data, "video/mp4", "bytes=200-", {})
    assert refused.status_code == 416 and refused.headers["content-range"] == "bytes */200"
    assert bytes_response(data, "video/mp4", "bytes=30-20", {}).status_code == 416
    assert bytes_response(data, "video/mp4", "pages=1-2", {}).status_code == 200  # malformed: whole body
