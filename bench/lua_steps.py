"""The fleet-wide slot's two Lua steps a job, timed by Redis itself: the dispatcher's admission of
a run of 64 jobs (`worker.dispatch.admit.ADMIT_MANY`) and 32 endings' bucket corrections in one
call (`worker.ratelimit_scripts.ADJUST`). On a Redis Cluster these run on the master holding the
deployment's own slot, whatever the partitions, so they bound that master's share
(issue 32's busiest master).

SLOWLOG at 0 µs records each script's execution time; the median of 60 calls on a fresh
embedded Redis (no AOF), every job admitted. `python -m bench.lua_steps`: a few seconds.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import redis as redis_sync

from msgq.dev.embedded_redis import EmbeddedRedis
from worker.dispatch.admit import ADMIT_MANY
from worker.ratelimit_scripts import ADJUST

ROUNDS = 60
RUN = 64  # ADMIT_RUN
ENDINGS = 32


def _admit_args(rep: int, now: int, client: redis_sync.Redis) -> list[object]:
    args: list[object] = []
    for j in range(RUN):
        job = f"job-{rep}-{j}"
        client.zadd("q", {job: j})
        client.hset("where", job, "q")
        client.hset("est", job, "x")
        # the queue's place in KEYS, then `acquire`'s 11 (worker.ratelimit.RateLimiter.step_args)
        args += [7, now, 1, 100, 600, 40000, 40000000, 8000000, job, 60000, 5000, 0.5]
    return args


def _adjust_args(now: int) -> list[object]:
    args: list[object] = []
    for j in range(ENDINGS):  # refunds r/i/o, learned limit and remaining per bucket, caps, ...
        args += [0, 10, 500, "40000", "39990", "40000000", "39990000", "8000000", "7990000"]
        args += [40000, 40000000, 8000000, now + 100, 60000, 6 + j]
    return args


def measure() -> tuple[float, float]:
    """(ADMIT_MANY of 64 jobs, ADJUST of 32 endings): median µs of Redis time a call."""
    server = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="lua-steps-")), appendonly=False)
    server.start()
    admit_us: list[int] = []
    adjust_us: list[int] = []
    try:
        client = redis_sync.Redis.from_url(server.url)
        admit, adjust = client.register_script(ADMIT_MANY), client.register_script(ADJUST)
        for rep in range(ROUNDS):
            client.flushall()
            now = int(time.time() * 1000)
            bucket = {"r": 40000, "i": 40000000, "o": 8000000, "t": now - 50, "n": 5}
            client.hset("b", mapping={**bucket, "R": 40000, "I": 40000000, "O": 8000000, "L": now})
            admit_args = _admit_args(rep, now, client)
            client.slowlog_reset()
            client.config_set("slowlog-log-slower-than", 0)
            admit(keys=["b", "cool", "pause", "where", "est", "dl", "q"], args=admit_args)
            adjust(keys=["b"], args=_adjust_args(now))
            client.config_set("slowlog-log-slower-than", 10000)
            for entry in client.slowlog_get(10):
                command = entry["command"]
                command = command if isinstance(command, bytes) else command.encode()
                if command.startswith(b"EVALSHA") and b" 7 b " in command[:60]:
                    admit_us.append(int(entry["duration"]))
                elif command.startswith(b"EVALSHA") and b" 1 b " in command[:60]:
                    adjust_us.append(int(entry["duration"]))
        client.close()
    finally:
        server.stop()
    return statistics.median(admit_us), statistics.median(adjust_us)


def main() -> None:
    admit_us, adjust_us = measure()
    print(f"admission, a run of {RUN} jobs: {admit_us:.0f} µs ({admit_us / RUN:.1f} a job)")
    per = adjust_us / ENDINGS
    print(f"bucket corrections, {ENDINGS} endings: {adjust_us:.0f} µs ({per:.1f} an ending)")


if __name__ == "__main__":
    main()
