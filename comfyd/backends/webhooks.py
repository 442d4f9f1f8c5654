"""Webhooks (Cog's start/output/logs/completed events), signed per Standard Webhooks.

A `WebhookNotifier` is a Notifier: `publish(event, payload, attributes)` with the job layer's
events ("job.started", "job.output", "job.logs", "job.completed") and, in `attributes`, the
job's `webhook` URL and optional `webhook_events_filter`. Deliveries never block the caller and
never raise into it: they go to a background dispatcher and a small pool of sender threads.

- Signing (https://www.standardwebhooks.com): headers `webhook-id` (same for every retry of a
  message), `webhook-timestamp` (seconds) and `webhook-signature` = "v1," + base64 of
  HMAC-SHA256(key, f"{id}.{timestamp}.{body}"); the key is the base64 part of a `whsec_...`
  secret, or the secret's UTF-8 bytes otherwise. No secret: sent unsigned.
- Retries: connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff
  (honouring Retry-After) up to `max_attempts`; other 4xx answers are final.
- Throttling (as Cog): `output` and `logs` events for one job go out at most once per
  `throttle_s`; a newer one replaces a waiting one, and `completed` supersedes both.
- Addresses (comfyd.backends.webhook_guard): public only unless allowed, checked before every attempt
  and again when connecting; a refused URL is logged and dropped, and the job is not affected.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from comfyd.backends.webhook_guard import (
    ForbiddenWebhook,
    UnresolvableWebhook,
    WebhookPolicy,
    pinned_transport,
)

log = logging.getLogger("comfyd.webhooks")

# The job layer's notifier events -> Cog's webhook event names.
COG_EVENTS = {"job.started": "start", "job.output": "output", "job.logs": "logs", "job.completed": "completed"}
ALL_EVENTS = frozenset(COG_EVENTS.values())
THROTTLED_EVENTS = frozenset({"output", "logs"})
RETRY_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret (`whsec_<base64>`), or a raw secret's bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for one message."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(secret: str, headers: Mapping[str, str], body: bytes, tolerance_s: float = 300.0) -> bool:
    """Check a received webhook (what a receiver does): signature and timestamp freshness."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    try:
        timestamp = int(lowered.get("webhook-timestamp", ""))
    except ValueError:
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1]
    for candidate in lowered.get("webhook-signature", "").split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


@dataclass
class _Delivery:
    url: str
    event: str  # Cog event name
    job_id: str
    body: bytes
    msg_id: str
    attempt: int = 0
    canceled: bool = False
    due: float = 0.0  # monotonic time of the first attempt


def _retry_after_s(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class WebhookNotifier:
    """comfyd.engine.interfaces.Notifier delivering Cog webhooks in the background."""

    def __init__(
        self,
        secret: str | None = None,
        *,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 10.0,
        throttle_s: float = 0.5,
        workers: int = 4,
        max_pending: int = 10_000,
        transport: httpx.BaseTransport | None = None,
        policy: WebhookPolicy | None = None,
    ) -> None:
        self.secret = secret
        # Checked before every attempt (a host may resolve elsewhere than at submission), and the
        # default transport connects only to the addresses it checks (webhook_guard.PinnedBackend).
        self.policy = policy or WebhookPolicy()
        self.max_attempts = max(1, max_attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.throttle_s = throttle_s
        self.max_pending = max_pending
        # A redirect could point anywhere: never followed. Environment proxies (HTTPS_PROXY) are not
        # used: httpx ignores them when given a transport, so every connection goes through the pin.
        self._client = httpx.Client(timeout=timeout_s, transport=transport or pinned_transport(self.policy),
                                    follow_redirects=False)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="comfyd-webhook")
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, _Delivery]] = []
        self._seq = itertools.count()
        self._in_flight = 0
        self._closed = False
        # Throttling state per (url, job): when the last throttled event went out, and the one waiting.
        self._last_sent: dict[tuple[str, str], float] = {}
        self._waiting: dict[tuple[str, str], _Delivery] = {}
        self._completed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="comfyd-webhooks", daemon=True)
        self._dispatcher.start()

    # ---- Notifier ------------------------------------------------------------------------

    def publish(self, event: str, payload: dict[str, Any], attributes: dict[str, str] | None = None) -> None:
        """Queue the webhook for this event, if the job asked for one. Never blocks or raises."""
        try:
            self._publish(event, payload, attributes or {})
        except Exception:
            log.exception("webhook: could not queue %s", event)

    def _publish(self, event: str, payload: dict[str, Any], attributes: dict[str, str]) -> None:
        url = attributes.get("webhook")
        cog_event = COG_EVENTS.get(event)
        if not url or cog_event is None:
            return
        wanted = attributes.get("webhook_events_filter")
        if wanted and cog_event not in {e.strip() for e in wanted.split(",")}:
            return
        job_id = str(attributes.get("job_id") or payload.get("id") or "")
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        delivery = _Delivery(url=url, event=cog_event, job_id=job_id, body=body, msg_id=f"msg_{uuid.uuid4().hex}")
        key = (url, job_id)
        now = time.monotonic()
        with self._lock:
            if self._closed:
                return
            if len(self._heap) >= self.max_pending:
                self.dropped += 1
                log.warning("webhook: %d deliveries pending; dropping %s for %s", len(self._heap), cog_event, job_id)
                return
            due = now
            if cog_event in THROTTLED_EVENTS:
                if key in self._completed:
                    return  # the job's end was announced already
                waiting = self._waiting.pop(key, None)
                if waiting is not None:  # not sent yet: this newer state takes its slot
                    waiting.canceled = True
                    due = waiting.due
                else:
                    last = self._last_sent.get(key)
                    due = now if last is None else max(now, last + self.throttle_s)
                self._waiting[key] = delivery
                self._last_sent[key] = due
            elif cog_event == "completed":
                waiting = self._waiting.pop(key, None)
                if waiting is not None:
                    waiting.canceled = True
                self._last_sent.pop(key, None)
                self._completed[key] = None
                while len(self._completed) > 10_000:
                    self._completed.popitem(last=False)
            delivery.due = due
            heapq.heappush(self._heap, (due, next(self._seq), delivery))
            self._lock.notify_all()

    # ---- delivery -------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic())
                    self._lock.wait(timeout)
                if self._closed:
                    return
                _, _, delivery = heapq.heappop(self._heap)
                if delivery.canceled:
                    continue
                if self._waiting.get((delivery.url, delivery.job_id)) is delivery:
                    del self._waiting[(delivery.url, delivery.job_id)]
                self._in_flight += 1
            try:
                self._pool.submit(self._send, delivery)
            except RuntimeError:  # pool shut down
                with self._lock:
                    self._in_flight -= 1
                return

    def _headers(self, delivery: _Delivery) -> dict[str, str]:
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "comfyd-webhooks/1",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self.secret:
            headers["webhook-signature"] = sign(self.secret, delivery.msg_id, timestamp, delivery.body)
        return headers

    def _send(self, delivery: _Delivery) -> None:
        delivery.attempt += 1
        response: httpx.Response | None = None
        error: str
        try:
            self.policy.check(delivery.url)
            response = self._client.post(delivery.url, content=delivery.body, headers=self._headers(delivery))
            if response.status_code < 300:
                self._done(delivery, ok=True)
                return
            error = f"HTTP {response.status_code}"
            retry = response.status_code in RETRY_STATUSES
        except UnresolvableWebhook as exc:  # DNS may be back by the next attempt
            error = str(exc)
            retry = True
        except ForbiddenWebhook as exc:  # final: the job itself is not affected
            log.warning("webhook %s for job %s not sent: %s", delivery.event, delivery.job_id, exc)
            self._done(delivery, ok=False)
            return
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
            retry = True
        except Exception as exc:  # never let a delivery thread die silently
            error = f"{type(exc).__name__}: {exc}"
            retry = False
        if retry and delivery.attempt < self.max_attempts:
            delay = min(self.max_backoff_s, self.backoff_s * (2 ** (delivery.attempt - 1)))
            retry_after = _retry_after_s(response)
            if retry_after is not None:
                delay = max(delay, min(retry_after, self.max_backoff_s))
            log.info("webhook %s to %s failed (%s); retry %d in %.1fs",
                     delivery.event, delivery.url, error, delivery.attempt, delay)
            with self._lock:
                heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), delivery))
                self._in_flight -= 1
                self._lock.notify_all()
            return
        log.warning("webhook %s to %s failed for good after %d attempt(s): %s",
                    delivery.event, delivery.url, delivery.attempt, error)
        self._done(delivery, ok=False)

    def _done(self, delivery: _Delivery, ok: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
            self._lock.notify_all()

    # ---- lifecycle ------------------------------------------------------------------------

    def pending(self) -> int:
        with self._lock:
            return sum(1 for _, _, d in self._heap if not d.canceled) + self._in_flight

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery (and its retries) is done; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(not d.canceled for _, _, d in self._heap) or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.1))
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


class CompositeNotifier:
    """Publishes to several notifiers (SNS and webhooks, say); one failing never stops the others."""

    def __init__(self, *notifiers: Any) -> None:
        self.notifiers = [n for n in notifiers if n is not None]

    def publish(self, event: str, payload: dict[str, Any], attributes: dict[str, str] | None = None) -> None:
        for notifier in self.notifiers:
            try:
                notifier.publish(event, payload, attributes)
            except Exception:
                log.exception("notifier %s failed on %s", type(notifier).__name__, event)

    def close(self) -> None:
        for notifier in self.notifiers:
            close = getattr(notifier, "close", None)
            if callable(close):
                close()
