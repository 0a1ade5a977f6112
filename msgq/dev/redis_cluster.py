"""A Redis Cluster on loopback from the bundled binary (`valkey-server --cluster-enabled yes`):
three masters sharing the 16,384 hash slots, each with an optional replica, for tests and for
trying msgq on a cluster by hand. Built with the cluster's own commands (CLUSTER MEET,
ADDSLOTSRANGE, REPLICATE): no `valkey-cli --cluster create` needed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from msgq.dev.embedded_redis import free_ports, server_binary
from msgq.dev.managed import ManagedServers

SLOTS = 16384
START_ATTEMPTS = 3  # a port taken by another process between choosing it and binding it


class ClusterStartError(RuntimeError):
    """The cluster did not come up (a server exited, or the slots never all agreed)."""


class RedisCluster(ManagedServers):
    """`with RedisCluster(tmp) as c: c.url` — `redis+cluster://` naming every master."""

    def __init__(
        self,
        data_dir: Path,
        *,
        masters: int = 3,
        replicas: bool = False,
        appendonly: bool = False,
    ) -> None:
        """`appendonly`: each node keeps an AOF (fsync every second), as a deployed node does
        and as the one node `bench.cluster` compares with: the tests go without."""
        self.data_dir = data_dir
        self.masters = masters
        self.with_replicas = replicas
        self.appendonly = appendonly
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._choose_ports()

    def _choose_ports(self) -> None:
        nodes = self.masters * (2 if self.with_replicas else 1)
        # A node's cluster bus defaults to its port + 10,000, which does not exist above 55,535
        # (where free ports often are) and may be taken: each node gets a bus port of its own.
        ports = free_ports(nodes * 2)
        self.master_ports = ports[: self.masters]
        self.replica_ports = ports[self.masters : nodes]
        self.bus_ports = dict(zip(ports[:nodes], ports[nodes:], strict=True))

    @property
    def ports(self) -> list[int]:
        return [*self.master_ports, *self.replica_ports]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.master_ports)

    def start(self, *, timeout_s: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_all(timeout_s)
                return
            except (ClusterStartError, redis.RedisError):
                if attempt == START_ATTEMPTS:
                    raise
                self.stop()
                self.processes.clear()
                self._choose_ports()

    def _start_all(self, timeout_s: float) -> None:
        for port in self.ports:
            self.start_server(port)
        first = self.master_ports[0]
        for port in self.ports[1:]:
            self._command(first, "CLUSTER MEET", "127.0.0.1", port, self.bus_ports[port])
        share = SLOTS // self.masters
        for n, port in enumerate(self.master_ports):
            last = SLOTS - 1 if n == self.masters - 1 else (n + 1) * share - 1
            self._command(port, "CLUSTER ADDSLOTSRANGE", n * share, last)
        self._wait(self._all_known, timeout_s, "every node to know every other")
        for master, replica in zip(self.master_ports, self.replica_ports, strict=False):
            node_id = self._command(master, "CLUSTER MYID")
            node_id = node_id.decode() if isinstance(node_id, bytes) else node_id
            self._command(replica, "CLUSTER REPLICATE", node_id)
        self._wait(self._ok, timeout_s, "cluster_state:ok on every node")

    def start_server(self, port: int) -> None:
        args = [
            server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-port", str(self.bus_ports[port]),
            "--cluster-config-file", str(self.data_dir / f"nodes-{port}.conf"),
            "--cluster-node-timeout", "2000",
            "--dir", str(self.data_dir),
            "--dbfilename", f"dump-{port}.rdb",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--appenddirname", f"aof-{port}",
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(self.data_dir / f"redis-{port}.log"),
        ]  # fmt: skip
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait(lambda: self._answers(port), 10.0, f"the server on port {port}")

    def owner(self, slot: int) -> int | None:
        """The port of the master serving `slot`, as the first live node answering says."""
        for port in self.processes:
            try:
                answer = self._command(port, "CLUSTER SLOTS")
            except redis.RedisError:
                continue
            for start, end, master, *_ in answer:
                if int(start) <= slot <= int(end):
                    return int(master[1])
        return None

    def wait_for_owner(self, slot: int, *, other_than: int, timeout_s: float = 30.0) -> int:
        """Block until a master other than `other_than` serves `slot` and the cluster is ok
        again (a replica promoted after a kill); its port."""

        def promoted() -> bool:
            owner = self.owner(slot)
            return owner not in (None, other_than) and self._ok()

        self._wait(promoted, timeout_s, f"a new master for slot {slot}")
        owner = self.owner(slot)
        assert owner is not None
        return owner

    def rejoin(self, port: int, *, timeout_s: float = 30.0) -> None:
        """Restart a killed node with its cluster config: a master whose slots were taken over
        comes back as a replica of the one that took them, and syncs from it."""
        self.start_server(port)

        def linked() -> bool:
            info = self._command(port, "INFO", "replication")
            return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")

        self._wait(linked, timeout_s, f"port {port} replicating")

    def move_slot(self, slot: int, *, to: int) -> None:
        """Hand an empty slot to the master on port `to` (CLUSTER SETSLOT ... NODE, told to
        every node), as a resharding does once the slot's keys have moved."""
        target = self._command(to, "CLUSTER MYID")
        target = target.decode() if isinstance(target, bytes) else target
        for port in [to, *(p for p in self.processes if p != to)]:
            self._command(port, "CLUSTER SETSLOT", slot, "NODE", target)
        self._wait(lambda: self.owner(slot) == to and self._ok(), 10.0, f"slot {slot} moved")

    def keys_per_master(self) -> dict[int, int]:
        """DBSIZE of each master: how the keyspace spread."""
        return {port: int(self._command(port, "DBSIZE")) for port in self.master_ports}

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def _command(self, port: int, *args: Any) -> Any:
        with self._node(port) as node:
            return node.execute_command(*args)

    def _answers(self, port: int) -> bool:
        process = self.processes.get(port)
        if process is not None and process.poll() is not None:
            msg = f"the server on port {port} exited while starting"
            raise ClusterStartError(msg)
        try:
            return bool(self._command(port, "PING"))
        except redis.RedisError:
            return False

    def _all_known(self) -> bool:
        for port in self.ports:
            nodes = self._command(port, "CLUSTER NODES")  # parsed: address -> node
            flags = [str(node.get("flags", "")) for node in nodes.values()]
            if len(nodes) != len(self.ports) or any("handshake" in f for f in flags):
                return False
        return True

    def _ok(self) -> bool:
        for port in self.processes:
            if self._command(port, "CLUSTER INFO").get("cluster_state") != "ok":
                return False
        return True

    def _wait(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                msg = f"timed out waiting for {what}"
                raise ClusterStartError(msg)
            time.sleep(0.05)
