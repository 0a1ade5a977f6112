"""Stopping tasks on Python 3.11, where a cancellation can be lost: cancel again until they end.

`asyncio.wait_for` on 3.11 returns the inner result, not the `CancelledError`, when its task is
cancelled just as the inner awaitable finishes (gh-86296, fixed in 3.12), and redis-py wraps
every socket write in it when the connection has a socket timeout (a cluster's or Sentinel's
pools). A loop cancelled while it sends a command then goes on as if nothing happened: the
worker's dispatcher outlived its shutdown, ticking on a closed client, and a test's event loop
waited for it forever (one run in six on the 16-partition cluster). A cancellation that lands
on any other await is kept, so cancelling again every `every_s` ends such a loop at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

CANCEL_AGAIN_S = 0.05


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], timeout_s: float | None = None
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` (again while any still runs) until every one has ended, or `timeout_s`
    has passed; the ones still running then. Their results and errors are left to them."""
    pending = {task for task in tasks if not task.done()}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        for task in pending:
            task.cancel()
        wait_s = CANCEL_AGAIN_S
        if deadline is not None:
            wait_s = min(wait_s, deadline - time.monotonic())
            if wait_s <= 0:
                break
        _, pending = await asyncio.wait(pending, timeout=wait_s)
    return pending
