"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`.

Configured entries (`COMFYD_API_KEYS`, comma-separated, or the config file) are keys, or
`sha256:<hex>` digests of keys so the config need not hold the secret itself. A presented key is
compared against every entry in constant time (no early exit), so timing reveals nothing about
which entry (or how much of one) matched.

Without credentials: 401 InvalidCredentials. With a wrong key: 403 InvalidAPIKey.
No keys configured: everything is open, which `check_bind_safety` allows on loopback only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from comfyd.http.errors import ApiError

SHA256_PREFIX = "sha256:"


class InsecureBindError(RuntimeError):
    """Refusing to serve without API keys on a non-loopback address."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_safety(host: str, api_keys: list[str]) -> None:
    """Raise InsecureBindError when the server would be open to a network."""
    if api_keys or is_loopback(host):
        return
    raise InsecureBindError(
        f"refusing to listen on {host!r} without API keys: anyone who can reach it could run "
        "workflows. Set COMFYD_API_KEYS (comma-separated keys, or sha256:<hex> of a key) or "
        "api_keys in the config file, or bind to 127.0.0.1."
    )


@dataclass(frozen=True)
class _Entry:
    digest: bytes  # sha256 of the key (entries are normalised to digests)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _parse_entry(entry: str) -> _Entry:
    entry = entry.strip()
    if entry.lower().startswith(SHA256_PREFIX):
        hex_digest = entry[len(SHA256_PREFIX):].strip()
        try:
            raw = bytes.fromhex(hex_digest)
        except ValueError:
            raise ValueError(f"api_keys entry {entry[:16]!r}...: sha256: must be followed by 64 hex digits") from None
        if len(raw) != 32:
            raise ValueError(f"api_keys entry {entry[:16]!r}...: a sha256 digest has 64 hex digits")
        return _Entry(raw)
    if not entry:
        raise ValueError("api_keys holds an empty entry")
    return _Entry(_digest(entry))


class ApiKeys:
    """The configured keys, and the check of a request's credentials."""

    def __init__(self, entries: list[str]) -> None:
        # Settings refuse blank entries (settings._check_api_keys); none is dropped silently here.
        self._entries = [_parse_entry(e) for e in entries]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def matches(self, key: str) -> bool:
        """Constant time: every entry is compared, whatever matched before."""
        presented = _digest(key)
        found = 0
        for entry in self._entries:
            found |= hmac.compare_digest(presented, entry.digest)
        return bool(found)

    @staticmethod
    def credential(headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str | None:
        """The key a request presents; raises 401 for a malformed Authorization header."""
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(
                    401, "InvalidCredentials",
                    "the Authorization header must be 'Bearer <key>' (or send the key as X-API-Key)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return value.strip()
        key = headers.get("x-api-key")
        if key:
            return key.strip()
        if query is not None:  # websocket handshakes from browsers cannot set headers
            token = query.get("token") or query.get("api_key")
            if token:
                return token
        return None

    def principal(self, headers: Mapping[str, str], client_host: str, query: Mapping[str, str] | None = None) -> str:
        """Who is calling (for rate limits): a key fingerprint, or the client address when auth is off.

        Raises ApiError 401 (no credentials) or 403 (wrong key) when keys are configured.
        """
        if not self.enabled:
            return f"addr:{client_host}"
        key = self.credential(headers, query)
        if key is None:
            raise ApiError(
                401, "InvalidCredentials",
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not self.matches(key):
            raise ApiError(403, "InvalidAPIKey", "the API key is not valid")
        return "key:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
