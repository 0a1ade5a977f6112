"""Issue 14's figures, each against a FIFO baseline in the same run.

1. interactive queue wait under a bulk backlog saturating 600 RPM;
2. token shares of three backlogged tenants weighted 1:1:2 (and Jain's index at equal weights);
3. a 32k-max_tokens job behind 1,000 small jobs under a binding OTPM limit;
4. ten workers racing one tenant's $1 budget;
5. utilisation with the scheduler on and off (one tenant, one priority).

`python -m bench.fair_share` runs just these; `make bench` runs them too.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.harness import redis_server, sim_stats, simulator, text_request, workers
from msgq.client import Client
from msgq.jobs.store import JobStore
from msgq.keys import Keyspace
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import load_tenants
from schemas import JobRecord
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.fair_share import FairShare
from worker.dispatch.queues import Head
from worker.ratelimit import Limits, RateLimiter

Table = Callable[[str, list[str], list[list[Any]]], None]


def _settings(redis_url: str, **update: Any) -> Settings:
    return Settings(_env_file=None, redis_url=redis_url, **update)  # type: ignore[call-arg]


async def _records(redis: Redis, ids: list[str], keys: Keyspace) -> list[JobRecord]:
    """The records of `ids`, wherever the keyspace puts them (a partition of their own when
    MSGQ_PARTITIONS is set)."""
    raws = await redis.mget([keys.record_key(i) for i in ids]) if ids else []
    return [JobRecord.model_validate_json(r) for r in raws if r]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def interactive_wait(tmp: Path, scheduler: bool, seconds: int = 40) -> list[Any]:
    """5,000 bulk jobs, then one interactive job a second: their queue wait."""
    limits = json.dumps({"haiku": {"rpm": 600}})
    env = {"MSGQ_RATE_LIMITS": limits, "MSGQ_SCHEDULER": str(scheduler).lower()}
    name = "on" if scheduler else "off"
    with (
        redis_server(tmp / f"iw-{name}") as server,
        simulator("--rpm", "600", "--latency-ms", "100") as sim,
        workers(2, server.url, sim, **env),
    ):
        settings = _settings(server.url, scheduler=scheduler)
        async with (
            Client(Redis.from_url(server.url), settings) as client,
            Redis.from_url(server.url) as redis,
        ):
            for _ in range(0, 5000, 250):
                await asyncio.gather(
                    *(client.submit(text_request(), priority="bulk") for _n in range(250))
                )
            interactive = []
            for _ in range(seconds):
                job = await client.submit(text_request(), priority="interactive")
                interactive.append(job.id)
                await asyncio.sleep(1.0)  # the arrival rate under test, not a sync point
            await asyncio.sleep(3.0)  # the last arrivals' chance to start
            records = await _records(redis, interactive, settings.keys)
        stats = sim_stats(sim)
    waits = [
        (r.started_at - r.created_at).total_seconds() for r in records if r.started_at is not None
    ]
    not_started = len(records) - len(waits)
    label = "fair share (scheduler on)" if scheduler else "FIFO (scheduler off)"
    if not waits:
        return [
            label,
            len(records),
            "-",
            "-",
            f"{not_started} (none started in {seconds + 3} s)",
            stats["by_status"].get("429", 0),
        ]
    return [
        label,
        len(records),
        round(statistics.median(waits), 2),
        round(_pct(waits, 0.99), 2),
        not_started,
        stats["by_status"].get("429", 0),
    ]


class Recorder(FairShare):
    """The fair-share policy, noting whom it served, in order (the bench reads the shares)."""

    log: list[Head]

    def served(self, head: Head) -> None:
        self.log.append(head)
        super().served(head)


async def weighted_shares(
    tmp: Path, weights: dict[str, float], *, learned: bool = False
) -> dict[str, float]:
    """Token shares while every tenant is still backlogged (admission order, no API calls).
    `learned`: the limit is not configured but learned from the API's headers, as it mostly is."""
    backlog = {"a": (10_000, 100), "b": (1_000, 400), "c": (3_000, 200)}  # jobs, max_tokens
    text = "".join(f"[tenants.{t}]\nweight = {w}\n" for t, w in weights.items())
    (tmp / "tenants.toml").write_text(text)
    name = f"ws-{'-'.join(map(str, weights.values()))}-{learned}"
    with redis_server(tmp / name) as server:
        settings = _settings(server.url, tenants_file=tmp / "tenants.toml", dispatch_window=10**6)
        load_tenants.cache_clear()
        async with (
            Client(Redis.from_url(server.url), settings) as client,
            Redis.from_url(server.url) as redis,
        ):
            for tenant, (count, max_tokens) in backlog.items():
                for start in range(0, count, 500):
                    await asyncio.gather(
                        *(
                            client.submit(text_request(max_tokens), tenant=tenant)
                            for _ in range(min(500, count - start))
                        )
                    )
            limiter = RateLimiter(
                redis, settings.keys, {} if learned else {"haiku": Limits(rpm=10**9)}
            )
            if learned:  # what an answer's headers say: a large limit, well out of the way
                big = str(10**9)
                headers = {
                    f"anthropic-ratelimit-{b}-{f}": big
                    for b in ("requests", "input-tokens", "output-tokens")
                    for f in ("limit", "remaining")
                }
                await limiter.settle(
                    "claude-haiku-4-5", input_delta=0, output_delta=0, headers=headers
                )
            dispatcher = Dispatcher(
                redis, JobStore.from_settings(redis, settings), settings, limiter
            )
            recorder = Recorder(dispatcher.tenants, settings.bulk_floor_share)
            recorder.log = []
            dispatcher.policy = recorder
            dispatcher.budget_gate.policy = recorder
            left = {t: n for t, (n, _) in backlog.items()}
            while all(v > 0 for v in left.values()):
                before = len(recorder.log)
                await dispatcher.tick()
                for head in recorder.log[before:]:
                    left[head.tenant] -= 1
    tokens: Counter[str] = Counter()
    left = {t: n for t, (n, _) in backlog.items()}
    for head in recorder.log:
        if not all(v > 0 for v in left.values()):
            break
        tokens[head.tenant] += head.tokens
        left[head.tenant] -= 1
    total = sum(tokens.values())
    return {t: tokens[t] / total for t in backlog}


def jain(shares: list[float]) -> float:
    return sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares))


async def no_starvation(tmp: Path, scheduler: bool, limit_s: int = 150) -> list[Any]:
    """1,000 small jobs (tenant bulk-co) then one 32k job (tenant big), OTPM 40,000."""
    env = {
        "MSGQ_RATE_LIMITS": json.dumps({"haiku": {"otpm": 40_000}}),
        "MSGQ_SCHEDULER": str(scheduler).lower(),
    }
    name = "on" if scheduler else "off"
    with (
        redis_server(tmp / f"ns-{name}") as server,
        simulator("--otpm", "40000", "--output-tokens", "32000") as sim,
        workers(1, server.url, sim, **env),
    ):
        settings = _settings(server.url, scheduler=scheduler)
        async with Client(Redis.from_url(server.url), settings) as client:
            for _ in range(4):
                await asyncio.gather(
                    *(client.submit(text_request(1000), tenant="bulk-co") for _ in range(250))
                )
            big = await client.submit(text_request(32_000), tenant="big")
            started = time.monotonic()
            record = await client.get(big.id)
            while record.started_at is None and time.monotonic() - started < limit_s:
                await asyncio.sleep(0.5)  # polling the record: the figure is its start time
                record = await client.get(big.id)
        stats = sim_stats(sim)
    label = "fair share (scheduler on)" if scheduler else "FIFO (scheduler off)"
    if record.started_at is None:
        return [label, f"not started within {limit_s} s", "-", stats["by_status"].get("429", 0)]
    waited = (record.started_at - record.created_at).total_seconds()
    return [label, round(waited, 1), round(waited / 60, 2), stats["by_status"].get("429", 0)]


async def budget_race(tmp: Path, n: int = 300) -> list[Any]:
    """Ten workers, scheduler off (each reserves for itself), one tenant with $1 a day."""
    (tmp / "budget.toml").write_text('[tenants.t]\nbudget_usd_day = 1.0\non_budget = "fail"\n')
    env = {"MSGQ_SCHEDULER": "false", "MSGQ_TENANTS_FILE": str(tmp / "budget.toml")}
    with (
        redis_server(tmp / "budget") as server,
        simulator("--latency-ms", "50", "--output-tokens", "2000") as sim,
        workers(10, server.url, sim, **env),
    ):
        settings = _settings(server.url, scheduler=False, tenants_file=tmp / "budget.toml")
        load_tenants.cache_clear()
        async with (
            Client(Redis.from_url(server.url), settings) as client,
            Redis.from_url(server.url) as redis,
        ):
            ids = [
                j.id
                for j in await asyncio.gather(
                    *(client.submit(text_request(2000), tenant="t") for _ in range(n))
                )
            ]
            records = [await client.wait(i, timeout=300) for i in ids]
            usage = await Budgets(redis, settings.keys).usage(
                "t", load_tenants(settings.tenants_file).get("t")
            )
        calls = sim_stats(sim)["received"]
    statuses = Counter(r.status.value + ("/" + r.error.type if r.error else "") for r in records)
    spent = sum(r.cost_usd or 0 for r in records)
    return [
        n,
        dict(statuses),
        f"${spent:.4f}",
        f"${usage['spent_today_usd']:.4f}",
        f"${max(0.0, spent - 1.0):.2f}",
        calls,
    ]


async def utilisation_cost(tmp: Path, scheduler: bool, n: int = 1500) -> float:
    """Jobs per second against 1,200 RPM, 4 workers, one tenant, one priority."""
    limits = json.dumps({"haiku": {"rpm": 1200}})
    env = {"MSGQ_RATE_LIMITS": limits, "MSGQ_SCHEDULER": str(scheduler).lower()}
    with (
        redis_server(tmp / f"uc-{scheduler}") as server,
        simulator("--rpm", "1200", "--latency-ms", "150") as sim,
        workers(4, server.url, sim, **env),
    ):
        settings = _settings(server.url, scheduler=scheduler)
        async with Client(Redis.from_url(server.url), settings) as client:
            started = time.perf_counter()
            ids = [
                j.id
                for j in await asyncio.gather(*(client.submit(text_request()) for _ in range(n)))
            ]
            for job_id in ids:
                await client.wait(job_id, timeout=300)
            elapsed = time.perf_counter() - started
    ideal = max(0, n - 1200) / 20
    return ideal / elapsed


async def report(tmp: Path, table: Table) -> None:
    table(
        "Fair share 1: interactive jobs (1/s) behind 5,000 bulk jobs saturating 600 RPM, "
        "2 workers, 100 ms latency: queue wait",
        ["run", "interactive jobs", "p50 s", "p99 s", "not started", "429s"],
        [await interactive_wait(tmp, True), await interactive_wait(tmp, False, seconds=20)],
    )
    weighted = await weighted_shares(tmp, {"a": 1, "b": 1, "c": 2})
    equal = await weighted_shares(tmp, {"a": 1, "b": 1, "c": 1})
    learned = await weighted_shares(tmp, {"a": 1, "b": 1, "c": 2}, learned=True)
    table(
        "Fair share 2: token shares while three tenants are backlogged (10,000 / 1,000 / 3,000 "
        "jobs of max_tokens 100 / 400 / 200)",
        ["weights", "a", "b", "c", "target", "Jain's index"],
        [
            ["1:1:2", *(f"{weighted[t]:.3f}" for t in "abc"), "0.25 / 0.25 / 0.50", "-"],
            [
                "1:1:2, limit learned",
                *(f"{learned[t]:.3f}" for t in "abc"),
                "0.25 / 0.25 / 0.50",
                "-",
            ],
            [
                "1:1:1",
                *(f"{equal[t]:.3f}" for t in "abc"),
                "1/3 each",
                f"{jain(list(equal.values())):.3f}",
            ],
        ],
    )
    table(
        "Fair share 3: a 32k-max_tokens job behind 1,000 small jobs (max_tokens 1,000, replies "
        "use it all) under OTPM 40,000 (refill period 60 s)",
        ["run", "start after s", "refill periods", "429s"],
        [await no_starvation(tmp, True), await no_starvation(tmp, False, limit_s=90)],
    )
    table(
        "Fair share 4: ten workers race one tenant's $1/day budget (300 jobs, on_budget = fail)",
        ["jobs", "outcomes", "cost of records", "spend counted", "overshoot", "API calls"],
        [await budget_race(tmp)],
    )
    on, off = await utilisation_cost(tmp, True), await utilisation_cost(tmp, False)
    table(
        "Fair share 5: cost of fairness, 1,500 jobs against 1,200 RPM, 4 workers, one tenant",
        ["scheduler", "utilisation", "on ÷ off"],
        [["on", f"{on:.3f}", f"{on / off:.3f}"], ["off", f"{off:.3f}", "1.000"]],
    )


if __name__ == "__main__":
    import tempfile

    from bench.run import report as collected
    from bench.run import table

    asyncio.run(report(Path(tempfile.mkdtemp(prefix="msgq-bench-fair-")), table))
    print("\n".join(collected))
