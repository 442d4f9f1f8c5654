"""Comfy API v2's error envelope, `{"error": {"code", "message", "details"}}`, on /api/v2 routes.

Routes here raise `V2Error`. Errors raised by the shared layers (auth, rate limits, request
validation, unknown routes, bugs) keep comfyd's own envelope elsewhere; under /api/v2 they are
translated by status into v2 codes (`unauthorized`, `forbidden`, `not_found`, ...), so an SDK
always finds `error.code`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from comfyd.http.errors import ApiError, ComfyError, validation_details

log = logging.getLogger("comfyd.http.v2")

V2_PREFIX = "/api/v2"

# comfyd's status -> the v2 code a client expects for it.
STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "invalid_request",
    416: "range_not_satisfiable",
    422: "invalid_request",
    429: "rate_limited",
    500: "upstream_error",
    501: "not_implemented",
    503: "service_unavailable",
}


class V2Error(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message, "details": self.details}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def not_found(message: str) -> V2Error:
    return V2Error(404, "not_found", message)


def invalid(message: str, details: dict[str, Any] | None = None, status: int = 422) -> V2Error:
    return V2Error(status, "invalid_request", message, details)


def _is_v2(request: Request) -> bool:
    return request.url.path.startswith(V2_PREFIX + "/") or request.url.path == V2_PREFIX


def _from_api_error(exc: ApiError) -> V2Error:
    details = exc.details if isinstance(exc.details, dict) else ({"items": exc.details} if exc.details else None)
    code = STATUS_CODES.get(exc.status, "upstream_error")
    if exc.status == 503 and "queue" in exc.message:
        return V2Error(429, "queue_full", exc.message, details, exc.headers)
    return V2Error(exc.status, code, exc.message, details, exc.headers)


Handler = Callable[[Request, Any], Awaitable[Response]]


def install_v2_errors(app: FastAPI) -> None:
    """Wrap the app's error handlers: under /api/v2 answer with the v2 envelope."""
    original: dict[Any, Handler] = dict(app.exception_handlers)

    def wrap(kind: Any, translate: Callable[[Request, Any], V2Error]) -> None:
        fallback = original.get(kind)

        async def handler(request: Request, exc: Any) -> Response:
            if _is_v2(request) or fallback is None:
                return translate(request, exc).response()
            return await fallback(request, exc)

        app.exception_handlers[kind] = handler

    app.exception_handlers[V2Error] = _v2_handler
    wrap(ApiError, lambda _r, exc: _from_api_error(exc))
    wrap(ComfyError, lambda _r, exc: V2Error(exc.status if exc.status != 400 else 422, "invalid_workflow",
                                             str(exc.body.get("error", {}).get("message") or "invalid workflow")
                                             if isinstance(exc.body.get("error"), dict) else str(exc),
                                             {"node_errors": exc.body.get("node_errors", {})}, exc.headers))
    wrap(RequestValidationError, lambda _r, exc: V2Error(
        422, "invalid_request", "invalid request", {"errors": validation_details(list(exc.errors()))}))
    wrap(StarletteHTTPException, _http_error)
    wrap(Exception, _internal)


async def _v2_handler(request: Request, exc: V2Error) -> Response:
    return exc.response()


def _http_error(request: Request, exc: StarletteHTTPException) -> V2Error:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if status == 404 and message == "Not Found":
        message = f"no route {request.method} {request.url.path}"
    return V2Error(status, STATUS_CODES.get(status, "upstream_error"), message, headers=dict(exc.headers or {}))


def _internal(request: Request, exc: Exception) -> V2Error:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return V2Error(500, "upstream_error", "comfyd hit an internal error; see the server log")
