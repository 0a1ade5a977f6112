"""A Sentinel-managed Redis on loopback from the bundled binary: a primary, a replica and three
Sentinels (`valkey-server --sentinel`), for tests and for trying failover by hand."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from msgq.dev.embedded_redis import free_ports, server_binary
from msgq.dev.managed import ManagedServers

SERVICE = "mymaster"
START_ATTEMPTS = 3  # a port taken by another process between choosing it and binding it


class ServerExitedError(RuntimeError):
    """A server exited while starting (its port taken since it was chosen, as a rule)."""


class SentinelCluster(ManagedServers):
    """`with SentinelCluster(tmp) as c: c.url` — `redis+sentinel://` for the three Sentinels.

    Fast detection for tests: the primary is judged down after `down_after_ms` (Redis' default
    is 30 s) and two of the three Sentinels must agree (the quorum)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.data_dir = data_dir
        self.password = password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._choose_ports()

    def _choose_ports(self) -> None:
        self.primary_port, self.replica_port, *self.sentinel_ports = free_ports(5)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0"

    def start(self, *, timeout_s: float = 30.0) -> None:
        """Start the five servers; on fresh ports again if one could not bind its port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_all(timeout_s)
                return
            except ServerExitedError:
                if attempt == START_ATTEMPTS:
                    raise
                self.stop()
                self.processes.clear()
                self._choose_ports()

    def _start_all(self, timeout_s: float) -> None:
        self.start_server(self.primary_port)
        self.start_server(self.replica_port, replica_of=self.primary_port)
        # Linked before the Sentinels start: their first INFO of the primary then lists the
        # replica; one they miss is found only at the next INFO, 10 s later.
        self.wait_for_replica(self.replica_port, timeout_s=timeout_s)
        for port in self.sentinel_ports:
            self._start_sentinel(port)
        self._wait(self._ready, timeout_s, "the primary, its replica and three Sentinels")

    def start_server(self, port: int, *, replica_of: int | None = None) -> None:
        """(Re)start a data node on `port`: an empty one, as after losing its host."""
        args = [
            server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--dbfilename", f"dump-{port}.rdb",
            "--save", "",
            "--appendonly", "no",
            # A primary otherwise waits 5 s for more replicas before a first full sync: every
            # start, and every rejoin after a failover, spent 5 s on it.
            "--repl-diskless-sync-delay", "0",
            "--logfile", str(self.data_dir / f"redis-{port}.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self._spawn(port, args)
        self._wait(lambda: self._answers(port), 10.0, f"the server on port {port}")

    def _start_sentinel(self, port: int) -> None:
        conf = self.data_dir / f"sentinel-{port}.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.data_dir}",
            f"logfile {self.data_dir / f'sentinel-{port}.log'}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
            f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        conf.write_text("\n".join(lines) + "\n")  # Sentinel rewrites its own config file
        self._spawn(port, [server_binary(), str(conf), "--sentinel"])

    def _spawn(self, port: int, args: list[str]) -> None:
        self.processes[port] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def primary(self) -> tuple[str, int] | None:
        """The primary as the first Sentinel that answers sees it (None: none answers)."""
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    host, primary_port = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                    return host.decode(), int(primary_port)
            except redis.RedisError:
                continue
        return None

    def wait_for_primary(self, *, other_than: int, timeout_s: float = 30.0) -> int:
        """Block until every Sentinel names a primary other than `other_than`; its port."""

        def promoted() -> bool:
            seen = {self._primary_seen_by(p) for p in self.sentinel_ports}
            return len(seen) == 1 and None not in seen and other_than not in seen

        self._wait(promoted, timeout_s, "a new primary")
        new = self.primary()
        assert new is not None
        return new[1]

    def rejoin(self, port: int) -> None:
        """Restart a lost node, empty, as a replica of the current primary: what a supervisor
        that asks Sentinel first does (Sentinel itself converts a returning old primary only
        after about 8 s of seeing it up)."""
        primary = self.primary()
        assert primary is not None
        assert primary[1] != port
        self.start_server(port, replica_of=primary[1])
        self.wait_for_replica(port)

    def wait_for_replica(self, port: int, *, timeout_s: float = 30.0) -> None:
        """Block until the node on `port` is a replica with its link to the primary up."""

        def linked() -> bool:
            info = self._info(port, "replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        self._wait(linked, timeout_s, f"port {port} replicating")

    def _ready(self) -> bool:
        info = self._info(self.replica_port, "replication")
        if info.get("master_link_status") != "up":
            return False
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=1) as sentinel:
                    state = sentinel.sentinel_master(SERVICE)
            except redis.RedisError:
                return False
            # Sentinels find each other through the primary, about every 2 s; a failover needs
            # a majority that knows the others.
            if state.get("num-other-sentinels") != 2 or state.get("num-slaves") != 1:
                return False
        return True

    def _primary_seen_by(self, port: int) -> int | None:
        try:
            with redis.Redis(port=port, socket_timeout=1) as sentinel:
                return int(sentinel.sentinel_get_master_addr_by_name(SERVICE)[1])
        except redis.RedisError:
            return None

    def _info(self, port: int, section: str) -> dict[str, object]:
        try:
            with redis.Redis(port=port, password=self.password, socket_timeout=1) as node:
                return dict(node.info(section))
        except redis.RedisError:
            return {}

    def _answers(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, password=self.password, socket_timeout=1) as node:
                return bool(node.ping())
        except redis.RedisError:
            return False

    def _wait(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `check` until it holds; fails at once when a server this waits on has exited
        (a port taken: its log says so) rather than at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not check():
            exited = [port for port, proc in self.processes.items() if proc.poll() is not None]
            if exited:
                msg = f"the server on port {exited[0]} exited (waiting for {what}; logs: "
                msg += f"{self.data_dir})"
                raise ServerExitedError(msg)
            if time.monotonic() > deadline:
                msg = f"timed out after {timeout_s:g}s waiting for {what} (logs: {self.data_dir})"
                raise TimeoutError(msg)
            time.sleep(0.05)
