"""A ComfyUI-style pack through the real server: /object_info, /prompt validation, websocket,
/history and the pack's web folder, exactly as for built-in nodes."""

from __future__ import annotations

import json
import uuid
from typing import Any

from comfyd.runtime import build_runtime
from tests.compat.conftest import FIXTURES
from tests.server.test_comfy_flow import connect, follow


def _start(start_server: Any) -> Any:
    return start_server(runtime=build_runtime, custom_nodes_dirs=[FIXTURES], load_plugins=False)


def test_pack_nodes_in_object_info_ws_and_history(start_server: Any) -> None:
    server = _start(start_server)
    client_id = uuid.uuid4().hex
    ws = connect(server.ws_url, client_id)
    json.loads(ws.recv())
    with server.client() as http:
        info = http.get("/object_info").json()
        assert info["TestImageBrighten"]["python_module"] == "custom_nodes.comfyd_test_pack"
        assert "KSampler" in info and "PluginImageGain" in info
        assert "ModelPatcher" in info["TestModelTweak"]["comfyd_unavailable"]
        one = http.get("/object_info/TestShowText").json()
        assert one["TestShowText"]["output_node"] is True

        prompt = {
            "1": {"class_type": "TestRandomNoiseImage", "inputs": {"width": 8, "height": 8}},
            "2": {"class_type": "TestImageBrighten", "inputs": {"image": ["1", 0], "amount": 0.1}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "srv"}},
            "4": {"class_type": "TestTextJoin", "inputs": {"a": "hi", "b": "there"}},
            "5": {"class_type": "TestShowText", "inputs": {"text": ["4", 0]}},
        }
        answer = http.post("/prompt", json={"prompt": prompt, "client_id": client_id})
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        messages = follow(ws, prompt_id)
        executing = [d["node"] for t, d in messages if t == "executing" and d.get("node")]
        assert executing == ["1", "2", "3", "4", "5"]
        progress = [(d["node"], d["value"], d["max"]) for t, d in messages if t == "progress"]
        assert progress == [("2", 1, 2), ("2", 2, 2)]
        executed = {d["node"]: d["output"] for t, d in messages if t == "executed"}
        assert executed["5"]["text"] == ["hi there"] and executed["3"]["images"][0]["type"] == "output"
        shown = [d for t, d in messages if t == "test_pack.shown"]  # PromptServer.send_sync reaches the socket
        assert [(d["node"], d["text"]) for d in shown] == [("5", "hi there")]

        entry = http.get(f"/history/{prompt_id}").json()[prompt_id]
        assert entry["status"]["status_str"] == "success"
        assert entry["outputs"]["5"]["text"] == ["hi there"]

        bad = dict(prompt, **{"6": {"class_type": "TestCheckedFile", "inputs": {"name": "a.txt", "repeat": 3}},
                              "7": {"class_type": "TestShowText", "inputs": {"text": ["6", 0]}}})
        refused = http.post("/prompt", json={"prompt": bad})
        assert refused.status_code == 400
        assert refused.json()["node_errors"]["6"]["errors"][0]["type"] == "custom_validation_failed"

        assert http.get("/extensions").json() == ["/extensions/comfyd_test_pack/extension.js"]
        script = http.get("/extensions/comfyd_test_pack/extension.js")
        assert script.status_code == 200 and "testPack" in script.text
        assert script.headers["content-type"].startswith("application/javascript")
        assert http.get("/extensions/comfyd_test_pack/missing.js").status_code == 404
        assert http.get("/extensions/comfyd_test_pack/..%2F__init__.py").status_code in (400, 404)
        assert http.get("/extensions/nopack/x.js").status_code == 404
    ws.close()
