"""Redis Cluster (issue 32): a real 3-master cluster from the bundled binary; msgq on it, named
`redis+cluster://` (a deployment's keys in one hash slot, on the master serving it); a plain
URL to a cluster node refused at start in one line. `make test-cluster` runs the core suite on
such a cluster, and test_cluster_failover kills the slot's master mid-run."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot
from redis.exceptions import ResponseError

from msgq.channels import publish, subscriber
from msgq.client import Client
from msgq.cluster import parse_cluster_url, slot_of
from msgq.connections import connect, partition_clients
from msgq.dev import redis_cluster
from msgq.dev.redis_cluster import RedisCluster
from msgq.dev.stack import msgq_command
from msgq.keys import keyspace
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import Sim, StartWorker, eventually, flush
from worker.queue.wake import QueueWake

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hi"}],
}
KEYS_ON_CLUSTER = keyspace(clustered=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def worker(
    redis_url: str, tmp_path: Path, verb: str = "worker"
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MSGQ_"))}
    env |= {"REDIS_URL": redis_url, "ANTHROPIC_API_KEY": "sk-test", "MSGQ_LOG_FORMAT": "json"}
    env |= {"MSGQ_API_KEYS": "team:key-0123456789abcdef"}
    return subprocess.run(
        msgq_command(verb),
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_fixture_is_a_real_cluster_spreading_keys_over_three_masters(
    cluster: RedisCluster,
) -> None:
    host, port = cluster.url.removeprefix("redis+cluster://").split(",")[0].split(":")
    client = ClusterClient(host=host, port=int(port))
    try:
        for n in range(300):
            await client.set(f"spread:{n}", n)
        assert len(await client.cluster_nodes()) == 3
    finally:
        await client.aclose()
    per_master = cluster.keys_per_master()
    assert len(per_master) == 3 and all(count > 0 for count in per_master.values())


@pytest.mark.parametrize("verb", ["worker", "api", "jobs"])
def test_a_plain_url_to_a_cluster_node_fails_at_start_in_one_line(
    cluster: RedisCluster, tmp_path: Path, verb: str
) -> None:
    """Before: the worker looped on `worker.redis_unavailable` (MOVED) every 5 s, never saying
    why, and the CLI said "cannot reach Redis (MOVED ...)". Now: one line, naming what it
    reached and how to name a cluster."""
    node = cluster.url.removeprefix("redis+cluster://").split(",")[0]
    done = worker(f"redis://{node}/0", tmp_path, verb)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("msgq: REDIS_URL reaches a node of a Redis Cluster")
    assert lines[0].endswith(
        "name a cluster as REDIS_URL=redis+cluster://host:port[,host:port...] "
        "(rediss+cluster:// with TLS); see docs/operations/redis-cluster.md"
    )


def test_cluster_urls_parse_and_bad_ones_are_refused() -> None:
    target = parse_cluster_url("rediss+cluster://app:p%40ss@a.example:7000,[::1],b/0")
    assert target.seeds == (("a.example", 7000), ("::1", 6379), ("b", 6379))
    assert (target.username, target.password, target.ssl) == ("app", "p@ss", True)
    assert not parse_cluster_url("redis+cluster://h").ssl
    for bad, says in [
        ("redis+cluster:///0", "at least one node"),
        ("redis+cluster://h:6379/2", "one database (0)"),
        ("redis+cluster://h:port", "host or host:port"),
    ]:
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_cluster_url(bad)
    with pytest.raises(ValidationError, match=re.escape("one database (0)")):
        Settings(_env_file=None, redis_url="redis+cluster://h:6379/3")


def test_a_deployments_keys_share_one_slot_on_a_cluster_and_keep_their_names_on_one_node() -> None:
    one_node, clustered = keyspace("team-a"), keyspace("team-a", clustered=True)
    assert one_node.record_key("j1") == "msgq@team-a:job:j1"
    assert clustered.record_key("j1") == "{msgq@team-a}:job:j1"
    assert clustered.arq_job_key("j1") == "{msgq@team-a}:arq:job:j1"
    assert keyspace().arq_job_key("j1") == "arq:job:j1"  # the default namespace, unchanged
    names = [clustered.queue, clustered.record_key("x"), clustered.bucket_key("haiku")]
    names += [clustered.ledger_key("x"), clustered.lane_batch_key("h"), clustered.abort_key]
    assert {key_slot(name.encode()) for name in names} == {slot_of(clustered.prefix)}
    assert slot_of(clustered.prefix) != slot_of(keyspace(clustered=True).prefix)
    settings = Settings(_env_file=None, redis_url="redis+cluster://h:1", namespace="team-a")
    assert settings.keys == clustered


async def test_a_worker_on_the_cluster_runs_jobs_on_the_master_serving_its_slot(
    cluster: RedisCluster, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Every entry point names the cluster the same way; the keys all land on one master, but
    the tenants' spend, each under its tenant's own tag (here the jobs' with no tenant)."""
    on_cluster = settings.model_copy(update={"redis_url": cluster.url})
    flush(cluster.url)  # the module's cluster: an earlier test spread keys over every master
    await start_worker(on_cluster)
    async with Client(connect(on_cluster), on_cluster) as client:
        jobs = [await client.submit(BODY) for _ in range(10)]
        ended = [await client.wait(job.id, timeout=30) for job in jobs]
    assert {record.status for record in ended} == {JobStatus.SUCCEEDED}
    owner = cluster.owner(slot_of(on_cluster.keys.prefix))
    elsewhere = []
    for port in cluster.master_ports:
        if port != owner:
            with SyncRedis(port=port) as node:
                elsewhere += [key.decode() for key in node.keys("*")]
    spend = on_cluster.keys.tenant_prefix("(none)") + "spend:"
    assert elsewhere and all(key.startswith(spend) for key in elsewhere), elsewhere
    assert cluster.keys_per_master()[owner or 0] > 10  # one master holds the deployment


def test_a_key_outside_the_deployments_slot_is_a_clear_error_at_once(
    cluster: RedisCluster,
) -> None:
    """A key built outside the keyspace would be answered MOVED forever: said at once."""

    async def stray() -> None:
        async with connect(cluster.url, failover_wait_s=30) as redis:
            await redis.set(KEYS_ON_CLUSTER.record_key("fine"), 1)
            with pytest.raises(ResponseError, match="outside the deployment's slot"):
                await asyncio.wait_for(redis.get("no-tag:stray"), timeout=5)

    asyncio.run(stray())


def test_a_cluster_starts_on_ports_above_55535(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free ports are often high; a node's default cluster bus (its port + 10,000) does not
    exist there, so each node is given a bus port of its own (CI failed on port 60881)."""

    def high_ports(count: int) -> list[int]:
        found: list[int] = []
        for port in range(61000, 65000):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            found.append(port)
            if len(found) == count:
                break
        return found

    monkeypatch.setattr(redis_cluster, "free_ports", high_ports)
    with redis_cluster.RedisCluster(tmp_path) as cluster:
        assert min(cluster.master_ports) > 55535
        assert len(cluster.keys_per_master()) == 3


async def test_on_a_cluster_msgq_publishes_on_its_shard_only(
    cluster: RedisCluster, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Sharded pub/sub: a job's ending reaches a sharded subscriber on the master that holds the
    deployment, and never a plain subscriber on another master (a plain PUBLISH would reach
    every node of the cluster)."""
    on_cluster = settings.model_copy(update={"redis_url": cluster.url})
    flush(cluster.url)  # no dispatcher lock left by an earlier test's worker to wait out
    keys = on_cluster.keys
    owner = cluster.owner(slot_of(keys.prefix))
    other = next(port for port in cluster.master_ports if port != owner)
    await start_worker(on_cluster)
    async with (
        connect(on_cluster) as redis,
        subscriber(redis, keys) as sharded,
        Redis(port=other) as elsewhere,
        elsewhere.pubsub() as plain,
    ):
        await sharded.subscribe(keys.done_channel)
        await plain.subscribe(keys.done_channel)
        client = Client(redis, on_cluster)
        job = await client.submit(BODY)
        assert (await client.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED
        assert await next_message(sharded, 5.0) == job.id.encode()
        assert await next_message(plain, 0.5) is None


async def next_message(pubsub: PubSub, timeout_s: float) -> bytes | None:
    """The next published message's data within `timeout_s` (confirmations skipped)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            assert message["type"] == "message"
            return bytes(message["data"])
    return None


def test_a_client_on_another_namespaces_connection_is_refused_at_once(
    cluster: RedisCluster,
) -> None:
    """On a cluster each namespace is its own slot: a connection made for one (`connect(url)`,
    the default namespace) cannot serve another's Client."""
    team = Settings(_env_file=None, redis_url=cluster.url, namespace="team-a")

    async def mixed() -> None:
        async with connect(cluster.url) as default_slot, connect(team) as team_slot:
            with pytest.raises(ValueError, match="make it with connect"):
                Client(default_slot, team)
            Client(team_slot, team)  # the right one

    asyncio.run(mixed())


async def test_a_worker_hears_its_wakes_again_after_the_slot_moves(cluster: RedisCluster) -> None:
    """Moving the deployment's slot to another master unsubscribes its sharded channels, unasked.
    The subscriber takes that as a lost connection, and its reconnect subscribes again on the
    new owner; before, it waited on the old node and heard nothing, until restarted."""
    flush(cluster.url)
    keys = KEYS_ON_CLUSTER
    slot = slot_of(keys.prefix)
    old = cluster.owner(slot)
    new = next(port for port in cluster.master_ports if port != old)
    async with connect(cluster.url, failover_wait_s=10) as redis:
        wake = QueueWake(redis, keys, lambda: True)
        wake.before_poll()

        async def published() -> bool:  # to whoever listens on the owner right now
            return bool(await publish(redis, keys, keys.queue_wake, "x"))

        await eventually(published)
        cluster.move_slot(slot, to=new)
        assert cluster.owner(slot) == new
        wake.before_poll()  # clears the wake heard before the move
        await eventually(published)  # heard on the new owner: the subscriber came back
        await asyncio.wait_for(wake.idle(30), 5)
        await wake.aclose()


async def test_partitions_spread_a_deployments_keys_over_every_master(
    cluster: RedisCluster,
) -> None:
    """Stage 2's layout: with MSGQ_PARTITIONS=16 the deployment's client sends each
    partition's commands to the master serving its slot (`msgq.slot_routing`), so one
    deployment's keys land on all three masters (before partitions: 0% / 100% / 0%)."""
    flush(cluster.url)
    settings = Settings(redis_url=cluster.url).model_copy(update={"partitions": 16})
    async with connect(settings) as root:
        for part, redis in partition_clients(settings, root).each():
            await redis.set(part.prefix + "probe", part.hash_tag)
    per_master = cluster.keys_per_master()
    assert sum(per_master.values()) == 16
    assert all(count >= 2 for count in per_master.values()), per_master
