"""The Lua scripts behind the job store's writes: compare-and-set on a record and create-if-absent,
each running a list of commands collected (not sent) by `Recorder`, in one round trip.

Every key those commands write is declared in the call's KEYS (`flatten`), and ARGV names it by
its place there: Redis asks that a script touch only the keys it is given (a Redis Cluster
routes and checks a script by them; Dragonfly refuses an undeclared key outright), and so the
cluster itself refuses, with `CROSSSLOT`, a write that strays out of the record's slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands.core import CoreCommands

# Runs the commands flattened into ARGV from index `i` (`flatten`): a count, then each command
# as its length n and its words: a command on a key as n > 0, its name, its key's place in KEYS,
# its other arguments; one naming no key (a channel's PUBLISH) as -n and its words as they are.
# One word is msgq's own, not Redis's: WAKE_ONCE (`msgq.tenancy.scheduling.wake_dispatcher`).
_RUN_COMMANDS = """
local function run(i)
  for _ = 1, tonumber(ARGV[i]) do
    local n = tonumber(ARGV[i + 1])
    if n < 0 then
      redis.call(unpack(ARGV, i + 2, i + 1 - n))
      i = i + 1 - n
    else
      local name, key = ARGV[i + 2], KEYS[tonumber(ARGV[i + 3])]
      if name == 'WAKE_ONCE' then
        -- key: the flag a wake is owed; then its ms, the publish command, channel, message
        if redis.call('SET', key, '1', 'NX', 'PX', ARGV[i + 4]) then
          redis.call(ARGV[i + 5], ARGV[i + 6], ARGV[i + 7])
        end
      else
        redis.call(name, key, unpack(ARGV, i + 4, i + 1 + n))
      end
      i = i + n + 1
    end
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


# Whose first argument is a channel, not a key.
NO_KEY = frozenset({"PUBLISH", "SPUBLISH"})


def flatten(commands: Sequence[tuple[Any, ...]], keys: list[Any]) -> list[Any]:
    """Commands as the scripts' ARGV carries them (see `_RUN_COMMANDS`), each key they write
    added to `keys` (the call's KEYS) once and named by its place there. A DEL of several keys
    becomes one DEL a key (the scripts use no command's reply)."""
    place = {key: n for n, key in enumerate(keys, start=1)}
    flat: list[Any] = [0]
    for name, *words in commands:
        verb = str(name).upper()
        if verb in NO_KEY or not words:
            flat += [-(len(words) + 1), name, *words]
            flat[0] += 1
            continue
        singles = [[key] for key in words] if verb == "DEL" else [words]
        for key, *rest in singles:
            if key not in place:
                keys.append(key)
                place[key] = len(keys)
            flat += [len(rest) + 2, name, place[key], *rest]
            flat[0] += 1
    return flat


class Recorder(CoreCommands):
    """Collects the commands `_write` issues, exactly as redis-py would send them, for the
    compare-and-set script to run: a pipeline's machinery costs more than the write itself."""

    connection_pool: Any = None  # never connects
    in_script = True  # what it records runs in a script (`wake_dispatcher` asks)

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> Recorder:
        self.commands.append(args)
        return self
