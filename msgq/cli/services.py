"""The long-running `msgq` verbs: worker, api, simulator, and dev (all of them together)."""

from __future__ import annotations

import asyncio
import re
import sys

import click

from msgq.logs import configure_logging
from msgq.settings import Settings


@click.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
@click.option(
    "--check",
    is_flag=True,
    help="Health check: exit 0 if Redis answers, the API accepts ANTHROPIC_API_KEY (one free "
    "Models API call) and a worker on the queue is alive, else 1.",
)
def worker(burst: bool, check: bool) -> None:
    """Run one worker process (arq). SIGTERM stops taking jobs and lets in-flight ones finish."""
    from worker.main import build_worker

    s = Settings()
    if check:
        sys.exit(asyncio.run(_check_worker(s)))
    configure_logging(fmt=s.log_format, level=s.log_level)
    if s.anthropic_api_key is None:
        msg = "ANTHROPIC_API_KEY is not set (use `msgq dev` for the simulator)"
        raise click.UsageError(msg)
    _event_loop(s.uvloop)
    asyncio.run(_say_where_redis_is(s))
    build_worker(s, burst=burst).run()


async def _say_where_redis_is(settings: Settings, process: str = "worker") -> None:
    """One line before the process's own retries (`worker.redis_unavailable`, every second)
    when Redis does not answer: which URL, where it came from and what to check, which
    those lines cannot say. A plain URL that reaches a cluster node stops the start, and so
    does a partition count the deployment's jobs were not written with (`msgq.partitions`)."""
    from redis.exceptions import RedisError
    from structlog import get_logger

    from msgq.cli.common import redis_origin
    from msgq.cluster import is_cluster_url
    from msgq.cluster_guard import ClusterNodeError, refuse_cluster_node
    from msgq.connections import connect, partition_clients
    from msgq.partitions import PartitionCountError, check_partitions

    try:
        async with connect(settings, socket_connect_timeout=3, failover_wait_s=3) as redis:
            await redis.ping()
            if not is_cluster_url(settings.redis_url):
                await refuse_cluster_node(redis)
            await check_partitions(partition_clients(settings, redis), settings.keys)
    except (ClusterNodeError, PartitionCountError) as exc:
        raise click.ClickException(str(exc)) from None
    except (RedisError, OSError) as exc:
        get_logger(f"msgq.{process}").error(
            f"{process}.redis_unreachable", error=type(exc).__name__, redis=redis_origin(settings)
        )


def _event_loop(choice: str) -> None:
    """uvloop when asked for (`true`) or, with `auto`, when installed (`msgq[speed]`)."""
    if choice == "false":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "true":
            msg = "MSGQ_UVLOOP=true but uvloop is not installed: pip install 'msgq[speed]'"
            raise click.UsageError(msg) from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _check_worker(settings: Settings) -> int:
    """arq's own `--check`: every live worker refreshes the queue's health-check key (TTL about
    11 s), so its presence says a worker is taking jobs, and reading it says Redis answers."""
    from redis.exceptions import RedisError

    from msgq.connections import connect

    try:
        async with connect(settings, socket_connect_timeout=3, failover_wait_s=3) as redis:
            alive = bool(await redis.exists(settings.keys.health_check_key))
    except (RedisError, OSError) as exc:
        from msgq.cli.common import redis_origin

        click.echo(
            f"unhealthy: cannot reach Redis ({type(exc).__name__}); it used "
            f"{redis_origin(settings)}",
            err=True,
        )
        return 1
    from msgq.key_check import check_api_key

    key = await check_api_key(settings)
    if key.refused:
        click.echo(f"unhealthy: {key.problem}", err=True)
        return 1
    if key.problem is not None:  # the API's bad minute is not the worker's
        click.echo(f"warning: ANTHROPIC_API_KEY not verified: {key.problem}", err=True)
    click.echo("healthy" if alive else "unhealthy: no worker health check in the last 11 s")
    return 0 if alive else 1


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8787, show_default=True, type=int)
@click.option("--seed", default=0, envvar="MSGQ_SIM_SEED", type=int, show_default=True)
@click.option("--api-key", envvar="MSGQ_SIM_API_KEY", help="Accept only this key (default: any).")
@click.option("--latency-ms", default=0.0, envvar="MSGQ_SIM_LATENCY_MS", type=float)
@click.option("--ms-per-token", default=0.0, envvar="MSGQ_SIM_MS_PER_TOKEN", type=float)
@click.option(
    "--ttft-ms",
    type=float,
    envvar="MSGQ_SIM_TTFT_MS",
    help="Median time to first token (default: --latency-ms).",
)
@click.option(
    "--tokens-per-s",
    type=float,
    envvar="MSGQ_SIM_TOKENS_PER_S",
    help="Median output pace (default: 1000 / --ms-per-token).",
)
@click.option(
    "--latency-spread",
    default=0.0,
    envvar="MSGQ_SIM_LATENCY_SPREAD",
    type=click.FloatRange(0, 2),
    show_default=True,
    help="Lognormal sigma on both, per request (seeded).",
)
@click.option(
    "--accel-fraction",
    default=0.0,
    envvar="MSGQ_SIM_ACCEL_FRACTION",
    type=click.FloatRange(0, 1),
    show_default=True,
    help="Acceleration limits: from idle, a window admits this share of --rpm/--itpm (0: off).",
)
@click.option(
    "--accel-window-s",
    default=5.0,
    envvar="MSGQ_SIM_ACCEL_WINDOW_S",
    type=click.FloatRange(min=0.1),
    show_default=True,
)
@click.option(
    "--accel-growth",
    default=2.0,
    envvar="MSGQ_SIM_ACCEL_GROWTH",
    type=click.FloatRange(min=1),
    show_default=True,
    help="How much sustained traffic may grow per window.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    envvar="MSGQ_SIM_FAULTS",
    help="STATUS=RATE, e.g. --fault 529=0.05 --fault 500=0.01",
)
@click.option("--hang-rate", default=0.0, type=float, help="Share of requests that never answer.")
@click.option("--drop-rate", default=0.0, type=float, help="Share of connections dropped.")
@click.option("--rpm", default=0, envvar="MSGQ_SIM_RPM", help="Requests/min limit (0: none).")
@click.option("--itpm", default=0, envvar="MSGQ_SIM_ITPM", help="Input tokens/min limit.")
@click.option("--otpm", default=0, envvar="MSGQ_SIM_OTPM", help="Output tokens/min limit.")
@click.option(
    "--output-tokens",
    type=int,
    envvar="MSGQ_SIM_OUTPUT_TOKENS",
    help="Replies of min(N, max_tokens) tokens.",
)
@click.option(
    "--stream-fault",
    "stream_faults",
    multiple=True,
    envvar="MSGQ_SIM_STREAM_FAULTS",
    help="KIND=RATE mid-stream, KIND error|cut|stall",
)
@click.option(
    "--batch-processing-s",
    default=2.0,
    envvar="MSGQ_SIM_BATCH_PROCESSING_S",
    show_default=True,
    help="How long a Message Batch takes to end (the API: up to 24 h).",
)
@click.option(
    "--batch-expiry-s",
    default=24 * 3600.0,
    envvar="MSGQ_SIM_BATCH_EXPIRY_S",
    help="A batch's 24 h expiry on a short clock; requests not done by then expire.",
)
@click.option(
    "--batch-errored-rate",
    default=0.0,
    envvar="MSGQ_SIM_BATCH_ERRORED_RATE",
    help="Share of batch requests that error.",
)
@click.option(
    "--batch-error-type",
    default="overloaded_error",
    envvar="MSGQ_SIM_BATCH_ERROR_TYPE",
    help="What those errors are.",
)
@click.option(
    "--batch-expired-rate",
    default=0.0,
    envvar="MSGQ_SIM_BATCH_EXPIRED_RATE",
    help="Share of batch requests that expire.",
)
@click.option(
    "--batch-fault",
    "batch_faults",
    multiple=True,
    envvar="MSGQ_SIM_BATCH_FAULTS",
    help="STATUS=RATE on the Batches endpoints, e.g. --batch-fault 429=0.1",
)
def simulator(
    host: str,
    port: int,
    seed: int,
    api_key: str | None,
    latency_ms: float,
    ms_per_token: float,
    ttft_ms: float | None,
    tokens_per_s: float | None,
    latency_spread: float,
    accel_fraction: float,
    accel_window_s: float,
    accel_growth: float,
    faults: tuple[str, ...],
    hang_rate: float,
    drop_rate: float,
    rpm: int,
    itpm: int,
    otpm: int,
    output_tokens: int | None,
    stream_faults: tuple[str, ...],
    batch_processing_s: float,
    batch_expiry_s: float,
    batch_errored_rate: float,
    batch_error_type: str,
    batch_expired_rate: float,
    batch_faults: tuple[str, ...],
) -> None:
    """Run the local Messages API stand-in (no real API is called)."""
    from aiohttp import web

    from msgq.dev.simulator.accel import AccelConfig
    from msgq.dev.simulator.app import build_app
    from msgq.dev.simulator.batch_engine import BatchConfig
    from msgq.dev.simulator.state import SimConfig, parse_stream_faults

    rates = _status_rates(faults, "--fault")
    config = SimConfig(
        seed=seed,
        api_key=api_key,
        latency_ms=latency_ms,
        ms_per_output_token=ms_per_token,
        ttft_ms=ttft_ms,
        tokens_per_s=tokens_per_s,
        latency_spread=latency_spread,
        accel=AccelConfig(fraction=accel_fraction, window_s=accel_window_s, growth=accel_growth),
        fault_rates=rates,
        hang_rate=hang_rate,
        drop_rate=drop_rate,
        rpm=rpm,
        itpm=itpm,
        otpm=otpm,
        output_tokens=output_tokens,
        stream_faults=parse_stream_faults(stream_faults),
    )
    batch_config = BatchConfig(
        processing_s=batch_processing_s,
        expiry_s=batch_expiry_s,
        errored_rate=batch_errored_rate,
        error_type=batch_error_type,
        expired_rate=batch_expired_rate,
        fault_rates=_status_rates(batch_faults, "--batch-fault"),
    )
    click.echo(
        f"msgq simulator on http://{host}:{port} (a stand-in, not the Anthropic API)", err=True
    )
    # Held responses (hangs) must not delay shutdown: a real server would drop them too.
    web.run_app(
        build_app(config, batch_config),
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=1.0,
    )


def _status_rates(items: tuple[str, ...], hint: str) -> dict[int, float]:
    """`STATUS=RATE` items, e.g. ("529=0.05", "500=0.01")."""
    rates: dict[int, float] = {}
    for item in items:
        match = re.fullmatch(r"(\d{3})=([0-9.]+)", item.strip())
        if not match:
            msg = f"{item!r} is not STATUS=RATE"
            raise click.BadParameter(msg, param_hint=hint)
        rates[int(match[1])] = float(match[2])
    return rates


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def api(host: str, port: int) -> None:
    """Run the HTTP API (jobs, Message Batches, /healthz, /metrics)."""
    import uvicorn

    from msgq.http.app import create_app
    from msgq.http.auth import KeyConfigError, load_keys

    s = Settings()
    configure_logging(fmt=s.log_format, level=s.log_level)
    try:
        keys = load_keys(s)
    except KeyConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not keys:
        msg = "no API keys: set MSGQ_API_KEYS=tenant:key,... or MSGQ_API_KEYS_FILE"
        raise click.UsageError(msg)
    asyncio.run(_say_where_redis_is(s, "api"))
    uvicorn.run(create_app(s), host=host, port=port, log_level="warning", access_log=False)
