"""`msgq redis-cli`: the bundled valkey-cli against msgq's Redis (issue 34, item 11: the
raw-Redis guide used `redis-cli`, which the set-up does not install)."""

from __future__ import annotations

from msgq.cli.redis_cli import cli_arguments
from msgq.settings import Settings
from tests.test_cli import msgq


def test_redis_cli_reaches_the_configured_redis(settings: Settings) -> None:
    """`msgq redis-cli SET` / `GET` run against REDIS_URL with nothing else installed."""
    assert msgq(settings, "redis-cli", "SET", "greeting", "hello").stdout.strip() == "OK"
    got = msgq(settings, "redis-cli", "GET", "greeting")
    assert got.returncode == 0 and got.stdout.strip() == "hello"


def test_the_password_goes_in_the_environment_not_the_command_line() -> None:
    """A password in the URL reaches valkey-cli as REDISCLI_AUTH, never as an argument (which
    `ps` shows to every user of the machine)."""
    args, env = cli_arguments("rediss://ops:s3cret@redis.example:6380/2")
    assert args == ["-h", "redis.example", "-p", "6380", "--tls", "-n", "2", "--user", "ops"]
    assert env == {"REDISCLI_AUTH": "s3cret"}


def test_on_a_cluster_it_follows_redirects_from_the_first_node() -> None:
    args, env = cli_arguments("rediss+cluster://ops:s3cret@a.example:7000,b.example:7001")
    assert args == ["-c", "-h", "a.example", "-p", "7000", "--tls", "--user", "ops"]
    assert env == {"REDISCLI_AUTH": "s3cret"}
