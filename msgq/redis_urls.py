"""The head of a URL that names several Redis hosts (`redis+sentinel://`, `redis+cluster://`):
`[[user]:password@]host[:port][,host[:port]...][/path]`, parsed once for both schemes."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class HostsUrl:
    scheme: str  # without `://`
    hosts: tuple[tuple[str, int], ...]
    path: str  # after the first `/`, query dropped
    username: str | None
    password: str | None


def parse_hosts_url(url: str, *, default_port: int, kind: str) -> HostsUrl:
    """ValueError naming a bad address (`kind`: what the hosts are, for the message)."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.split("?", 1)[0].partition("/")
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    return HostsUrl(
        scheme=scheme,
        hosts=tuple(_host_port(item, default_port, kind) for item in hosts.split(",") if item),
        path=path,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def _host_port(item: str, default_port: int, kind: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:6379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host or (port and not port.isdigit()):
        msg = f"bad {kind} address {item!r}: host or host:port"
        raise ValueError(msg)
    return host, int(port or default_port)
