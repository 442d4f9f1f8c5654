"""The project's own backoff, applied after botocore's standard retries have given up.

botocore already retries each call (standard mode, 3 attempts, sub-second jittered backoff).
That covers a blip; it does not cover S3 answering SlowDown for a minute. `with_backoff` repeats
the whole call a few more times with longer, jittered pauses (`COMFYD_RETRY_ATTEMPTS`,
`COMFYD_RETRY_BACKOFF_S`) and then lets the error through for the caller's last resort (the S3
store spools to disk; the others fail the operation).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Error codes worth another round: throttling and the service's own transient failures.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "InternalFailure", "ServiceUnavailable",
    "InternalServerError", "TransactionInProgressException", "KMSThrottlingException",
})

MAX_PAUSE_S = 30.0


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx and broken connections: the same call may well succeed later."""
    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code", "") in TRANSIENT_CODES or status >= 500
    return False


def backoff_pauses(attempts: int, base_s: float) -> list[float]:
    """Pauses before each repeat: full jitter over base * 2^i, capped."""
    return [random.uniform(0.5, 1.0) * min(base_s * 2**i, MAX_PAUSE_S) for i in range(max(attempts - 1, 0))]


def with_backoff(
    call: Callable[[], T],
    *,
    attempts: int,
    base_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, repeated up to `attempts` times in all while it fails transiently."""
    pauses = backoff_pauses(attempts, base_s)
    for pause in pauses:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("%s failed (%s: %s); again in %.2f s", what, type(exc).__name__, exc, pause)
        sleep(pause)
    return call()
