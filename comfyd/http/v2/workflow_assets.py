"""`{"__type": "core/ASSET", "info": {"id": ...}}` references in a submitted workflow, resolved to
the file names the loaders read (an upload's path in the input folder; an output as
"name [output]", ComfyUI's annotation LoadImage understands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfyd.engine.assets import AssetStore
from comfyd.http.v2.asset_files import upload_path
from comfyd.http.v2.errors import V2Error

ASSET_TYPE = "core/ASSET"


def _missing(node_id: str, name: str, message: str) -> V2Error:
    return V2Error(422, "missing_asset", f"node {node_id} input {name!r}: {message}",
                   {"node_id": node_id, "input": name})


def _resolve(ref: dict[str, Any], node_id: str, name: str, assets: AssetStore, input_dir: Path,
             owner: str | None) -> tuple[str, str]:
    info = ref.get("info")
    asset_id = info.get("id") if isinstance(info, dict) else None
    if not isinstance(asset_id, str) or not asset_id:
        raise _missing(node_id, name, "a core/ASSET reference needs info.id (the asset's id)")
    asset = assets.get(asset_id)
    if asset is None or (owner is not None and asset.owner not in (None, owner)):
        raise _missing(node_id, name, f"no asset {asset_id!r}")
    if asset.kind == "output":
        return f"{asset.location} [output]", asset.id
    if upload_path(input_dir, asset) is None:
        raise _missing(node_id, name, f"the bytes of asset {asset_id!r} are gone")
    return asset.location, asset.id


def resolve_asset_refs(workflow: dict[str, Any], assets: AssetStore, input_dir: Path, owner: str | None
                       ) -> tuple[dict[str, Any], list[str]]:
    """A copy of the workflow with every asset reference in a node's inputs replaced by its file
    name, and the asset ids used. V2Error 422 `missing_asset` for one that does not resolve."""
    resolved: dict[str, Any] = {}
    used: list[str] = []
    for node_id, node in workflow.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            resolved[node_id] = node
            continue
        new_inputs = {}
        for name, value in inputs.items():
            if isinstance(value, dict) and value.get("__type") == ASSET_TYPE:
                value, asset_id = _resolve(value, str(node_id), str(name), assets, input_dir, owner)
                used.append(asset_id)
            new_inputs[name] = value
        resolved[node_id] = {**node, "inputs": new_inputs}
    return resolved, used
