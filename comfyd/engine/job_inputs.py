"""A job's uploaded input files across hosts (the API host that took the upload is not the
worker that runs the job).

With a shared output store (S3), an upload is stored by content and under its name
(`SharedInputs.put_input`). When a job is submitted, every input file it names (the values of
inputs declared `image_upload`, e.g. LoadImage's `image`) is looked up in the store, fetched
into this host's input folder if missing (so validation sees it), and the content keys are kept
in the job (`extra_data["input_keys"]`). The worker fetches exactly those keys before it runs
the job: the content that was validated, even if the name was uploaded again meanwhile.
With local storage these functions do nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from comfyd.safepath import UnsafePathError, safe_join

log = logging.getLogger("comfyd.jobs")

INPUT_KEYS = "input_keys"  # extra_data key: {input file name: content key}


@runtime_checkable
class SharedInputs(Protocol):
    """What an output store offers when it is shared by every host (S3OutputStore)."""

    def put_input(self, name: str, data: bytes) -> str: ...

    def input_key(self, name: str) -> str | None: ...

    def fetch_input(self, content_key: str, dest: Path) -> None: ...


def shared_inputs(store: Any) -> SharedInputs | None:
    return store if isinstance(store, SharedInputs) else None


def input_file_names(workflow: dict[str, Any], registry: Any) -> list[str]:
    """Names of the input-folder files the workflow's upload inputs point at (plain names only:
    "x.png [output]" and the like name other folders)."""
    names: list[str] = []
    for node in workflow.values():
        if not isinstance(node, dict):
            continue
        cls = registry.get(str(node.get("class_type", "")))
        schema = getattr(cls, "schema", None)
        inputs = node.get("inputs")
        if schema is None or not isinstance(inputs, dict):
            continue
        for spec in schema.inputs:
            value = inputs.get(spec.name)
            if getattr(spec, "image_upload", False) and isinstance(value, str) and value and not value.endswith("]"):
                names.append(value)
    return names


def pin_inputs(workflow: dict[str, Any], registry: Any, store: Any, input_dir: Path) -> dict[str, str]:
    """At submit: {name: content key} for each input file the shared store knows, each fetched
    into `input_dir` when this host does not have it yet. Names the store does not know are
    left to validation (a local file, or ComfyUI's `value_not_in_list`)."""
    shared = shared_inputs(store)
    if shared is None:
        return {}
    pinned: dict[str, str] = {}
    for name in input_file_names(workflow, registry):
        try:
            dest = safe_join(input_dir, name)
        except UnsafePathError:
            continue  # validation reports it
        key = shared.input_key(name)
        if key is None:
            continue
        shared.fetch_input(key, dest)
        pinned[name] = key
    return pinned


def fetch_job_inputs(extra_data: dict[str, Any], store: Any, input_dir: Path) -> int:
    """On the worker, before running: the job's pinned inputs into `input_dir`; how many."""
    shared = shared_inputs(store)
    pinned = extra_data.get(INPUT_KEYS)
    if shared is None or not isinstance(pinned, dict):
        return 0
    for name, key in pinned.items():
        shared.fetch_input(str(key), safe_join(input_dir, str(name)))
    return len(pinned)
