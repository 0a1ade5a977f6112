"""The Lua scripts behind the job store's writes: compare-and-set on a record and create-if-absent,
each running a list of commands collected (not sent) by `Recorder`, in one round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import CoreCommands

# Runs the commands flattened into ARGV from index `i`: a count, then each command as its
# argument count followed by its arguments.
_RUN_COMMANDS = """
local function run(i)
  for _ = 1, tonumber(ARGV[i]) do
    local n = tonumber(ARGV[i + 1])
    redis.call(unpack(ARGV, i + 2, i + 1 + n))
    i = i + n + 1
  end
end
"""
# KEYS: the record. ARGV: the JSON the caller expects it to hold, then the commands. Runs them
# all only if the record is unchanged; returns 1 when it did, 0 when the record had moved on
# (nothing is written).
COMPARE_AND_SET = (
    _RUN_COMMANDS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
run(2)
return 1
"""
)
# KEYS: the record, the job's payload. ARGV: the commands that create the job. Runs them only
# when neither exists (returns nil); else the existing record's JSON, or '' when only the
# payload exists (a raw producer's job whose record the worker has not written yet).
CREATE = (
    _RUN_COMMANDS
    + """
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
if redis.call('EXISTS', KEYS[2]) == 1 then return '' end
run(1)
return false
"""
)
# What `_write` may issue that a script can run too (a script cannot call EVALSHA).
SCRIPT_SAFE = frozenset(
    {
        "SET",
        "DEL",
        "EXPIRE",
        "INCR",
        "INCRBY",
        "HSET",
        "HDEL",
        "HINCRBY",
        "SADD",
        "SREM",
        "ZADD",
        "ZREM",
        "ZREMRANGEBYSCORE",
        "PUBLISH",
        "SPUBLISH",
    }
)


def flatten(commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Commands as the scripts' ARGV carries them (see `_RUN_COMMANDS`)."""
    flat: list[Any] = [len(commands)]
    for args in commands:
        flat += [len(args), *args]
    return flat


class Recorder(CoreCommands):
    """Collects the commands `_write` issues, exactly as redis-py would send them, for the
    compare-and-set script to run: a pipeline's machinery costs more than the write itself."""

    connection_pool: Any = None  # never connects

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Recorder:
        self.commands.append(args)
        return self
