"""Where the model files a workflow names are, or should be.

Loader inputs and their folders come from the node layouts (ComfyUI's declarations name the
folder of each file combo); a UI workflow's `properties.models` entries add download URLs and
hashes. Files are looked up in every configured model root, as ComfyUI's folder names and
their older aliases (`unet` for `diffusion_models`, `clip` for `text_encoders`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyd.safepath import UnsafePathError, safe_join
from comfyd.workflow_formats.layouts import LayoutLookup

FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "unet": ("unet", "diffusion_models"),
    "text_encoders": ("text_encoders", "clip"),
    "clip": ("clip", "text_encoders"),
    "controlnet": ("controlnet", "t2i_adapter"),
}


@dataclass(frozen=True)
class ModelUse:
    node_id: str
    class_type: str
    input: str
    name: str
    folder: str
    path: Path | None  # where it was found, None if missing
    expected: Path
    url: str | None = None
    hash: str | None = None
    hash_type: str | None = None


def find_model(roots: list[Path], folder: str, name: str) -> Path | None:
    """The file (or diffusers folder) `name` in `folder` under any root; None if absent.
    Raises UnsafePathError for a name that leaves its folder."""
    for root in roots:
        for alias in FOLDER_ALIASES.get(folder, (folder,)):
            candidate = safe_join(Path(root) / alias, name)
            if candidate.exists():
                return candidate
    return None


def expected_path(roots: list[Path], folder: str, name: str) -> Path:
    base = Path(roots[0]) if roots else Path("models")
    return safe_join(base / folder, name)


def model_uses(prompt: dict[str, Any], layouts: LayoutLookup, roots: list[Path],
               model_links: list[dict[str, Any]]) -> tuple[list[ModelUse], list[str]]:
    """Every model file the prompt's loaders name (found or not), and problems with names."""
    by_name = {str(m.get("name")): m for m in model_links}
    uses: list[ModelUse] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for node_id, node in prompt.items():
        class_type = str(node.get("class_type", ""))
        layout = layouts(class_type)
        if layout is None:
            continue
        for input_name, folder in layout.model_folders.items():
            value = node.get("inputs", {}).get(input_name)
            if not isinstance(value, str) or not value:
                continue
            uses.append(_use(node_id, class_type, input_name, value, folder, roots, by_name.get(value), problems))
            seen.add((folder, value))
    # Models a UI workflow lists on loaders no layout describes (custom packs). Elsewhere the
    # loader's own widget value wins: the list may name a file the user has since replaced.
    for link in model_links:
        folder, name = str(link.get("directory") or ""), str(link.get("name") or "")
        node_id = str(link.get("node_id", ""))
        if not folder or not name or not node_id or node_id not in prompt or (folder, name) in seen:
            continue
        class_type = str(prompt[node_id].get("class_type", ""))
        layout = layouts(class_type)
        if layout is not None and layout.model_folders:
            continue
        uses.append(_use(node_id, class_type, "", name, folder, roots, link, problems))
        seen.add((folder, name))
    return uses, problems


def _use(node_id: str, class_type: str, input_name: str, name: str, folder: str, roots: list[Path],
         link: dict[str, Any] | None, problems: list[str]) -> ModelUse:
    try:
        found = find_model(roots, folder, name)
        expected = expected_path(roots, folder, name)
    except UnsafePathError as exc:
        problems.append(f"node {node_id}: model name {name!r} is not a safe file name ({exc})")
        found, expected = None, Path(folder) / Path(name).name
    link = link or {}
    return ModelUse(
        node_id, class_type, input_name, name, folder, found, expected,
        url=link.get("url"), hash=link.get("hash"), hash_type=link.get("hash_type"),
    )
