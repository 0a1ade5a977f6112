"""Redis Cluster beside one node, in the same run (issue 32): the same jobs, the same simulator,
one worker, once on one Redis node and once on a 3-master cluster from the same binary.

For each: jobs/s with 512 calls in flight at 3 s a call (the worker's CPU per job beside it),
the Redis CPU per job (the busiest master's on the cluster), its round trips (replies and
pub/sub messages the nodes wrote over the drain: the worker's, its dispatcher's and the waiting
client's), the same over the whole path (issue 33: a producer submitting 64 at a time, the
run, each result read by ID), how the job keys spread over the masters, an idle worker's
Redis commands and round trips per second, and Redis memory per queued job and per stored
record. Four runs, each three times interleaved (medians): one node;
one node with 16 partitions (docs/design/partitions.md: what the layout costs where it gains
nothing); the cluster with the deployment in one hash slot (the default: one master does it
all); and the cluster with 16 partitions, the deployment's jobs spread over the masters.

`python -m bench.cluster` runs it alone (about 9 minutes); `make bench` runs it with the rest.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench import lua_steps
from bench.harness import process_cpu_s, redis_server, simulator, text_request, workers
from bench.real_load import LATENCY_MS, TOP_TIER, _drain
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.redis_cluster import RedisCluster
from msgq.settings import Settings

Table = Callable[[str, list[str], list[list[Any]]], None]
IDLE_S = 10.0
PARTITIONS = 16  # the partitioned runs' count (on 3 masters: 5, 6 and 5 partitions each)


class Nodes:
    """The masters that hold msgq's keys (one node, or every master of the cluster)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self._nodes: list[redis_sync.Redis] = []

    def info(self, field: str) -> list[float]:
        """One INFO per node, on a connection kept open (so the count of round trips a node
        served moves by exactly one per call: the INFO itself)."""
        if not self._nodes:
            self._nodes = [redis_sync.Redis(port=port) for port in self.ports]
        return [float(node.info().get(field, 0)) for node in self._nodes]

    def cpu_s(self) -> list[float]:
        with_sys = zip(self.info("used_cpu_sys"), self.info("used_cpu_user"), strict=True)
        return [sys_s + user_s for sys_s, user_s in with_sys]

    def keys(self) -> list[int]:
        counts = []
        for port in self.ports:
            with redis_sync.Redis(port=port) as node:
                counts.append(int(node.dbsize()))
        return counts


@contextmanager
def one_node(tmp: Path, name: str = "node") -> Iterator[tuple[str, Nodes]]:
    with redis_server(tmp / name) as server:  # a directory a run: nothing of another loaded
        yield server.url, Nodes([server.port])


@contextmanager
def three_masters(tmp: Path, name: str = "cluster") -> Iterator[tuple[str, Nodes]]:
    with RedisCluster(tmp / name, appendonly=True) as cluster:  # AOF, as the one node has
        yield cluster.url, Nodes(cluster.master_ports)


@contextmanager
def partitioned(count: int) -> Iterator[None]:
    """MSGQ_PARTITIONS for this measure's worker and its producer (both read the environment)."""
    before = os.environ.get("MSGQ_PARTITIONS")
    os.environ["MSGQ_PARTITIONS"] = str(count)
    try:
        yield
    finally:
        if before is None:
            del os.environ["MSGQ_PARTITIONS"]
        else:
            os.environ["MSGQ_PARTITIONS"] = before


SUBMITTING = 64  # the producer's submissions at once (a service's pool, warm before the clock)


async def _each(call: Callable[[Any], Awaitable[Any]], items: list[Any]) -> list[Any]:
    """`call` on every item, SUBMITTING at a time, as a producer service does."""
    done: list[Any] = []
    for start in range(0, len(items), SUBMITTING):
        done += await asyncio.gather(*(call(x) for x in items[start : start + SUBMITTING]))
    return done


async def measure(url: str, nodes: Nodes, sim: str, n: int, concurrency: int) -> dict[str, Any]:
    """One worker's drain of `n` jobs, and the whole path around it: a producer submitting
    them (to a paused fleet, so the clock measures the drain) and reading each result by ID."""
    requests = [
        {**text_request(60), "messages": [{"role": "user", "content": f"call {i}"}]}
        for i in range(n)
    ]
    env = {"MSGQ_MAX_JOBS": str(concurrency), "MSGQ_UVLOOP": "true"}
    env["MSGQ_STREAM_MIN_MAX_TOKENS"] = str(10**9)
    settings = Settings(_env_file=None, redis_url=url)
    with workers(1, url, sim, **env) as procs:
        async with connect(settings.redis_url) as redis:
            client = Client(redis, settings)
            warm = [job.id for job in await _each(client.submit, requests[:SUBMITTING])]
            await _drain(url, warm)  # warm: limits learned, the producer's pool open
            await _each(client.get, warm)
            await asyncio.sleep(2)
            commands0 = sum(nodes.info("total_commands_processed"))
            replies0 = sum(nodes.info("total_writes_processed"))
            await asyncio.sleep(IDLE_S)
            idle = (sum(nodes.info("total_commands_processed")) - commands0) / IDLE_S
            # A round trip is one reply written (a pipeline's replies go out together); this
            # measure's own INFO calls are two per node, taken out.
            idle_trips = (
                sum(nodes.info("total_writes_processed")) - replies0 - 2 * len(nodes.ports)
            ) / IDLE_S
            memory0 = sum(nodes.info("used_memory"))
            await redis.set(settings.keys.pause_key, "bench: filling the queue")
            path0, path_replies0 = nodes.cpu_s(), sum(nodes.info("total_writes_processed"))
            ids = [job.id for job in await _each(client.submit, requests)]
            queued = (sum(nodes.info("used_memory")) - memory0) / n
            keys_queued = nodes.keys()
            cpu0, redis0 = process_cpu_s(procs[0].pid), nodes.cpu_s()
            replies0 = sum(nodes.info("total_writes_processed"))
            elapsed = await _drain(url, ids)
            trips = (sum(nodes.info("total_writes_processed")) - replies0) / n
            cpu_ms = (process_cpu_s(procs[0].pid) - cpu0) * 1000 / n
            redis1 = nodes.cpu_s()
            stored = (sum(nodes.info("used_memory")) - memory0) / n
            await _each(client.get, ids)
            path_trips = (sum(nodes.info("total_writes_processed")) - path_replies0) / n
            redis2 = nodes.cpu_s()

    def per_job_ms(before: list[float], after: list[float]) -> list[float]:
        return [(b - a) * 1000 / n for a, b in zip(before, after, strict=True)]

    return {
        "rate": n / elapsed,
        "worker_ms": cpu_ms,
        "redis_ms": per_job_ms(redis0, redis1),
        "path_ms": per_job_ms(path0, redis2),
        "path_trips": path_trips,
        "idle": idle,
        "idle_trips": idle_trips,
        "trips": trips,
        "queued": queued,
        "stored": stored,
        "spread": keys_queued,
    }


def _per_master(cpu_ms: list[float]) -> str:
    return " / ".join(f"{ms:.3f}" for ms in cpu_ms)


def _spread(counts: list[int]) -> str:
    total = sum(counts) or 1
    return " / ".join(f"{100 * c / total:.0f}%" for c in counts)


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (per master for the per-master lists: a round's
    cluster gives each master the same slots)."""
    out: dict[str, Any] = {"spread": rounds[0]["spread"], "rounds": rounds}
    for field, first in rounds[0].items():
        if field == "spread":
            continue
        if isinstance(first, list):
            out[field] = [statistics.median(r[field][i] for r in rounds) for i in range(len(first))]
        else:
            out[field] = statistics.median(r[field] for r in rounds)
    return out


def _ratios(run: dict[str, Any], node: dict[str, Any], field: str) -> str:
    """The busiest master's figure over one node's, round by round: the median, then each."""
    each = [max(r[field]) / n[field][0] for r, n in zip(run["rounds"], node["rounds"], strict=True)]
    return f"{statistics.median(each):.2f} ({' / '.join(f'{x:.2f}' for x in each)})"


async def report(
    tmp: Path, table: Table, n: int = 3000, concurrency: int = 512, rounds: int = 3
) -> None:
    """`rounds` interleaved rounds of the four runs, medians: Redis's CPU per job swings by a
    fifth from one drain to the next on 2 shared cores, more than the differences measured."""
    runs: dict[str, list[dict[str, Any]]] = {"node": [], "parts": [], "cluster": [], "spread": []}
    with simulator(*TOP_TIER, "--latency-ms", str(LATENCY_MS)) as sim:
        for r in range(rounds):
            with one_node(tmp, f"node-{r}") as (url, nodes):
                runs["node"].append(await measure(url, nodes, sim, n, concurrency))
            with one_node(tmp, f"partitioned-{r}") as (url, nodes), partitioned(PARTITIONS):
                runs["parts"].append(await measure(url, nodes, sim, n, concurrency))
            with three_masters(tmp, f"cluster-{r}") as (url, nodes):
                runs["cluster"].append(await measure(url, nodes, sim, n, concurrency))
            with three_masters(tmp, f"spread-{r}") as (url, nodes), partitioned(PARTITIONS):
                runs["spread"].append(await measure(url, nodes, sim, n, concurrency))
    node, parts, cluster, spread = (_median_of(runs[k]) for k in runs)
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    busiest = max(cluster["redis_ms"])
    busiest_spread = max(spread["redis_ms"])
    table(
        f"Redis Cluster beside one node: one worker, {n} jobs, {concurrency} in flight, "
        f"{LATENCY_MS / 1000:.0f} s a call; medians of {rounds} interleaved rounds, busiest ÷ "
        f"one node with each round's (load average after: {load})",
        [
            "Redis",
            "jobs/s",
            "÷ one node",
            "worker CPU ms/job",
            "Redis round trips/job",
            "Redis CPU ms/job (busiest)",
            "busiest ÷ one node",
            "job keys per master",
        ],
        [
            [
                "one node",
                round(node["rate"], 1),
                "1.00",
                f"{node['worker_ms']:.2f}",
                f"{node['trips']:.1f}",
                f"{node['redis_ms'][0]:.3f}",
                "1.00",
                "100%",
            ],
            [
                f"one node, {PARTITIONS} partitions",
                round(parts["rate"], 1),
                f"{parts['rate'] / node['rate']:.2f}",
                f"{parts['worker_ms']:.2f}",
                f"{parts['trips']:.1f}",
                f"{parts['redis_ms'][0]:.3f}",
                _ratios(parts, node, "redis_ms"),
                "100%",
            ],
            [
                "3-master cluster",
                round(cluster["rate"], 1),
                f"{cluster['rate'] / node['rate']:.2f}",
                f"{cluster['worker_ms']:.2f}",
                f"{cluster['trips']:.1f}",
                f"{busiest:.3f}",
                _ratios(cluster, node, "redis_ms"),
                _spread(cluster["spread"]),
            ],
            [
                f"3-master cluster, {PARTITIONS} partitions",
                round(spread["rate"], 1),
                f"{spread['rate'] / node['rate']:.2f}",
                f"{spread['worker_ms']:.2f}",
                f"{spread['trips']:.1f}",
                f"{busiest_spread:.3f} ({_per_master(spread['redis_ms'])})",
                _ratios(spread, node, "redis_ms"),
                _spread(spread["spread"]),
            ],
        ],
    )
    named = (
        ("one node", node),
        (f"one node, {PARTITIONS} partitions", parts),
        ("3-master cluster", cluster),
        (f"3-master cluster, {PARTITIONS} partitions", spread),
    )
    table(
        f"The whole path in Redis: {SUBMITTING} submitting at once, the worker's run, each "
        "result read by ID (same runs; issue 33's goal: at most 150 µs and 3 round trips a job)",
        [
            "Redis",
            "Redis CPU µs/job (busiest master)",
            "busiest ÷ one node",
            "each master",
            "round trips/job (all masters)",
        ],
        [
            [
                name,
                f"{max(r['path_ms']) * 1000:.0f}",
                _ratios(r, node, "path_ms"),
                " / ".join(f"{ms * 1000:.0f}" for ms in r["path_ms"]),
                f"{r['path_trips']:.1f}",
            ]
            for name, r in named
        ],
    )
    table(
        "Idle worker and memory, one node beside the cluster (same run)",
        [
            "Redis",
            "idle worker: Redis commands/s",
            "round trips/s",
            "bytes per queued job",
            "bytes per record",
        ],
        [
            [
                name,
                round(r["idle"], 1),
                round(r["idle_trips"], 1),
                round(r["queued"]),
                round(r["stored"]),
            ]
            for name, r in named
        ],
    )
    admit_us, adjust_us = lua_steps.measure()
    table(
        "The fleet-wide slot's Lua steps, timed by Redis (SLOWLOG, median of 60 calls): what "
        "bounds the busiest master's share",
        ["step", "µs a call", "µs a job"],
        [
            [
                f"admission, a run of {lua_steps.RUN}",
                round(admit_us),
                f"{admit_us / lua_steps.RUN:.1f}",
            ],
            [
                f"bucket corrections, {lua_steps.ENDINGS} endings",
                round(adjust_us),
                f"{adjust_us / lua_steps.ENDINGS:.1f}",
            ],
        ],
    )


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    print(f"\n{title}\n" + " | ".join(columns))
    for row in rows:
        print(" | ".join(str(c) for c in row))


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    started = time.monotonic()
    asyncio.run(report(Path(tempfile.mkdtemp(prefix="msgq-cluster-")), _print_table, count))
    print(f"\n({time.monotonic() - started:.0f} s)")
