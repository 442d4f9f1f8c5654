"""Which webhook URLs comfyd may call: public addresses only, unless a host is allowed.

Clients choose webhook URLs, and comfyd runs inside networks clients cannot reach: on EC2,
http://169.254.169.254/ hands out the instance's credentials, and loopback or VPC addresses reach
admin ports and internal services. So a webhook host must resolve to public addresses only
(every address it resolves to), unless `COMFYD_WEBHOOK_ALLOWED_HOSTS` names it (a host name, a
`*.suffix` pattern, an IP address or a CIDR network) or `COMFYD_WEBHOOK_ALLOW_PRIVATE` is set.

The URL is checked when the job is submitted (HTTP 422 on refusal) and again before every
delivery attempt. Checking alone would leave a DNS-rebinding window (a name that resolves to a
public address for the check and to 169.254.169.254 for the connection), so the sender also
connects through `PinnedBackend`: httpcore's network layer resolves the name once, checks every
address and connects to those very addresses. TLS still verifies the URL's host name, which
httpcore passes to the handshake separately from the address it connected to.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix: the low 32 bits are IPv4
ALLOW_HINT = "allow it with COMFYD_WEBHOOK_ALLOWED_HOSTS"


class ForbiddenWebhook(ValueError):
    """A webhook URL comfyd will not call; the message says why and how to allow it."""


class UnresolvableWebhook(ForbiddenWebhook):
    """The webhook's host name did not resolve (at send time a retry may succeed)."""


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6), in getaddrinfo's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (::ffff:a.b.c.d, NAT64, 6to4), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def address_class(address: IPAddress) -> str | None:
    """Why an address is not public ("loopback", "link-local", ...), or None when it is."""
    address = embedded_ipv4(address) or address  # ::ffff:127.0.0.1 is 127.0.0.1
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return name
    if not address.is_global:  # shared address space (100.64/10) and other non-global ranges
        return "non-public"
    return None


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone (fe80::1%eth0)
    except ValueError:
        return None


def _describe(address: IPAddress) -> str:
    inner = embedded_ipv4(address)
    return str(address) if inner is None else f"{address} ({inner})"


@dataclass(frozen=True)
class WebhookPolicy:
    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    resolver: Resolver = field(default=resolve, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: object) -> WebhookPolicy:
        return cls(
            allowed_hosts=tuple(getattr(settings, "webhook_allowed_hosts", ()) or ()),
            allow_private=bool(getattr(settings, "webhook_allow_private", False)),
        )

    def check(self, url: str) -> None:
        """Raise ForbiddenWebhook unless comfyd may POST to `url` (resolves its host)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ForbiddenWebhook("webhook must be an absolute http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ForbiddenWebhook(f"webhook URL has an invalid port: {exc}") from None
        self.addresses(parts.hostname, port)

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, every one allowed; raises ForbiddenWebhook.

        An allowed host name (or allow_private) is trusted whatever it resolves to: `[host]`.
        """
        host = host.rstrip(".").lower()
        if self.allow_private or self._host_allowed(host):
            return [host]
        literal = _parse_address(host)
        if literal is not None:
            self._check_address(host, literal, literal=True)
            return [host]
        try:
            resolved = self.resolver(host, port)
        except OSError as exc:
            raise UnresolvableWebhook(f"webhook host {host!r} does not resolve: {exc}") from None
        if not resolved:
            raise UnresolvableWebhook(f"webhook host {host!r} does not resolve to any address")
        for text in resolved:
            address = _parse_address(text)
            if address is None:
                raise ForbiddenWebhook(f"webhook host {host!r} resolves to {text!r}, not an IP address")
            self._check_address(host, address, literal=False)
        return resolved

    def _check_address(self, host: str, address: IPAddress, *, literal: bool) -> None:
        if self._address_allowed(address):
            return
        kind = address_class(address)
        if kind is None:
            return
        how = "is" if literal else f"resolves to {_describe(address)},"
        raise ForbiddenWebhook(
            f"webhook host {host!r} {how} a {kind} address; comfyd calls public addresses only ({ALLOW_HINT})"
        )

    def _host_allowed(self, host: str) -> bool:
        for entry in _names(self.allowed_hosts):
            if entry.startswith("*.") and (host.endswith(entry[1:]) or host == entry[2:]):
                return True
            if host == entry:
                return True
        return False

    def _address_allowed(self, address: IPAddress) -> bool:
        inner = embedded_ipv4(address)
        for entry in self.allowed_hosts:
            try:
                network = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                continue
            if address in network or (inner is not None and inner in network):
                return True
        return False


def _names(entries: Iterable[str]) -> Iterable[str]:
    for entry in entries:
        text = entry.strip().rstrip(".").lower()
        if text:
            yield text


class PinnedBackend(httpcore.NetworkBackend):
    """httpcore's network layer, connecting only to addresses the policy allowed just now."""

    def __init__(self, policy: WebhookPolicy, inner: httpcore.NetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        # ForbiddenWebhook is no httpcore error, so httpx passes it up to the sender unchanged.
        error: Exception | None = None
        for address in self.policy.addresses(host, port):
            try:
                return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:  # next address, as
                error = exc  # socket.create_connection does
        raise error or httpcore.ConnectError(f"no address to connect to for {host!r}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> httpcore.NetworkStream:
        raise ForbiddenWebhook("webhooks are never sent over unix sockets")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def pinned_transport(policy: WebhookPolicy, **options: Any) -> httpx.HTTPTransport:
    """httpx's own transport with PinnedBackend underneath.

    httpx has no public option for httpcore's network backend, so the pool's is swapped; reading
    the attributes first makes an httpx/httpcore that moved them fail here, loudly, rather than
    send unpinned (tests/server/test_webhook_guard.py covers the pinning end to end).
    """
    transport = httpx.HTTPTransport(**options)
    pool = transport._pool
    pool._network_backend = PinnedBackend(policy, pool._network_backend)
    return transport
