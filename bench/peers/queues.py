"""The queue peers beside msgq: plain arq, Celery (gevent; requests and httpx) and BullMQ.

Each row: 3,000 jobs at 512 in flight, one worker process, a Redis of its own, the same
simulator (3 s a call, top-tier limits) and the aiohttp loop measured on it in the same run.
A peer whose environment cannot be installed, or whose run fails, is a row saying why.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import redis_server
from bench.peers.common import load_average, measure, peer_env
from bench.peers.envs import Env, node_env, python_env


@dataclass
class QueuePeer:
    """How to install a peer and the commands that run its worker and its producer."""

    label: str
    install: Callable[[], Env]
    worker: Callable[[Env], list[str]]
    producer: Callable[[Env], list[str]]
    env: dict[str, str] = field(default_factory=dict)


def _arq() -> Env:
    return python_env("arq", ["arq", "aiohttp"], ["arq", "aiohttp"])


def _celery() -> Env:
    specs = ["celery[redis]", "gevent", "requests", "httpx"]
    return python_env("celery", specs, ["celery", "gevent", "requests", "httpx"])


def _bullmq() -> Env:
    return node_env("bullmq", ["bullmq", "ioredis"])


def _py(script: str, mode: str) -> Callable[[Env], list[str]]:
    return lambda env: [str(env.bin / "python"), script, mode]


CELERY_WORKER = ["worker", "-P", "gevent", "-c", "512", "--loglevel", "warning", "--without-gossip"]


def _celery_worker(env: Env) -> list[str]:
    return [str(env.bin / "celery"), "-A", "celery_script", *CELERY_WORKER, "--without-mingle"]


def _node(mode: str) -> Callable[[Env], list[str]]:
    return lambda _env: ["node", "bullmq_script.cjs", mode]


PEERS = [
    QueuePeer(
        "arq + aiohttp, max_jobs 512, poll 0.5 s (arq's default)",
        _arq,
        _py("arq_script.py", "worker"),
        _py("arq_script.py", "produce"),
    ),
    QueuePeer(
        "arq + aiohttp, max_jobs 512, poll 10 ms (msgq's)",
        _arq,
        _py("arq_script.py", "worker"),
        _py("arq_script.py", "produce"),
        {"ARQ_POLL_DELAY": "0.01"},
    ),
    QueuePeer(
        "Celery + requests, gevent pool 512",
        _celery,
        _celery_worker,
        _py("celery_script.py", "produce"),
        {"PEER_CLIENT": "requests"},
    ),
    QueuePeer(
        "Celery + httpx, gevent pool 512",
        _celery,
        _celery_worker,
        _py("celery_script.py", "produce"),
        {"PEER_CLIENT": "httpx"},
    ),
    QueuePeer(
        "BullMQ + fetch, concurrency 512",
        _bullmq,
        _node("worker"),
        _node("produce"),
    ),
]


async def run_peer(peer: QueuePeer, sim: str, tmp: Path, n: int, base_jobs_s: float) -> list[Any]:
    """One row: label, versions, jobs, ok, jobs/s, ratio to the aiohttp loop, CPU, load."""
    load = load_average()
    print(f"peers: {peer.label}, {n} jobs, load average {load}", flush=True)
    env = peer.install()
    if env.path is None:
        return [peer.label, "not installed", n, "-", "-", "-", "-", load, env.reason]
    extra = dict(peer.env)
    if env.path.joinpath("node_modules").exists():
        extra["NODE_PATH"] = str(env.path / "node_modules")
    slug = "".join(c if c.isalnum() else "-" for c in peer.label)[:40]
    try:
        with redis_server(tmp / f"peer-{slug}") as redis:
            result = await measure(
                peer.worker(env),
                peer.producer(env),
                peer_env(redis.url, sim, **extra),
                n,
                tmp / f"peer-{slug}.log",
            )
    except Exception as exc:  # a failed run is a row, not a crash of make bench
        return [peer.label, env.versions, n, "-", "-", "-", "-", load, f"run failed: {exc}"]
    return [
        peer.label,
        env.versions,
        n,
        result["ok"],
        round(result["jobs_s"], 1),
        f"{result['jobs_s'] / base_jobs_s:.2f}",
        f"{result['cpu_ms']:.2f}",
        load,
        "",
    ]


def selected() -> list[QueuePeer]:
    """MSGQ_BENCH_PEERS=arq,celery,... runs a subset (while developing); all by default."""
    wanted = os.environ.get("MSGQ_BENCH_PEERS")
    if not wanted:
        return PEERS
    keys = [w.strip().lower() for w in wanted.split(",")]
    return [p for p in PEERS if any(p.label.lower().startswith(k) for k in keys)]
