"""The model-file check a server runs when a job is submitted (setting `submit_model_check`).

On (the default): a job naming a model file that is in no configured model folder is refused at
once, with each file, its folder and its loader named, instead of queueing a job that can only
fail. Off (an API host without models, in a split deployment): the names of model files are not
held to this host's folders; validation still checks everything else, and the worker that runs
the job fails it if a file is missing there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyd.check.model_files import model_uses
from comfyd.workflow_formats.layouts import registry_layouts


def missing_models_body(prompt: dict[str, Any], settings: Any, registry: Any,
                        models: Any = None) -> dict[str, Any] | None:
    """ComfyUI-shaped 400 body listing the prompt's model files missing from every model root.

    `models` (the model manager) lists what validation knows beyond this host's folders: on an
    API host of a split deployment, the shared catalog of what the workers hold."""
    roots = [Path(p) for p in settings.model_roots()]
    uses, _problems = model_uses(prompt, registry_layouts(registry), roots, [])
    missing = [u for u in uses if u.path is None and not _listed(models, u.folder, u.name)]
    if not missing:
        return None
    node_errors: dict[str, Any] = {}
    for use in missing:
        entry = node_errors.setdefault(use.node_id, {"errors": [], "dependent_outputs": [], "class_type": use.class_type})
        entry["errors"].append({
            "type": "missing_model",
            "message": "Model file not found",
            "details": f"{use.input}: {use.name} is not in any '{use.folder}' model folder",
            "extra_info": {"input_name": use.input, "folder": use.folder, "name": use.name},
        })
    names = ", ".join(f"{u.folder}/{u.name}" for u in missing)
    return {
        "error": {"type": "prompt_outputs_failed_validation", "message": f"Model files missing: {names}",
                  "details": "", "extra_info": {}},
        "node_errors": node_errors,
    }


def _listed(models: Any, folder: str, name: str) -> bool:
    list_files = getattr(models, "list_files", None)
    if not callable(list_files):
        return False
    try:
        return name in list_files(folder)
    except Exception:  # an unknown folder, or a catalog that cannot be read now
        return False


@dataclass
class _NamedModelsAccepted:
    """A model manager view whose file lists also hold the names the prompt asks for."""

    inner: Any
    named: dict[str, set[str]]

    def list_files(self, folder: str) -> list[str]:
        listed = list(self.inner.list_files(folder)) if self.inner is not None else []
        return sorted(set(listed) | self.named.get(folder, set()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def env_trusting_model_names(env: Any, prompt: dict[str, Any], registry: Any) -> Any:
    """A copy of `env` whose model file lists accept the prompt's model names (submit check off)."""
    from dataclasses import replace

    named: dict[str, set[str]] = {}
    layouts = registry_layouts(registry)
    for node in prompt.values():
        layout = layouts(str(node.get("class_type", "")))
        for input_name, folder in (layout.model_folders.items() if layout else ()):
            value = node.get("inputs", {}).get(input_name)
            if isinstance(value, str):
                # comfyd's own folder names for the two ComfyUI renamed
                for alias in {folder, {"diffusion_models": "unet", "text_encoders": "clip"}.get(folder, folder)}:
                    named.setdefault(alias, set()).add(value)
    return replace(env, models=_NamedModelsAccepted(env.models, named))
