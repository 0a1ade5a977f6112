"""`msgq.cancel.cancel_and_wait`: a task that lost a cancellation (as Python 3.11's `wait_for`
loses one when its inner await finishes at the same moment) is cancelled again until it ends."""

from __future__ import annotations

import asyncio
import contextlib

from msgq.cancel import cancel_and_wait


async def test_a_task_that_lost_its_cancellation_is_stopped_all_the_same() -> None:
    started = asyncio.Event()

    async def loses_one() -> None:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as 3.11's wait_for loses it
            await asyncio.sleep(30)
        await asyncio.Event().wait()  # a background loop going on as if nothing happened

    task = asyncio.create_task(loses_one())
    await started.wait()  # the first cancellation lands inside it, where it is lost
    assert await cancel_and_wait([task], timeout_s=5) == set()
    assert task.cancelled()


async def test_a_task_that_will_not_end_is_given_back_after_the_timeout() -> None:
    ignoring, started = True, asyncio.Event()

    async def ignores_them() -> None:
        started.set()
        while ignoring:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(ignores_them())
    await started.wait()
    assert await cancel_and_wait([task], timeout_s=0.3) == {task}
    ignoring = False
    assert await cancel_and_wait([task], timeout_s=5) == set()
