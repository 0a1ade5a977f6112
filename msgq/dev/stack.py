"""Starts and stops a local msgq: embedded Redis, the simulator (when no key), workers, API."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
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


class Stack(Managed):
    """Everything `msgq dev` and `make demo` need, on loopback, stopped in reverse order."""

    def __init__(
        self,
        data_dir: Path,
        *,
        use_simulator: bool,
        workers: int = 1,
        log: IO[bytes] | None = None,
        extra_env: dict[str, str] | None = None,
        redis_url: str | None = None,
        default_ports: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.use_simulator = use_simulator
        self.workers = workers
        self.log = log
        # An explicit REDIS_URL wins: then no embedded server is started.
        # `msgq dev` takes the usual ports when free, so REDIS_URL's default and :8000 just work.
        self.default_ports = default_ports
        redis_port = free_port(6379) if default_ports else None
        self.redis: EmbeddedRedis | None = (
            None if redis_url else EmbeddedRedis(data_dir / "redis", port=redis_port)
        )
        self.redis_url = redis_url or (self.redis.url if self.redis else "")
        self.simulator_url: str | None = None
        self.api_url: str | None = None
        self.api_key_hint = "from MSGQ_API_KEYS"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, **(extra_env or {})}

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            msgq_command(*args), env=self.env, stdout=self.log, stderr=self.log
        )
        self.processes.append(process)
        return process

    def start(self) -> None:
        if self.redis is not None:
            self.redis.start()
        self.env["REDIS_URL"] = self.redis_url
        if self.use_simulator:
            port = free_port()
            process = self._spawn("simulator", "--port", str(port))
            self.simulator_url = f"http://127.0.0.1:{port}"
            wait_http(f"{self.simulator_url}/_sim/stats", process=process)
            self.env["ANTHROPIC_BASE_URL"] = self.simulator_url
            # The simulator accepts any key; this one exists only on this machine.
            self.env["ANTHROPIC_API_KEY"] = "sk-ant-simulator-local"
        for _ in range(self.workers):
            self._spawn("worker")
        self._start_api()

    def _start_api(self) -> None:
        if not (self.env.get("MSGQ_API_KEYS") or self.env.get("MSGQ_API_KEYS_FILE")):
            # A key made for this run only: a laptop API is still not an open one.
            key = "msgq-dev-" + secrets.token_hex(8)
            self.env["MSGQ_API_KEYS"] = f"dev:{key}"
            self.api_key_hint = key
        port = free_port(8000) if self.default_ports else free_port()
        process = self._spawn("api", "--port", str(port))
        self.api_url = f"http://127.0.0.1:{port}"
        wait_http(f"{self.api_url}/healthz", process=process)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.redis is not None:
            self.redis.stop()
