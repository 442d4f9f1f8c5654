"""Request metrics, recorded off the hot path: RequestLatency (Seconds) per route; a 5xx counts
in `Errors` (error_type `ServerError<status>`, beside job errors), a 4xx only in `ClientErrors`
(dimension `status`), so that 401s and 404 scans do not fire the errors alarm.

A pure ASGI middleware (no response buffering). The route is the matched path template
(`/history/{prompt_id}`), never the raw path, so metric dimensions stay few.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        try:
            self.metrics.observe("RequestLatency", seconds, "Seconds", route=route, method=scope["method"])
            if status >= 500:
                self.metrics.increment("Errors", error_type=f"ServerError{status}")
            elif status >= 400:
                self.metrics.increment("ClientErrors", status=str(status))
        except Exception:  # metrics must never fail a request
            log.debug("request metrics not recorded", exc_info=True)
