"""A Redis Cluster master SIGKILLed mid-run (issue 32): the master serving the deployment's slot
dies while jobs are submitted and run, the cluster promotes its replica, and the producer and
both workers resume on it. With MSGQ_SUBMIT_MIN_REPLICAS=1 no acknowledged job is lost, every
job ends, and the audit is clean. `MSGQ_CHAOS=1` (`make chaos`) runs 1,000 jobs instead of 300.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgq.audit import audit
from msgq.client import Client
from msgq.cluster import slot_of
from msgq.connections import connect
from msgq.dev.redis_cluster import RedisCluster
from msgq.errors import NotReplicatedError
from msgq.replicas import confirm_replicated
from msgq.settings import Settings
from tests.conftest import Sim, stop_workers
from tests.test_sentinel import (
    BODY,
    CHAOS,
    _events,
    _spawn,
    all_ended,
    producing_a_third,
    refused_for_want_of_a_replica,
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path / "cluster", replicas=True) as c:
        yield c


@pytest.mark.parametrize("victim", ["deployment", "partition"])
async def test_the_slots_master_sigkilled_mid_run(
    cluster: RedisCluster, settings: Settings, sim: Sim, tmp_path: Path, victim: str
) -> None:
    """`deployment`: the master serving the deployment's own slot (the scheduler, the buckets;
    with partitions, some partitions too). `partition` (with MSGQ_PARTITIONS above 1, as `make
    test-partitions` and `make chaos` run it): a master holding only partitions' slots."""
    if victim == "partition" and settings.partitions == 1:
        pytest.skip("one partition: every job is in the deployment's slot")
    n = 1000 if CHAOS else 300
    custom = settings.model_copy(
        update={
            "redis_url": cluster.url,
            "submit_min_replicas": 1,
            "redis_failover_wait_s": 20.0,
            # A running job's lock must outlast the failover (node timeout 2 s: 3-5 s here), or
            # another worker takes the job while its own worker cannot reach Redis to renew it.
            "lock_s": 10.0,
        }
    )
    keys = custom.keys
    slot = slot_of(keys.prefix)
    if victim == "partition":  # a partition whose master is not the deployment slot's
        home = cluster.owner(slot)
        slot = next(s for p in keys.parts if cluster.owner(s := slot_of(p.prefix)) != home)
    old_port = cluster.owner(slot)
    assert old_port is not None
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [_spawn(custom, log) for log in logs]
    try:
        async with Client(connect(custom), custom) as client, connect(custom) as redis:
            producer, producing = await producing_a_third(client, n, logs)
            killed_at = time.time()
            await asyncio.to_thread(cluster.kill, old_port)
            new_port = await asyncio.to_thread(cluster.wait_for_owner, slot, other_than=old_port)
            promoted_s = time.time() - killed_at

            await refused_for_want_of_a_replica(producer)  # none until the old master rejoins
            await asyncio.to_thread(cluster.rejoin, old_port)
            await asyncio.wait_for(producing, timeout=60)
            final = await all_ended(redis, [job_id for job_id, _, _ in producer.acked], keys)
            report = await audit(redis, keys)
        assert all(w.poll() is None for w in workers)  # they rode it out
    finally:
        codes = await asyncio.to_thread(stop_workers, *workers)
    assert codes == [0, 0]
    assert report.clean, report.findings
    events = _events(*logs)
    moved = [e for e in events if e.get("event") == "redis.failover"]
    duplicates = sim.received - n
    starts = Counter(e["job_id"] for e in events if e.get("event") == "job.started")
    twice = sorted(job_id for job_id, count in starts.items() if count > 1)
    print(
        f"\ncluster failover ({victim}, {custom.partitions} partitions): {n} jobs; the "
        f"slot's master SIGKILLed after {n // 3} "
        f"acknowledged; replica promoted in {promoted_s:.1f}s (port {old_port} -> {new_port}); "
        f"workers logged redis.failover {len(moved)} times; producer retries "
        f"{dict(producer.failures)}; lost: {final['missing']}; duplicated upstream calls: "
        f"{duplicates} (started twice: {twice[:5]})"
    )
    assert all(e["new_primary"] == f"127.0.0.1:{new_port}" for e in moved)
    assert final == Counter({"succeeded": n})  # no acknowledged job lost
    assert 0 <= duplicates <= 2 * custom.max_jobs  # at most the calls in flight at the kill


async def test_a_durable_submit_waits_for_the_shards_replica(
    cluster: RedisCluster, settings: Settings
) -> None:
    """With the replica of the job's master frozen (the deployment's, or with partitions the
    job's partition's), a submit with min replicas 1 raises
    NotReplicatedError after its timeout, and so does the check from a connection that did not
    write the job (as in a busy process). Counted from a PUBLISH, as it was, that check
    confirmed at once: a cluster sends a PUBLISH over its bus, not down the replication stream,
    so it gave WAIT nothing to wait for."""
    durable = settings.model_copy(
        update={
            "redis_url": cluster.url,
            "submit_min_replicas": 1,
            "submit_replica_timeout_ms": 300,
        }
    )
    master = cluster.owner(slot_of(durable.keys.for_job("frozen").prefix))  # the job's shard
    replica = cluster.replica_ports[cluster.master_ports.index(master)]
    async with Client(connect(durable), durable) as client, connect(durable) as other:
        assert (await client.submit(BODY, job_id="first")).created
        os.kill(cluster.processes[replica].pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicatedError, match="same job ID is safe"):
                await client.submit(BODY, job_id="frozen")
            with pytest.raises(NotReplicatedError):
                await confirm_replicated(other, durable.keys, "frozen", replicas=1, timeout_ms=300)
        finally:
            os.kill(cluster.processes[replica].pid, signal.SIGCONT)
        assert not (await client.submit(BODY, job_id="frozen")).created  # now replicated
