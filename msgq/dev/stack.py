"""Starts and stops a local msgq: embedded Redis, the simulator (when no key), workers, API."""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from msgq.dev.embedded_redis import EmbeddedRedis, free_port
from msgq.dev.managed import Managed


def msgq_command(*args: str) -> list[str]:
    """`msgq ARGS` run with this interpreter, so it works before the console script is on PATH."""
    return [sys.executable, "-m", "msgq.cli.main", *args]


def wait_http(
    url: str, *, timeout_s: float = 15.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if process is not None and process.poll() is not None:
                msg = f"{' '.join(process.args)} exited with {process.returncode}"  # type: ignore[arg-type]
                raise RuntimeError(msg) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def simulator_on_free_port(*flags: str) -> Iterator[str]:
    """A simulator of its own (its URL), started with `flags` on a free loopback port and
    stopped on exit, SIGKILLed if it lingers: what tests and benchmarks start beside the
    session's or the stack's."""
    port = free_port()
    process = subprocess.Popen(
        msgq_command("simulator", "--port", str(port), *flags), stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_sim/stats", process=process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class PortInUseError(RuntimeError):
    """A fixed port of `msgq dev` is taken: fail, rather than move where nothing looks."""


DEV_ENV = "dev.env"  # under the data dir: what `msgq dev` serves, read by the CLI
API_KEY_FILE = "api-key"  # under the data dir: the generated key, kept across restarts
WEBHOOK_SECRET_FILE = "webhook-secret"  # under the data dir: signs the stack's webhooks


def kept_secret(path: Path, make: str) -> str:
    """The secret in `path`, else `make`, written there (owner-only) for the next start: a
    service configured with `msgq dev`'s key or webhook secret keeps working after a restart."""
    if path.is_file() and (kept := path.read_text().strip()):
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(make + "\n")
    return make


def port_is_free(port: int) -> bool:
    """Free as the servers will bind it (SO_REUSEADDR), so a port left in TIME_WAIT by the
    previous run counts as free; only a live listener makes it taken."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def claim_port(port: int, what: str, option: str) -> int:
    """`port` when free (0: any free port), else PortInUseError naming who to stop."""
    if port == 0:
        return free_port()
    if not port_is_free(port):
        msg = (
            f"port {port} ({what}) is in use: another `msgq dev` or server is running there. "
            f"Stop it, or choose another port with {option}"
        )
        raise PortInUseError(msg)
    return port


@dataclass(frozen=True)
class DevPorts:
    """`msgq dev`'s fixed ports: the defaults every other command assumes."""

    redis: int = 6379
    api: int = 8000
    simulator: int = 8787


class Stack(Managed):
    """Everything `msgq dev` and `make demo` need, on loopback.

    Children run in their own sessions, so a Ctrl-C in the terminal reaches only this process,
    which then stops them in dependency order: the API (no new work), the workers (with their
    grace: an interrupted call goes back to `queued`, its attempt refunded), the simulator
    they were calling, and Redis last.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        use_simulator: bool,
        workers: int = 1,
        log: IO[bytes] | None = None,
        extra_env: dict[str, str] | None = None,
        redis_url: str | None = None,
        ports: DevPorts | None = None,
        worker_grace_s: float = 30.0,
        also_announce: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        # A second dev.env, at ./.msgq/dev.env where the CLI looks, when the data dir is
        # elsewhere (`msgq dev --data-dir D`): otherwise no other command run here found it.
        self.also_announce = also_announce
        self.use_simulator = use_simulator
        self.workers = workers
        self.log = log
        self.worker_grace_s = worker_grace_s
        # None: any free ports (make demo, tests). Given: those ports or PortInUseError.
        self.ports = ports
        redis_port = None
        if ports is not None and not redis_url:
            redis_port = claim_port(ports.redis, "Redis", "--redis-port")
        # An explicit REDIS_URL wins: then no embedded server is started.
        self.redis: EmbeddedRedis | None = (
            None if redis_url else EmbeddedRedis(data_dir / "redis", port=redis_port)
        )
        self.redis_url = redis_url or (self.redis.url if self.redis else "")
        self.simulator_url: str | None = None
        self.api_url: str | None = None
        self.api_key: str | None = None  # generated (and kept) when MSGQ_API_KEYS is unset
        self.admin_key: str | None = None
        self.webhook_secret_path: Path | None = None  # provisioned when none is configured
        self.api: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        self.simulator: subprocess.Popen[bytes] | None = None
        # MSGQ_DEV_CHILD: `msgq dev` warned about misspelt variables; its children need not.
        self.env = {**os.environ, **(extra_env or {}), "MSGQ_DEV_CHILD": "1"}

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """Every child, in the order they stop."""
        children = [self.api, *self.worker_processes, self.simulator]
        return [p for p in children if p is not None]

    @property
    def dev_env_path(self) -> Path:
        return self.data_dir / DEV_ENV

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        # start_new_session: the terminal's SIGINT goes to `msgq dev` alone, which stops
        # the children in order; otherwise all die at once and in-flight calls are lost.
        return subprocess.Popen(
            msgq_command(*args),
            env=self.env,
            stdout=self.log,
            stderr=self.log,
            start_new_session=True,
        )

    def _port(self, which: str, what: str, option: str) -> int:
        if self.ports is None:
            return free_port()
        return claim_port(getattr(self.ports, which), what, option)

    def start(self) -> None:
        if self.redis is not None:
            self.redis.start()
        self.env["REDIS_URL"] = self.redis_url
        if self.use_simulator:
            port = self._port("simulator", "the simulator", "--sim-port")
            self.simulator = self._spawn("simulator", "--port", str(port))
            self.simulator_url = f"http://127.0.0.1:{port}"
            wait_http(f"{self.simulator_url}/_sim/stats", process=self.simulator)
            self.env["ANTHROPIC_BASE_URL"] = self.simulator_url
            # The simulator accepts any key; this one exists only on this machine.
            self.env["ANTHROPIC_API_KEY"] = "sk-ant-simulator-local"
        self.env.setdefault("MSGQ_SHUTDOWN_GRACE_S", str(int(self.worker_grace_s)))
        if not self.env.get("MSGQ_WEBHOOK_SECRET"):
            # Without one, a job's webhook was accepted and then never delivered.
            path = self.data_dir / WEBHOOK_SECRET_FILE
            fresh = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            self.env["MSGQ_WEBHOOK_SECRET"] = kept_secret(path, fresh)
            self.webhook_secret_path = path
        for _ in range(self.workers):
            self.worker_processes.append(self._spawn("worker"))
        self._start_api()
        self._write_dev_env()

    def _start_api(self) -> None:
        if not (self.env.get("MSGQ_API_KEYS") or self.env.get("MSGQ_API_KEYS_FILE")):
            # A key made for this data dir: a laptop API is still not an open one. It is
            # also an admin key, so /ui shows every job, the CLI's (no tenant) included.
            made = "msgq-dev-" + secrets.token_hex(8)
            key = kept_secret(self.data_dir / API_KEY_FILE, made)
            self.env["MSGQ_API_KEYS"] = f"dev:{key}"
            self.env.setdefault("MSGQ_ADMIN_KEYS", key)
            self.api_key = key
            self.admin_key = key if self.env["MSGQ_ADMIN_KEYS"] == key else None
        port = self._port("api", "the HTTP API", "--api-port")
        self.api = self._spawn("api", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.api_url}/healthz", process=self.api)

    def _write_dev_env(self) -> None:
        """Where this stack serves, for the CLI run from this directory (REDIS_URL unset)."""
        lines = [
            "# Written by `msgq dev` while it runs; removed when it stops.",
            f"REDIS_URL={self.redis_url}",
            f"MSGQ_API_URL={self.api_url}",
        ]
        for path in (self.dev_env_path, self.also_announce):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(lines) + "\n")

    def stop(self) -> None:
        self.dev_env_path.unlink(missing_ok=True)
        if self.also_announce is not None:
            self.also_announce.unlink(missing_ok=True)
        _stop([self.api] if self.api else [], timeout_s=10)
        grace_s = float(self.env.get("MSGQ_SHUTDOWN_GRACE_S", self.worker_grace_s))
        _stop(self.worker_processes, timeout_s=grace_s + 5)
        _stop([self.simulator] if self.simulator else [], timeout_s=5)
        if self.redis is not None:
            self.redis.stop()


def _stop(processes: list[subprocess.Popen[bytes]], *, timeout_s: float) -> None:
    """SIGTERM these together, wait for them (then SIGKILL), before the next group is told."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
