"""`msgq dev`: the whole stack on a laptop, and the one banner that says where it all is."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import click

from msgq.cli.common import DEV_ENV_PATH
from msgq.dev.stack import (
    API_KEY_FILE,
    DEV_ENV,
    WEBHOOK_SECRET_FILE,
    DevPorts,
    PortInUseError,
    Stack,
)
from msgq.key_check import api_key_problem
from msgq.settings import Settings
from msgq.webhooks.signing import derived_secret

DEV_LOG = "dev.log"  # under the data dir: the workers', API's and simulator's log lines


@click.command()
@click.option("--data-dir", default=".msgq", show_default=True, type=click.Path(path_type=Path))
@click.option("--workers", default=1, show_default=True)
@click.option("--redis-port", default=6379, show_default=True, help="Embedded Redis (0: any).")
@click.option("--api-port", default=8000, show_default=True, help="HTTP API and /ui (0: any).")
@click.option("--sim-port", default=8787, show_default=True, help="Simulator (0: any).")
def dev(data_dir: Path, workers: int, redis_port: int, api_port: int, sim_port: int) -> None:
    """Embedded Redis + simulator (unless ANTHROPIC_API_KEY is set) + worker + HTTP API.

    Takes its fixed ports or fails saying which is taken; writes DATA_DIR/dev.env (and
    ./.msgq/dev.env), which every other `msgq` command run from this directory reads when
    REDIS_URL is unset. Keeps its API key and webhook secret in DATA_DIR across restarts;
    its services log to DATA_DIR/dev.log. Ctrl-C stops the API, then the workers (in-flight
    jobs go back to queued), then the simulator, then Redis.
    """
    settings = Settings()
    use_simulator = settings.anthropic_api_key is None
    problem = None if use_simulator else asyncio.run(api_key_problem(settings))
    external = os.environ.get("REDIS_URL") or os.environ.get("MSGQ_REDIS_URL")
    here = DEV_ENV_PATH.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with (data_dir / DEV_LOG).open("ab") as log:
            stack = Stack(
                data_dir.resolve(),
                use_simulator=use_simulator,
                workers=workers,
                redis_url=external,
                ports=DevPorts(redis=redis_port, api=api_port, simulator=sim_port),
                log=log,
                also_announce=None if here == data_dir.resolve() / DEV_ENV else here,
            )
            with stack:
                upstream = upstream_line(stack, settings, problem)
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                # Python leaves SIGINT ignored when it started ignored (a shell's background
                # job, `nohup`): Ctrl-C or `kill -INT` then did nothing. It stops here always.
                signal.signal(signal.SIGINT, signal.default_int_handler)
                # From the banner on, Ctrl-C means stop: one pressed (or sent) the moment the
                # banner appears ended `msgq dev` with 130 instead of stopping in order.
                with contextlib.suppress(KeyboardInterrupt):
                    banner = dev_banner(stack, data_dir, external=bool(external), upstream=upstream)
                    click.echo(banner)
                    signal.pause()
                click.echo("msgq dev: stopping the API, the workers, the simulator, then Redis")
    except PortInUseError as exc:
        raise click.ClickException(str(exc)) from None
    except RuntimeError as exc:  # a service exited at start: its reason is in the log
        log_path = data_dir / DEV_LOG
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
        msg = f"{exc}; the end of {log_path}:\n" + "\n".join(tail)
        raise click.ClickException(msg) from None


def dev_banner(stack: Stack, data_dir: Path, *, external: bool, upstream: str) -> str:
    """The one block `msgq dev` prints: where everything is, the keys, which API answers, and
    how to stop."""
    where = "your Redis" if external else f"embedded, data in {data_dir}/redis"
    if stack.api_key is not None:
        key = stack.api_key
        kept = f"{key}, kept in {data_dir}/{API_KEY_FILE}; MSGQ_API_KEYS=dev:KEY pins your own"
        sign_in = f"sign in with {key}" + (
            ": an admin key, every tenant's jobs" if stack.admin_key else ""
        )
    else:
        kept = "a key of MSGQ_API_KEYS"
        sign_in = "sign in with a key of MSGQ_ADMIN_KEYS (every job) or of MSGQ_API_KEYS"
    lines = [
        "msgq dev is running",
        f"  Redis      REDIS_URL={stack.redis_url}  ({where})",
        f"  HTTP API   {stack.api_url}  (x-api-key: {kept})",
        f"  dashboard  {stack.api_url}/ui  ({sign_in})",
        f"  settings   {stack.dev_env_path}  (read by msgq commands run here)",
        f"  logs       {data_dir}/{DEV_LOG}  (the workers', the API's and the simulator's)",
    ]
    if stack.webhook_secret_path is not None:
        lines += webhook_lines(stack, f"{data_dir}/{WEBHOOK_SECRET_FILE}")
    lines.append(upstream)
    lines.append("Ctrl-C stops everything (API, workers with their grace, simulator, Redis).")
    return "\n".join(lines)


def webhook_lines(stack: Stack, path: str) -> list[str]:
    """How a receiver verifies the stack's webhooks: each tenant signs with its own key derived
    from the provisioned secret, so the key above (tenant dev) needs that one, not the file."""
    secret = stack.env["MSGQ_WEBHOOK_SECRET"]
    if stack.api_key is not None:
        tenant = f"jobs sent with the key above (tenant dev): {derived_secret(secret, 'dev')}"
    else:
        tenant = f"a tenant's: MSGQ_WEBHOOK_SECRET=$(cat {path}) msgq webhook-secret TENANT"
    return [
        f"  webhooks   signed with the secret in {path} (MSGQ_WEBHOOK_SECRET) for jobs without "
        f"a tenant; {tenant}",
        "             verify: standardwebhooks' Webhook(secret).verify(body, headers); "
        "a loopback receiver needs MSGQ_WEBHOOK_ALLOW=127.0.0.1 here and where jobs are sent",
    ]


def upstream_line(stack: Stack, settings: Settings, problem: str | None) -> str:
    """Which API answers the jobs, said loudly: a key in the shell switches from the free
    simulator to the paid API, and a wrong one fails every job."""
    if stack.simulator_url:
        return (
            f"  upstream   the simulator at {stack.simulator_url} (ANTHROPIC_API_KEY is not set: "
            "the simulator answers instead of the Anthropic API; nothing is billed)"
        )
    line = (
        f"  upstream   THE ANTHROPIC API at {settings.anthropic_base_url} with ANTHROPIC_API_KEY "
        "from your environment: every job is billed (unset it to use the simulator)"
    )
    if problem is not None:
        line += f"\n  WARNING    {problem}: every job will fail; fix or unset ANTHROPIC_API_KEY"
    return line
