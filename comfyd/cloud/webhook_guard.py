"""Which webhook URLs comfyd may call: public addresses only, unless a host is allowed.

Clients choose webhook URLs, and comfyd runs inside networks clients cannot reach: on EC2,
http://169.254.169.254/ hands out the instance's credentials, and loopback or VPC addresses reach
admin ports and internal services. So a webhook host must resolve to public addresses only
(every address it resolves to), unless `COMFYD_WEBHOOK_ALLOWED_HOSTS` names it (a host name, a
`*.suffix` pattern, an IP address or a CIDR network) or `COMFYD_WEBHOOK_ALLOW_PRIVATE` is set.

The URL is checked when the job is submitted (HTTP 422 on refusal) and again before every
delivery attempt, so a name that later resolves to a private address (DNS rebinding) is refused
then. A window remains between that check and the client's own resolution; closing it fully
would mean pinning the connection to the checked address, which breaks TLS host checks in the
HTTP client used, so the short window is accepted.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class ForbiddenWebhook(ValueError):
    """A webhook URL comfyd will not call; the message says why and how to allow it."""


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (IPv4 and IPv6)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def address_class(address: IPAddress) -> str | None:
    """Why an address is not public ("loopback", "link-local", ...), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
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
        """Raise ForbiddenWebhook unless comfyd may POST to `url`."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ForbiddenWebhook("webhook must be an absolute http(s) URL")
        host = parts.hostname.rstrip(".").lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ForbiddenWebhook(f"webhook URL has an invalid port: {exc}") from None
        if self.allow_private or self._host_allowed(host):
            return
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in self.resolver(host, port)]
            except OSError as exc:
                raise ForbiddenWebhook(f"webhook host {host!r} does not resolve: {exc}") from None
        if not addresses:
            raise ForbiddenWebhook(f"webhook host {host!r} does not resolve to any address")
        for address in addresses:
            if self._address_allowed(address):
                continue
            kind = address_class(address)
            if kind is not None:
                via = "" if str(address) == host else f"resolves to {address}, "
                raise ForbiddenWebhook(
                    f"webhook host {host!r} {via}a {kind} address; comfyd calls public addresses only "
                    f"(allow it with COMFYD_WEBHOOK_ALLOWED_HOSTS)"
                )

    def _host_allowed(self, host: str) -> bool:
        for entry in _names(self.allowed_hosts):
            if entry.startswith("*.") and (host.endswith(entry[1:]) or host == entry[2:]):
                return True
            if host == entry:
                return True
        return False

    def _address_allowed(self, address: IPAddress) -> bool:
        for entry in self.allowed_hosts:
            try:
                network = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                continue
            mapped = getattr(address, "ipv4_mapped", None)
            if address in network or (mapped is not None and mapped in network):
                return True
        return False


def _names(entries: Iterable[str]) -> Iterable[str]:
    for entry in entries:
        text = entry.strip().rstrip(".").lower()
        if text:
            yield text
