"""Request bodies of the JSON routes, as pydantic models, for the OpenAPI document.

The routes read their bodies themselves (to answer ComfyUI's own 400 shapes and to keep
unknown keys as ComfyUI does), so these models describe the bodies rather than parse them:
`json_body(Model)` is the `openapi_extra` that puts a model's schema into the document, and
`ERROR_RESPONSES` documents the 4xx/5xx answers every route may give.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PromptBody(BaseModel):
    """POST /prompt: ComfyUI's body (API-format workflow in `prompt`)."""

    model_config = ConfigDict(extra="allow")

    prompt: dict[str, Any] = Field(description="API-format workflow: node id -> {class_type, inputs}")
    client_id: str | None = None
    prompt_id: str | None = Field(None, description="1-128 letters, digits and . _ -")
    extra_data: dict[str, Any] | None = None
    front: bool | None = None
    number: float | None = None
    partial_execution_targets: list[str] | None = None


class QueueBody(BaseModel):
    """POST /queue and POST /history: clear all, or delete some ids."""

    clear: bool | None = None
    delete: list[str] | None = None


class InterruptBody(BaseModel):
    prompt_id: str | None = None


class FreeBody(BaseModel):
    unload_models: bool | None = None
    free_memory: bool | None = None


class UploadForm(BaseModel):
    """multipart/form-data of /upload/image and /upload/mask."""

    image: bytes = Field(json_schema_extra={"format": "binary"})
    type: str | None = Field(None, description="input | output | temp")
    subfolder: str | None = None
    overwrite: str | None = Field(None, description="true to replace an existing file")
    original_ref: str | None = Field(None, description="/upload/mask: JSON {filename, subfolder, type}")


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its `$defs` inlined (the document has no root `$defs`)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` documenting `model` as the route's application/json body."""
    schema = _inline(model.model_json_schema())
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}}


def multipart_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = _inline(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_ERROR = {"content": {"application/json": {"schema": {"type": "object"}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, **_ERROR} for status, text in (
        (400, "Invalid request (comfyd's error body, or ComfyUI's {error, node_errors} for workflows)"),
        (401, "Missing API key"), (403, "Wrong API key, or a foreign Origin / Host without keys"),
        (404, "Not found"), (405, "Method not allowed (the Allow header lists the methods)"),
        (409, "The id exists with a different request"), (413, "Body, upload, image or extra_data too large"),
        (415, "Wrong content type"), (422, "Refused webhook"), (429, "Rate limit"),
        (503, "Queue full, or the runtime is not ready"),
    )
}

# Comfy API v2 answers with its own envelope {error: {code, message, details}}, and with the
# success codes of its spec (201 new asset, 206 range, 302 to object storage, 416 bad range).
V2_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    **{status: {"description": text, **_ERROR} for status, text in (
        (201, "Created"), (416, "Range not satisfiable"),
        (501, "Not available on this host (no asset database)"),
    )},
    206: {"description": "Partial content"},
    302: {"description": "Redirect to the output store's signed URL"},
}
