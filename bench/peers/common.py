"""How a queue peer is measured, the same way for every one of them.

The peer's worker is started first and given time to connect (start-up is not throughput);
then its own producer (in the peer's environment, with the peer's client library) enqueues
every job and waits for every result. Each job records when it started and ended, as the
peer's task ran it, so the rate is jobs / (last end - first start): the queue's own work, not
the producer's start-up or its polling. CPU is the worker's process tree (Celery's and Node's
helpers included) from just before the first enqueue to the last result, read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.harness import KEY, process_cpu_s, text_request

HERE = Path(__file__).parent
READY_S = 4.0  # Celery's gevent pool and Node import for a second or two; then it idles


def load_average() -> str:
    """The 1/5/15-minute load average, printed beside every run: on 2 shared cores it says how
    much of the machine the run had."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, []))
    return tree


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process tree (children that ended and were reaped are in
    their parent's own counters only after wait: the peers' workers keep theirs alive)."""
    total = 0.0
    for member in descendants(pid):
        try:
            total += process_cpu_s(member)
        except (OSError, IndexError, ValueError):
            continue
    return total


def peer_env(redis_url: str, sim_url: str, **extra: str) -> dict[str, str]:
    """What every peer script reads: where Redis and the simulator are, the key, the body."""
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "SIM_URL": sim_url,
        "ANTHROPIC_API_KEY": KEY,
        "PEER_BODY": json.dumps(text_request(60)),
        **extra,
    }


@contextmanager
def worker_process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[int]:
    """A peer's worker in a session of its own, so its whole tree is stopped at the end."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            cmd, env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        time.sleep(READY_S)
        if process.poll() is not None:
            msg = f"worker exited {process.returncode}: {log.read_text()[-300:]}"
            raise RuntimeError(msg)
        yield process.pid
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


async def measure(
    worker_cmd: list[str], producer_cmd: list[str], env: dict[str, str], n: int, log: Path
) -> dict[str, Any]:
    """One queue peer's run: jobs/s, jobs that succeeded, worker CPU ms per job."""
    with worker_process(worker_cmd, env, log) as pid:
        cpu0 = tree_cpu_s(pid)
        producer = await asyncio.create_subprocess_exec(
            *producer_cmd,
            str(n),
            env=env,
            cwd=HERE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(producer.communicate(), timeout=900)
        cpu_ms = (tree_cpu_s(pid) - cpu0) * 1000 / n
    if producer.returncode != 0:
        msg = f"producer exited {producer.returncode}: {err.decode()[-300:]}"
        raise RuntimeError(msg)
    result = json.loads(out.decode().strip().splitlines()[-1])
    wall = result["last_end"] - result["first_start"]
    return {"ok": result["ok"], "jobs_s": result["ok"] / wall, "cpu_ms": cpu_ms}
