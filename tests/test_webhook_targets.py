"""The SSRF policy for IPv6 forms that carry an IPv4 address: the IPv4 inside is judged by the
IPv4 policy (NAT64, 6to4, Teredo, IPv4-mapped, IPv4-compatible), and the local-use NAT64 prefix
is refused outright."""

from __future__ import annotations

import ipaddress

import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.connections import connect
from msgq.errors import InvalidJobError
from msgq.settings import Settings
from msgq.webhooks.targets import refusal
from tests.conftest import zcard_parts
from tests.test_crash import BODY


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address (NAT64 of 169.254.169.254)"),
        ("64:ff9b::a00:1", "private (NAT64 of 10.0.0.1)"),
        ("64:ff9b::7f00:1", "loopback (NAT64 of 127.0.0.1)"),
        ("64:ff9b:1::a9fe:a9fe", "local-use NAT64 (64:ff9b:1::/48, not globally routable)"),
        ("64:ff9b:1::808:808", "local-use NAT64 (64:ff9b:1::/48, not globally routable)"),
        ("2002:a9fe:a9fe::1", "a cloud metadata address (6to4 of 169.254.169.254)"),
        ("2002:c0a8:1::1", "private (6to4 of 192.168.0.1)"),
        # Teredo's client address is stored inverted: 5601:5601 is 169.254.169.254.
        (
            "2001:0:4136:e378:8000:63bf:5601:5601",
            "a cloud metadata address (Teredo client of 169.254.169.254)",
        ),
        ("2001:0:a00:1:8000:63bf:f7f7:f7f7", "private (Teredo server of 10.0.0.1)"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("::ffff:10.1.2.3", "private"),
        ("::a9fe:a9fe", "a cloud metadata address (IPv4-compatible of 169.254.169.254)"),
        ("::7f00:1", "loopback (IPv4-compatible of 127.0.0.1)"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("64:ff9b::808:808", None),  # NAT64 of a public address is a public destination
        ("2002:808:808::1", None),
        ("::808:808", None),
    ],
)
def test_ipv6_forms_carrying_ipv4_are_judged_by_the_ipv4_inside(
    address: str, why: str | None
) -> None:
    """Each form that tunnels or translates to IPv4 is refused when its IPv4 would be."""
    assert refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    "url",
    [
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[2001:0:4136:e378:8000:63bf:5601:5601]/",
        "http://[::a9fe:a9fe]/",
    ],
)
async def test_metadata_behind_ipv6_is_refused_at_submission(
    settings: Settings, redis: Redis, url: str
) -> None:
    """The metadata service reached through NAT64, 6to4, Teredo or an IPv4-compatible address:
    InvalidJobError naming callback_url, nothing enqueued."""
    async with Client(connect(settings.redis_url), settings) as client:
        with pytest.raises(InvalidJobError, match=r"callback_url: .*cloud metadata"):
            await client.submit(BODY, callback_url=url)
    assert await zcard_parts(redis, lambda k: k.index_key) == 0
