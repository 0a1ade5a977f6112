"""Prompt caching, enough of it for usage and ITPM to be honest: a request whose prompt prefix
up to a `cache_control` breakpoint was cached recently reads it (`cache_read_input_tokens`)
instead of paying for it, and those tokens do not count towards ITPM (reference §4.1, §8.2).

The rule: the prompt is tools, then system, then the messages' blocks, in that order. Each
block with `cache_control` is a breakpoint (a top-level `cache_control` puts one on the last
block). The longest breakpoint prefix still cached is read; the tokens from there up to the
last breakpoint are written, if that prefix reaches the model's minimum cacheable length
(shorter ones are silently not cached); the rest is `input_tokens`. An entry lives for its TTL
(`5m` or `1h`) from its last use. The cache is the organisation's, per model. Unlike the API,
no lookback over the 20 blocks before a breakpoint: only exact breakpoint prefixes match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

TTL_S = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True)
class Segment:
    tokens: int
    fingerprint: bytes
    cache_control: dict[str, Any] | None


@dataclass(frozen=True)
class CacheUse:
    """What one request reads and writes; `keys` are the breakpoint prefixes to store."""

    read: int = 0
    write: int = 0
    write_1h: int = 0  # of `write`, the tokens written with the 1-hour TTL
    keys: tuple[tuple[bytes, float], ...] = ()


def _fingerprint(item: Any) -> bytes:
    if isinstance(item, dict):
        item = {k: v for k, v in item.items() if k != "cache_control"}
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def segments(body: dict[str, Any], tokens_of: Callable[[Any, bool], int]) -> list[Segment]:
    """The prompt's blocks in cache order, each with its tokens: `tokens_of(item, is_tool)`."""
    items: list[Any] = list(body.get("tools") or [])
    tools = len(items)
    system = body.get("system")
    items += system if isinstance(system, list) else ([system] if system else [])
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        items += content if isinstance(content, list) else [content]
    found = [
        Segment(
            tokens_of(item, index < tools),
            _fingerprint(item),
            item.get("cache_control") if isinstance(item, dict) else None,
        )
        for index, item in enumerate(items)
    ]
    top = body.get("cache_control")
    if isinstance(top, dict) and found and found[-1].cache_control is None:
        last = found[-1]
        found[-1] = Segment(last.tokens, last.fingerprint, top)
    return found


@dataclass
class PromptCache:
    entries: dict[bytes, float] = field(default_factory=dict)  # prefix key -> expires at

    def plan(self, model: str, parts: list[Segment], *, min_tokens: int, now: float) -> CacheUse:
        """What this prompt would read and write now (nothing is stored until `commit`)."""
        digest = hashlib.sha256(model.encode())
        total, read, last_mark, breakpoints = 0, 0, 0, []
        for part in parts:
            digest.update(hashlib.sha256(part.fingerprint).digest())
            total += part.tokens
            if part.cache_control is None:
                continue
            key = digest.digest()
            ttl = TTL_S.get(str(part.cache_control.get("ttl", "5m")), TTL_S["5m"])
            last_mark = total
            if total >= min_tokens:
                breakpoints.append((key, ttl, total))
                if self.entries.get(key, 0.0) > now:
                    read = total
        if last_mark < min_tokens or not breakpoints:
            return CacheUse()
        write = max(0, breakpoints[-1][2] - read)
        write_1h = write if breakpoints[-1][1] == TTL_S["1h"] else 0
        keys = tuple((key, ttl) for key, ttl, _ in breakpoints)
        return CacheUse(read=read, write=write, write_1h=write_1h, keys=keys)

    def commit(self, use: CacheUse, now: float) -> None:
        for key, ttl in use.keys:
            self.entries[key] = max(self.entries.get(key, 0.0), now + ttl)
        if len(self.entries) > 10_000:  # a long benchmark: forget what has expired
            self.entries = {k: t for k, t in self.entries.items() if t > now}
