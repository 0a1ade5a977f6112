"""Where a webhook may go: http(s) only, and, after DNS resolution, never to a loopback, private,
link-local, carrier-grade NAT, multicast, unspecified, reserved or cloud-metadata address unless
`MSGQ_WEBHOOK_ALLOW` lists it (CIDRs and/or hostnames, comma-separated).

Checked at submission (a clear error) and again at every delivery, whose connection goes to the
address that was checked, so a DNS answer that changes in between (rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from msgq.errors import InvalidJobError
from msgq.settings import Settings
from msgq.tenancy.tenants import Tenants, load_tenants

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Instance metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS task metadata, Alibaba).
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")  # not `is_private` in Python 3.11
RESOLVE_TIMEOUT_S = 5.0


class TargetRefusedError(ValueError):
    """A callback URL msgq will not call; the message says why."""


@dataclass(frozen=True)
class Allow:
    """The allowlist: networks by CIDR (or single address), and hostnames trusted as named."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> Allow:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in (text or "").split(","):
            item = item.strip().lower().rstrip(".")
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item)
        return cls(tuple(networks), frozenset(hosts))

    def admits(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, but speak to `host` (Host header, SNI)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def refusal(address: IPAddress) -> str | None:
    """Why an address is not a public destination, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    checks = (
        (address in METADATA, "a cloud metadata address"),
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.version == 4 and address in CGNAT, "carrier-grade NAT"),
        (address.is_private, "private"),
        (not address.is_global, "reserved (not globally routable)"),
    )
    return next((why for refused, why in checks if refused), None)


def parse(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; raises TargetRefusedError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        msg = f"not a valid URL: {exc}"
        raise TargetRefusedError(msg) from None
    if parts.scheme not in ("http", "https"):
        msg = f"scheme must be http or https, not {parts.scheme or 'none'!r}"
        raise TargetRefusedError(msg)
    if not parts.hostname:
        msg = "the URL has no host"
        raise TargetRefusedError(msg)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname.rstrip("."), port or default


async def _addresses(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
    except (OSError, TimeoutError):
        msg = f"host {host!r} does not resolve"
        raise TargetRefusedError(msg) from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


async def resolve(url: str, allow: Allow) -> Target:
    """Resolve and check `url`. Every address the name resolves to must pass (one bad answer
    refuses the target); raises TargetRefusedError naming the address and why."""
    scheme, host, port = parse(url)
    addresses = await _addresses(host, port)
    if not addresses:
        msg = f"host {host!r} does not resolve"
        raise TargetRefusedError(msg)
    if host.lower() not in allow.hosts:
        for address in addresses:
            why = refusal(address)
            if why is not None and not allow.admits(address):
                shown = host if str(address) == host else f"{host} resolves to {address}, which"
                msg = f"{shown} is {why}; allow it with MSGQ_WEBHOOK_ALLOW if it is meant"
                raise TargetRefusedError(msg)
    return Target(url, scheme, host, port, str(addresses[0]))


async def check_callback(url: str | None, allow: str | None, *, loc: str = "callback_url") -> None:
    """At submission: raises InvalidJobError naming `loc` when `url` would be refused."""
    if url is None:
        return
    try:
        await resolve(url, Allow.parse(allow))
    except TargetRefusedError as exc:
        msg = f"{loc}: {exc}"
        raise InvalidJobError(msg, [{"loc": loc, "msg": str(exc), "type": "value_error"}]) from None


async def callback_for(
    url: str | None, *, tenant: str | None, settings: Settings, tenants: Tenants | None = None
) -> str | None:
    """A job's callback URL: its own, else its tenant's default; checked as at delivery
    (InvalidJobError naming callback_url when refused)."""
    tenants = tenants if tenants is not None else load_tenants(settings.tenants_file)
    chosen = url or tenants.get(tenant).callback_url
    await check_callback(chosen, settings.webhook_allow)
    return chosen
