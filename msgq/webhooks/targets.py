"""Where a webhook may go: http(s) only, and, after DNS resolution, never to a loopback, private,
link-local, carrier-grade NAT, multicast, unspecified, reserved or cloud-metadata address unless
`MSGQ_WEBHOOK_ALLOW` lists it (CIDRs and/or hostnames, comma-separated).

An IPv6 address that carries an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo)
reaches that IPv4 host through a translator or tunnel, so the IPv4 inside is judged by the IPv4
policy; the local-use NAT64 prefix (64:ff9b:1::/48, RFC 8215) is refused outright.

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
# IPv6 forms that carry an IPv4 address in their low 32 bits. Python 3.11 calls all three global.
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a site's own translators
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291); :: and ::1 excepted
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


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """(form, IPv4 address) for each IPv4 address `address` carries, so a translator or tunnel
    cannot carry a request to a host the IPv4 policy refuses."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address in NAT64:
        found.append(("NAT64", low32))
    if address in IPV4_COMPATIBLE and int(address) > 1:
        found.append(("IPv4-compatible", low32))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    return found


def _ipv6_refusal(address: ipaddress.IPv6Address) -> str | None:
    if address in NAT64_LOCAL:
        return "local-use NAT64 (64:ff9b:1::/48, not globally routable)"
    for form, ipv4 in embedded_ipv4(address):
        why = refusal(ipv4)
        if why is not None:
            return f"{why} ({form} of {ipv4})"
    return None


def refusal(address: IPAddress) -> str | None:
    """Why an address is not a public destination, or None when it is."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # the same host as the IPv4 address, to a socket
            return refusal(address.ipv4_mapped)
        embedded = _ipv6_refusal(address)
        if embedded is not None:
            return embedded
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
    url: str | None,
    *,
    tenant: str | None,
    settings: Settings,
    tenants: Tenants | None = None,
    fleet_signs: bool | None = None,
) -> str | None:
    """A job's callback URL: its own, else its tenant's default; checked as at delivery
    (InvalidJobError naming callback_url when refused). `fleet_signs` False (the workers
    published that they have no MSGQ_WEBHOOK_SECRET) refuses a callback nothing could sign,
    which was otherwise accepted and never delivered, with only the record's
    `webhook.last_error` saying why; None (not known) lets the worker find out."""
    tenants = tenants if tenants is not None else load_tenants(settings.tenants_file)
    chosen = url or tenants.get(tenant).callback_url
    own_secret = tenant is not None and tenants.get(tenant).webhook_secret is not None
    if chosen is not None and fleet_signs is False and not own_secret:
        why = (
            "the workers have no MSGQ_WEBHOOK_SECRET to sign webhooks with: set it on the "
            "workers (or the tenant's webhook_secret in MSGQ_TENANTS_FILE)"
        )
        msg = f"callback_url: {why}"
        raise InvalidJobError(msg, [{"loc": "callback_url", "msg": why, "type": "value_error"}])
    await check_callback(chosen, settings.webhook_allow)
    return chosen
