"""Redis Cluster (issue 32, first part): a real 3-master cluster from the bundled binary, and
msgq saying plainly at start that it does not run on one yet, whichever way it is named."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient

from msgq.dev import redis_cluster
from msgq.dev.redis_cluster import RedisCluster
from msgq.dev.stack import msgq_command


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def worker(redis_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MSGQ_"))}
    env |= {"REDIS_URL": redis_url, "ANTHROPIC_API_KEY": "sk-test", "MSGQ_LOG_FORMAT": "json"}
    return subprocess.run(
        msgq_command("worker"),
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


def test_a_plain_url_to_a_cluster_node_fails_at_start_in_one_line(
    cluster: RedisCluster, tmp_path: Path
) -> None:
    """Before: the worker looped on `worker.redis_unavailable` (MOVED) every 5 s, never saying
    why. Now: exit 1 and one line that names what it reached and what msgq runs on."""
    node = cluster.url.removeprefix("redis+cluster://").split(",")[0]
    done = worker(f"redis://{node}/0", tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [
        "msgq: REDIS_URL reaches a node of a Redis Cluster (cluster_enabled:1). msgq does not "
        "run on Redis Cluster yet: give it one Redis node or a Sentinel-watched primary "
        "(redis://, rediss://, unix://, redis+sentinel://); see docs/operations/redis-cluster.md"
    ]


def test_the_cluster_scheme_is_refused_in_one_line(cluster: RedisCluster, tmp_path: Path) -> None:
    done = worker(cluster.url, tmp_path)
    assert done.returncode != 0
    assert "msgq does not run on Redis Cluster yet" in done.stderr
    assert "Traceback" not in done.stderr


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
