"""A local AWS endpoint (moto's server mode) for development and tests.

    endpoint = LocalAwsEndpoint().start()     # 127.0.0.1, a free port
    os.environ.update(endpoint.environment())  # AWS_ENDPOINT_URL + dummy credentials + region
    endpoint.reset()                            # forget every resource (POST /moto-api/reset)
    endpoint.stop()

Everything goes over real HTTP to the server, exactly as to AWS. What moto does not do (and
comfyd must not rely on): check signatures or credentials, enforce presigned-URL expiry, delete
items whose TTL passed. One gap matters for correctness tests: moto evaluates a DynamoDB
condition and then writes without a lock, so two concurrent conditional writes can both
succeed, which DynamoDB never allows. This endpoint runs moto in-process and serialises its
DynamoDB writes, restoring the per-item atomicity comfyd's job store relies on (a bare
`python -m moto.server` lacks this). Needs the `moto[server]` package (a dev dependency).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import urllib.request
from typing import Any

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
}


_WRITE_LOCK = threading.RLock()
_DYNAMODB_WRITES = ("put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item")


def serialise_dynamodb_writes() -> None:
    """Make moto's DynamoDB condition-check-then-write atomic, as DynamoDB's is (idempotent)."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _DYNAMODB_WRITES:
        original = getattr(DynamoDBBackend, name, None)
        if original is None or getattr(original, "_comfyd_serialised", False):
            continue

        def locked(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with _WRITE_LOCK:
                return __original(self, *args, **kwargs)

        locked._comfyd_serialised = True  # type: ignore[attr-defined]
        functools.update_wrapper(locked, original)
        setattr(DynamoDBBackend, name, locked)


class LocalAwsEndpoint:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, region: str = "us-east-1") -> None:
        self.host = host
        self.port = port
        self.region = region
        self._server: Any = None

    def start(self) -> LocalAwsEndpoint:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise RuntimeError("the local AWS endpoint needs moto: pip install 'moto[server]'") from exc
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        serialise_dynamodb_writes()
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """Variables that point boto3 (and so comfyd) at this endpoint."""
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), self.host, "localhost"]))
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
                "NO_PROXY": no_proxy, **DUMMY_CREDENTIALS}

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        with direct.open(request, timeout=10) as reply:
            reply.read()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LocalAwsEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
