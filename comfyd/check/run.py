"""`comfyd check`: everything that can be learnt about a workflow without running it.

Format detection and conversion, ComfyUI's validation (node_errors), model files present or
missing (with the folder and loader), node classes comfyd lacks (with their pack), the families
of the model files from their headers, service limits, and an estimate of memory and work.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from comfyd.check.estimate import estimate
from comfyd.check.model_files import ModelUse, model_uses
from comfyd.check.report import CheckError, CheckReport, MissingModel, ModelFileEntry, UnknownNodeEntry
from comfyd.engine.errors import WorkflowParseError, WorkflowValidationError
from comfyd.engine.service_limits import budget_message
from comfyd.workflow_formats.layouts import pack_for, registry_layouts
from comfyd.workflow_formats.source import detect_format
from comfyd.workflow_formats.ui_graph import UiFormatError, is_ui_workflow
from comfyd.workflow_formats.ui_to_api import UnknownNode, ui_to_api

# Latent-creating nodes comfyd does not run yet, held to the same size limits at check time.
OTHER_SIZED_NODES = frozenset({
    "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "EmptyMochiLatentVideo", "EmptyLTXVLatentVideo",
    "EmptyCosmosLatentVideo", "Wan22ImageToVideoLatent", "WanImageToVideo", "EmptyChromaRadianceLatentImage",
})
LIMIT_ERROR_TYPES = frozenset({"value_not_multiple_of"})


def check_workflow(body: dict[str, Any], settings: Any, *, registry: Any = None, fmt: str | None = None,
                   device_memory: int | None = None, sets: list[str] | None = None) -> CheckReport:
    """Check `body` (any accepted form) against `settings` (models folders, limits); `sets` are
    `NODE.INPUT=VALUE` overrides applied to the API prompt (after converting a UI graph)."""
    if registry is None:
        from comfyd.compat.loader import node_registry

        # comfyd's nodes plus the custom nodes the settings name: a pack's node is known (and one
        # it cannot run is reported with its reason by validation), as a server would see it.
        registry = node_registry(settings)
    report = CheckReport(ok=False, format=fmt or detect_format(body))
    layouts = registry_layouts(registry)
    ui = body if is_ui_workflow(body) else body.get("prompt") if is_ui_workflow(body.get("prompt")) else None
    unknown: list[UnknownNode] = []
    model_links: list[dict[str, Any]] = []
    request_body: Any = body
    if ui is not None:
        try:
            conversion = ui_to_api(ui, layouts)
        except UiFormatError as exc:
            report.errors.append(CheckError(kind="invalid_value", message=f"broken UI workflow: {exc}"))
            return report
        unknown, model_links = conversion.unknown_nodes, conversion.model_links
        report.warnings.extend(conversion.warnings)
        request_body = conversion.prompt if ui is body else {**body, "prompt": conversion.prompt}
    from comfyd.engine.graph import parse_workflow

    if sets:
        from comfyd.runner import apply_sets

        try:
            request_body = apply_sets(copy.deepcopy(request_body), sets)
        except ValueError as exc:
            report.errors.append(CheckError(kind="invalid_value", message=str(exc)))
            return report
    try:
        request = parse_workflow(request_body)
    except WorkflowParseError as exc:
        report.errors.append(CheckError(kind="invalid_value", message=f"{exc.message} ({exc.details})" if exc.details else exc.message))
        return report
    prompt = request.prompt
    listed = {u.node_id for u in unknown}
    for node_id, node in prompt.items():
        class_type = str(node.get("class_type"))
        if registry.get(class_type) is None and node_id not in listed:
            unknown.append(UnknownNode(node_id, class_type, pack_for(class_type)))
    for u in unknown:
        report.unknown_nodes.append(UnknownNodeEntry(node_id=u.node_id, class_type=u.class_type, pack=u.pack))
        report.errors.append(CheckError(kind="unknown_node", node_id=u.node_id, class_type=u.class_type, message=u.message()))

    roots = [Path(p) for p in settings.model_roots()]
    uses, problems = model_uses(prompt, layouts, roots, model_links)
    for problem in problems:
        report.errors.append(CheckError(kind="invalid_value", message=problem))
    missing_names = _report_models(report, uses)

    if not unknown:
        _validate(report, request, registry, settings, missing_names)
    _check_other_limits(report, prompt, settings, validated=not unknown)

    found = [u for u in uses if u.path is not None]
    weight_bytes = sum(m.weight_bytes or 0 for m in report.models)
    parameters = sum(m.parameters or 0 for m in report.models)
    report.estimate = estimate(
        prompt, weight_bytes, _compute_bytes(settings), parameters, device_memory,
        complete=len(found) == len(uses) and not unknown,
    )
    if report.estimate.fits is False:
        report.errors.append(CheckError(
            kind="limit",
            message=f"estimated peak device memory {report.estimate.peak_device_bytes / 2**30:.1f} GiB exceeds the "
                    f"device's {report.estimate.device_memory_bytes / 2**30:.1f} GiB",  # type: ignore[operator]
        ))
    report.ok = not report.errors
    return report


def _report_models(report: CheckReport, uses: list[ModelUse]) -> set[tuple[str, str]]:
    from comfyd.models.header_probe import HeaderError, detect_family, is_supported, read_header

    missing: set[tuple[str, str]] = set()
    for use in uses:
        if use.path is None:
            missing.add((use.node_id, use.input))
            report.missing_models.append(MissingModel(
                node_id=use.node_id, class_type=use.class_type, input=use.input, name=use.name, folder=use.folder,
                expected_path=str(use.expected), url=use.url, hash=use.hash, hash_type=use.hash_type,
            ))
            loader = f"{use.class_type} (node {use.node_id})" if use.class_type else "the workflow"
            report.errors.append(CheckError(
                kind="missing_model", node_id=use.node_id or None, class_type=use.class_type or None,
                input=use.input or None,
                message=f"{use.name} is not in any '{use.folder}' folder; {loader} loads it from {use.expected}"
                        + (f" (download: {use.url})" if use.url else ""),
            ))
            continue
        if use.path.is_dir() or use.path.suffix not in (".safetensors", ".sft"):
            continue
        try:
            header = read_header(use.path)
        except (HeaderError, OSError) as exc:
            report.errors.append(CheckError(kind="invalid_value", node_id=use.node_id, class_type=use.class_type,
                                            input=use.input, message=str(exc)))
            continue
        family = detect_family(header)
        supported = is_supported(family)
        report.models.append(ModelFileEntry(
            node_id=use.node_id, class_type=use.class_type, input=use.input, path=str(use.path), family=family,
            supported=supported, parameters=header.parameters, weight_bytes=header.weight_bytes,
        ))
        if not supported:
            report.errors.append(CheckError(
                kind="unsupported_family", node_id=use.node_id, class_type=use.class_type, input=use.input,
                message=f"{use.name} is a {family} model; comfyd does not run that family yet",
            ))
    return missing


def _validate(report: CheckReport, request: Any, registry: Any, settings: Any, missing: set[tuple[str, str]]) -> None:
    from comfyd.engine.context import NodeEnvironment
    from comfyd.engine.validate import validate_workflow
    from comfyd.models.manager import ModelManager

    env = NodeEnvironment(settings, models=ModelManager(settings))
    try:
        validate_workflow(request, registry, env)
    except WorkflowValidationError as exc:
        body = exc.body
        node_errors = body.get("node_errors") or {}
        if not node_errors:
            error = body.get("error") or {}
            kind = "limit" if "max_nodes" in (error.get("extra_info") or {}) else "invalid_value"
            report.errors.append(CheckError(kind=kind, message=str(error.get("message", "invalid workflow"))))
        for node_id, entry in node_errors.items():
            for err in entry.get("errors", []):
                input_name = (err.get("extra_info") or {}).get("input_name")
                if (node_id, input_name) in missing and err.get("type") == "value_not_in_list":
                    continue  # reported as missing_model
                report.errors.append(CheckError(
                    kind=_kind_of(err), node_id=node_id, class_type=entry.get("class_type"), input=input_name,
                    message=f"{err.get('message', '')}: {err.get('details', '')}".strip(": "),
                ))


def _kind_of(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "required_input_missing":
        return "missing_input"
    if kind in LIMIT_ERROR_TYPES or "service limit" in f"{err.get('message', '')} {err.get('details', '')}":
        return "limit"
    return "invalid_value"


def _check_other_limits(report: CheckReport, prompt: dict[str, Any], settings: Any, validated: bool) -> None:
    if not validated and len(prompt) > settings.max_workflow_nodes:
        report.errors.append(CheckError(kind="limit", message=f"workflow has {len(prompt)} nodes; comfyd runs at most "
                                                              f"{settings.max_workflow_nodes}"))
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        if class_type not in OTHER_SIZED_NODES:
            continue
        inputs = node.get("inputs", {})
        width, height = inputs.get("width"), inputs.get("height")
        budget = getattr(settings, "max_latent_pixels", None)
        if isinstance(width, int) and isinstance(height, int) and budget and width * height > budget:
            report.errors.append(CheckError(kind="limit", node_id=node_id, class_type=class_type, input="width",
                                            message=budget_message(width, height, budget)))
        batch = inputs.get("batch_size")
        if isinstance(batch, int) and batch > settings.max_batch_size:
            report.errors.append(CheckError(
                kind="limit", node_id=node_id, class_type=class_type, input="batch_size",
                message=f"batch_size {batch} is bigger than comfyd's service limit {settings.max_batch_size}"))


def _compute_bytes(settings: Any) -> int | None:
    dtype = getattr(settings, "dtype", "auto")
    return {"fp16": 2, "bf16": 2, "fp32": 4}.get(dtype)


def device_memory_bytes(settings: Any) -> int | None:
    """Total memory of the configured CUDA device, None on CPU or when unknown."""
    device = str(getattr(settings, "device", "auto"))
    if device == "cpu" or device == "mps":
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        return int(torch.cuda.get_device_properties(index).total_memory)
    except Exception:  # no CUDA build, no driver: memory unknown
        return None
