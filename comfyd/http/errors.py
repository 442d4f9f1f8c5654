"""One error shape for every non-ComfyUI answer: `{"error": {"type", "message", "details"}}`.

ComfyUI's own routes keep ComfyUI's bodies where it has one (/prompt's `{error, node_errors}`);
everything else a client gets wrong is a 4xx in this shape, naming what and where. A 500 only
ever means a bug in comfyd, and its body says so without leaking internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from comfyd.http.jsonsafe import SafeJSONResponse as JSONResponse

log = logging.getLogger("comfyd.http")

STATUS_TYPES = {
    400: "InvalidRequest",
    401: "InvalidCredentials",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "RateLimit",
    503: "ServiceUnavailable",
}


class ApiError(Exception):
    """An HTTP error with comfyd's body; raise it from any route or dependency."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class ComfyError(Exception):
    """An error whose body is ComfyUI's own (e.g. /prompt's `{error, node_errors}`)."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(str(body.get("error")))
        self.status = status
        self.body = body
        self.headers = headers or {}


def bad_request(message: str, details: Any = None) -> ApiError:
    return ApiError(400, "InvalidRequest", message, details)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def validation_details(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic errors -> [{location, message, received?}]."""
    details = []
    for err in errors:
        item: dict[str, Any] = {"location": _location(err.get("loc", ())), "message": err.get("msg", "invalid")}
        if "input" in err and isinstance(err["input"], str | int | float | bool) and err.get("type") != "missing":
            item["received"] = err["input"]
        details.append(item)
    return details


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (the router names only the first route's)."""
    from starlette.routing import Match

    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ComfyError)
    async def _comfy_error(request: Request, exc: ComfyError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(list(exc.errors()))
        where = ", ".join(d["location"] for d in details[:5])
        return ApiError(400, "InvalidRequest", f"invalid request ({where})", details).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        headers = dict(exc.headers or {})
        if status == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
            headers["Allow"] = ", ".join(allowed_methods(request))
        error = ApiError(status, STATUS_TYPES.get(status, "HTTPError"), message, headers=headers)
        return error.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, "InternalError", "comfyd hit an internal error; see the server log").response()
