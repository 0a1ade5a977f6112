"""Partitions (issue 32, stage 2): a deployment's keyspace split by a hash of the job ID, each
partition its own hash tag; the count kept in Redis and refused at start when the deployment's
jobs were written with another. Runs on one node here and on the 3-master cluster in
`make test-cluster` (where each partition's client is pinned to its own slot)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
import zlib
from collections import Counter

import orjson
import pytest
from click import ClickException
from pydantic import ValidationError
from redis.asyncio import Redis

from msgq.cli.services import _say_where_redis_is
from msgq.client import Client
from msgq.connections import connect, partition_clients
from msgq.dev.stack import msgq_command
from msgq.keys import MAX_PARTITIONS, keyspace
from msgq.namespaces import check_namespace
from msgq.partitions import PartitionClients, PartitionCountError, check_against, check_partitions
from msgq.settings import Settings
from schemas import JobStatus

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hello"}],
}


def test_one_partition_keeps_every_name_of_the_layout_before_partitions() -> None:
    for clustered in (False, True):
        keys = keyspace(clustered=clustered, partitions=1)
        assert keys.part(0) == keys and keys.for_job("job-1") == keys
        assert keys.for_job("job-1").record_key("job-1") == keyspace(
            clustered=clustered
        ).record_key("job-1")
    assert keyspace().arq_job_key("a") == "arq:job:a"  # the default one node: arq's own names


def test_partitions_have_their_own_tags_that_no_namespace_can_name() -> None:
    keys = keyspace("team", clustered=True, partitions=4)
    assert [p.prefix for p in keys.parts] == [f"{{msgq@team/{n}}}:" for n in range(4)]
    assert keys.prefix == "{msgq@team}:" and keys.part(3).root == keys
    home = keys.partition_of("x")
    # A job's own keys are in its partition, whichever keyspace of the deployment names them.
    assert (
        keys.arq_job_key("x") == keys.part(2).arq_job_key("x") == f"{{msgq@team/{home}}}:arq:job:x"
    )
    one_node = keyspace(partitions=4)
    assert one_node.part(1).queue == "msgq/1:queue"
    assert one_node.record_key("x") == f"msgq/{home}:job:x"
    assert one_node.arq_job_key("x") == f"msgq/{home}:arq:job:x"  # never arq's own names
    with pytest.raises(ValueError, match="letters, digits"):
        check_namespace("team/1")  # a namespace cannot be a partition's tag
    with pytest.raises(ValueError, match="partitions must be"):
        keyspace(partitions=MAX_PARTITIONS + 1)
    with pytest.raises(ValueError, match="is not one of 0-3"):
        one_node.part(4)
    with pytest.raises(ValidationError):
        Settings(partitions=0)
    assert Settings(redis_url="redis+cluster://node-1:6379").partitions == 1
    on_cluster = Settings(redis_url="redis+cluster://node-1:6379", partitions=64)
    assert on_cluster.keys.part(63).prefix == "{msgq/63}:"  # a slot each, over the masters


def test_a_jobs_partition_is_crc32_of_its_id_and_ids_spread_evenly() -> None:
    keys = keyspace(partitions=64)
    assert keys.partition_of("msg_01") == zlib.crc32(b"msg_01") % 64  # what a producer computes
    counts = Counter(keys.partition_of(uuid.uuid4().hex) for _ in range(64_000))
    assert len(counts) == 64
    assert min(counts.values()) > 800 and max(counts.values()) < 1200  # mean 1,000


def test_on_a_cluster_the_partitions_spread_over_the_slots() -> None:
    from msgq.cluster import slot_of

    slots = [slot_of(part.prefix) for part in keyspace(clustered=True, partitions=64).parts]
    assert len(set(slots)) == 64
    thirds = Counter(slot * 3 // 16384 for slot in slots)  # a 3-master cluster's even split
    assert all(count >= 12 for count in thirds.values()), thirds


@pytest.fixture
def clients(settings: Settings, redis: Redis) -> PartitionClients:
    return partition_clients(settings.model_copy(update={"partitions": 4}), redis)


async def test_each_partitions_client_reaches_its_keys(clients: PartitionClients) -> None:
    for part, redis in clients.each():
        await redis.set(part.prefix + "probe", part.hash_tag)
    for part, redis in clients.each():
        assert await redis.get(part.prefix + "probe") == part.hash_tag.encode()
    keys, redis = clients.for_job("job-7")
    assert keys.partition == keyspace(partitions=4).partition_of("job-7")


async def test_the_count_is_stored_and_a_change_is_refused_while_jobs_exist(
    settings: Settings, clients: PartitionClients
) -> None:
    four = settings.model_copy(update={"partitions": 4}).keys
    await check_partitions(clients, four)
    assert await clients.root.get(four.partitions_key) == b"4"
    await check_partitions(clients, four)  # the same count passes

    held = four.for_job("job-1")
    await clients.for_keys(held).zadd(held.index_key, {"job-1": 1})
    eight = settings.model_copy(update={"partitions": 8}).keys
    with pytest.raises(PartitionCountError) as refused:
        await check_partitions(partition_clients(settings, clients.root), eight)
    assert str(refused.value) == (
        "MSGQ_PARTITIONS=8, but this deployment's 1 jobs are in 4 partition(s): set "
        "MSGQ_PARTITIONS=4 (the count may change only while the deployment holds no jobs and "
        "no worker runs)"
    )
    assert await clients.root.get(four.partitions_key) == b"4"

    await clients.for_keys(held).zrem(held.index_key, "job-1")
    await check_partitions(clients, eight)  # no jobs: the count may change
    assert await clients.root.get(four.partitions_key) == b"8"


async def test_a_deployment_from_before_partitions_keeps_its_count_of_one(
    settings: Settings, redis: Redis
) -> None:
    one = settings.model_copy(update={"partitions": 1}).keys
    await check_partitions(PartitionClients(redis, one), one)
    assert await redis.get(one.partitions_key) is None  # nothing written for the old layout
    await redis.zadd(one.queue, {"queued-before": 1})
    four = settings.model_copy(update={"partitions": 4})
    with pytest.raises(PartitionCountError, match="1 jobs are in 1 partition"):
        await check_partitions(partition_clients(four, redis), four.keys)


async def test_a_worker_or_api_with_another_count_stops_at_start_in_one_line(
    settings: Settings, clients: PartitionClients
) -> None:
    four = settings.model_copy(update={"partitions": 4})
    await check_partitions(clients, four.keys)
    held = four.keys.for_job("job-2")
    await clients.for_keys(held).zadd(held.queue, {"job-2": 1})
    with pytest.raises(ClickException, match=r"MSGQ_PARTITIONS=2, but .* set MSGQ_PARTITIONS=4"):
        await _say_where_redis_is(settings.model_copy(update={"partitions": 2}), "api")
    await _say_where_redis_is(four, "api")  # the stored count starts


@pytest.mark.parametrize("verb", [("audit",), ("jobs",), ("status", "job-3")])
async def test_a_cli_with_another_count_says_so_in_one_line(
    settings: Settings, clients: PartitionClients, verb: tuple[str, ...]
) -> None:
    """`msgq audit` with the default count on a 4-partition deployment would read the wrong
    keys and call it clean: it, and every command reading jobs, stops instead."""
    four = settings.model_copy(update={"partitions": 4})
    await check_partitions(clients, four.keys)
    held = four.keys.for_job("job-3")
    await clients.for_keys(held).zadd(held.index_key, {"job-3": 1})
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url, "MSGQ_PARTITIONS": "1"}
    done = await asyncio.to_thread(
        subprocess.run,
        msgq_command(*verb),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "msgq: MSGQ_PARTITIONS=1, but this deployment's 1 jobs are in 4 partition(s): set "
        "MSGQ_PARTITIONS=4 (the count may change only while the deployment holds no jobs and "
        "no worker runs)"
    ]


async def test_a_burst_worker_runs_every_partitions_jobs_before_it_exits(
    settings: Settings,
) -> None:
    """arq ends a `--burst` run when "the queue" is empty: with partitions the jobs wait in
    each partition's queue, and the deployment's own stays empty. Two slots, eight jobs: the
    worker must keep polling until all eight ran (before, it left after its first two)."""
    from worker.main import build_worker

    four = settings.model_copy(update={"partitions": 4, "scheduler": False, "max_jobs": 2})
    async with Client(connect(four.redis_url), four) as producer:
        jobs = [await producer.submit(BODY) for _ in range(8)]
        assert len({four.keys.partition_of(job.id) for job in jobs}) > 1
        worker = build_worker(four, burst=True, handle_signals=False)
        try:
            await asyncio.wait_for(worker.async_run(), timeout=60)
        finally:
            await worker.close()
        ended = [await producer.get(job.id) for job in jobs]
    assert [record.status for record in ended] == [JobStatus.SUCCEEDED] * 8


def test_a_poll_takes_due_jobs_a_round_at_a_time_from_a_rotating_first_partition() -> None:
    """Fewer free slots than due jobs: no partition's jobs wait behind another's (before, the
    first partitions' jobs filled every poll), and each partition's own go oldest first. The
    head of each queue read past its due jobs tells when the next comes due (a running job is
    scored at its lock's expiry, so it is never among the due ones)."""
    from worker.queue.poll import read

    keys = keyspace(partitions=3)
    now = 1000
    due = [[b"a1", b"a2", b"a3"], [b"b1"], [b"c1", b"c2"]]
    replies: list[object] = []
    for n, ids in enumerate(due):
        replies += [ids, [(b"running", 5000.0 + n)], [f"abort-{n}".encode()], 0]
    first = read(replies, keys, 4, now, 0)
    assert first.ready == [b"a1", b"b1", b"c1", b"a2"]
    assert first.later == 5000 and first.aborts == [b"abort-0", b"abort-1", b"abort-2"]
    assert read(replies, keys, 2, now, 1).ready == [b"b1", b"c1"]
    assert read(replies, keys, 1, now, 2).ready == [b"c1"]


def test_an_idle_workers_poll_is_two_plain_commands_a_partition() -> None:
    """With no job running here, abort requests matter to nobody (one for a job not yet started
    is found by its claim): the poll reads only each queue's due jobs and the first one not yet
    due, two plain commands a partition (a script and two prunes before), and no script."""
    from worker.queue.poll import ask, read

    class Recorder:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def evalsha(self, *args: object) -> None:
            self.commands.append("EVALSHA")

        def zrange(self, *args: object, **kwargs: object) -> None:
            self.commands.append("ZRANGE")

        def zrangebyscore(self, *args: object, **kwargs: object) -> None:
            self.commands.append("ZRANGEBYSCORE")

        def zremrangebyscore(self, *args: object, **kwargs: object) -> None:
            self.commands.append("ZREMRANGEBYSCORE")

    keys = keyspace(partitions=4)
    idle, busy = Recorder(), Recorder()
    ask(idle, keys, 8, 1000, aborts=False, prune=False)  # type: ignore[arg-type]
    ask(busy, keys, 8, 1000, aborts=True)  # type: ignore[arg-type]
    assert idle.commands == ["ZRANGEBYSCORE", "ZRANGEBYSCORE"] * 4
    assert busy.commands == ["ZRANGEBYSCORE", "ZRANGEBYSCORE", "ZRANGE", "ZREMRANGEBYSCORE"] * 4
    replies: list[object] = []
    for n in range(4):
        replies += [[f"j{n}".encode()], []]
    polled = read(replies, keys, 8, 1000, aborts=False, prune=False)
    assert polled.ready == [b"j0", b"j1", b"j2", b"j3"] and polled.aborts == []
    assert polled.later is None


async def test_a_count_is_not_changed_under_running_workers(
    settings: Settings, clients: PartitionClients
) -> None:
    """Workers polling one layout would never see jobs written in another: with the
    deployment empty but a worker running, another count is refused (a producer with 4 beside
    a fleet of 1 would otherwise store 4 and write jobs nobody polls)."""
    one = settings.model_copy(update={"partitions": 1}).keys
    seen = orjson.dumps({"seen_ms": int(time.time() * 1000)})
    await clients.root.hset(one.fleet_workers, "worker-1", seen)  # type: ignore[misc]
    four = settings.model_copy(update={"partitions": 4}).keys
    with pytest.raises(PartitionCountError, match="1 running worker\\(s\\) are in 1 partition"):
        await check_partitions(clients, four)
    assert await clients.root.get(four.partitions_key) is None
    await clients.root.delete(one.fleet_workers)
    await check_partitions(clients, four)  # stopped: the count may change
    assert await clients.root.get(four.partitions_key) == b"4"


async def test_a_worker_storing_the_same_count_meanwhile_is_not_refused(
    settings: Settings, clients: PartitionClients
) -> None:
    """An API and a worker starting together: the API reads no count, then the worker (same
    count) stores it and announces itself before the API reads the workers. The API re-reads
    the count before refusing, and passes (before, it blamed the worker's layout on the old
    one: `make test-partitions` failed on this race)."""
    four = settings.model_copy(update={"partitions": 4}).keys
    await clients.root.set(four.partitions_key, b"4")  # the worker's check, after the API read
    seen = orjson.dumps({"seen_ms": int(time.time() * 1000)})
    await clients.root.hset(four.fleet_workers, "worker-1", seen)  # type: ignore[misc]
    await check_against(clients, four, b"")  # b"": what the API read before the worker
    assert await clients.root.get(four.partitions_key) == b"4"
