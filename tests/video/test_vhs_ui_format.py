"""A UI-format workflow with VideoHelperSuite's VHS_VideoCombine (widgets stored by name, the
per-format options among them) converts to the API prompt its frontend sends."""

from __future__ import annotations

import comfyd.nodes  # noqa: F401  (registers comfyd's node schemas)
from comfyd.workflow_formats import api_prompt_from_ui


def test_vhs_video_combine_keeps_its_format_options() -> None:
    widgets = {"frame_rate": 12, "loop_count": 0, "filename_prefix": "AnimateDiff", "format": "video/h264-mp4",
               "pix_fmt": "yuv420p10le", "crf": 25, "save_metadata": True, "trim_to_audio": False,
               "pingpong": True, "save_output": False,
               "videopreview": {"hidden": False, "paused": False, "params": {"filename": "x.mp4"}}}
    workflow = {
        "last_node_id": 2, "last_link_id": 1, "version": 0.4,
        "nodes": [
            {"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}], "widgets_values": [64, 48, 2, 0]},
            {"id": 2, "type": "VHS_VideoCombine", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 1},
                        {"name": "audio", "type": "AUDIO", "link": None}],
             "outputs": [{"name": "Filenames", "type": "VHS_FILENAMES", "links": None}], "widgets_values": widgets},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
    }
    prompt = api_prompt_from_ui(workflow)
    assert prompt["2"]["class_type"] == "VHS_VideoCombine"
    inputs = prompt["2"]["inputs"]
    assert inputs["images"] == ["1", 0]
    assert {k: inputs[k] for k in ("frame_rate", "format", "pingpong", "save_output")} == {
        "frame_rate": 12, "format": "video/h264-mp4", "pingpong": True, "save_output": False}
    assert (inputs["crf"], inputs["pix_fmt"], inputs["save_metadata"]) == (25, "yuv420p10le", True)
    assert "videopreview" not in inputs and "audio" not in inputs
