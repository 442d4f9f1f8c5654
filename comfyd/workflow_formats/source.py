"""Reading a workflow from a file: JSON in any accepted form, or a PNG / WEBP that carries one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from comfyd.workflow_formats.embedded import EmbeddedWorkflowError, is_image_file, workflow_from_image
from comfyd.workflow_formats.ui_graph import is_ui_workflow


def load_workflow_source(path: str | Path) -> tuple[dict[str, Any], str]:
    """(workflow body, format) from a file; format is one of `api`, `graph`, `ui`,
    `png:prompt`, `png:workflow` (`webp:...` likewise). ValueError naming the file otherwise."""
    path = Path(path)
    if str(path) != "/dev/stdin" and is_image_file(path):
        kind = "webp" if path.read_bytes()[8:12] == b"WEBP" else "png"
        try:
            body, chunk = workflow_from_image(path)
        except (EmbeddedWorkflowError, OSError) as exc:
            raise ValueError(f"workflow {path}: {exc}") from exc
        return body, f"{kind}:{chunk}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"workflow {path}: cannot read it: {exc}") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"workflow {path}: not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise ValueError(f"workflow {path}: expected a JSON object (a workflow), got {type(body).__name__}")
    return body, detect_format(body)


def detect_format(body: Any) -> str:
    """`ui`, `graph` or `api` (bare or wrapped), judged from the body's shape only."""
    if is_ui_workflow(body) or (isinstance(body, dict) and is_ui_workflow(body.get("prompt"))):
        return "ui"
    if isinstance(body, dict) and isinstance(body.get("nodes"), dict) and "class_type" not in body["nodes"]:
        return "graph"
    return "api"
