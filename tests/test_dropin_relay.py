"""The API process's view of a relayed stream (`RelayState`): which attempt the caller follows,
and whose request ID its headers carry. Pure logic, fed the relay's messages as they arrive."""

from __future__ import annotations

from msgq.http.dropin.stream import RelayState
from msgq.keys import RELAY_FAILED, RELAY_REQUEST_ID


def msg(attempt: int, name: str, data: str = "{}") -> bytes:
    return f"{attempt}\n{name}\n{data}".encode()


def test_the_committed_attempts_request_id_is_the_callers() -> None:
    """Attempt 1 announces its ID and fails before content (retried invisibly); attempt 2's ID
    is the one the caller's headers get, once its content commits the caller to it. The
    announcements themselves are never sent to the caller."""
    state = RelayState()
    assert state.feed(msg(1, RELAY_REQUEST_ID, "req_one")) == ([], None)
    assert state.feed(msg(1, "message_start")) == ([], None)
    assert state.request_id is None  # nothing committed yet
    assert (
        state.feed(msg(1, RELAY_FAILED, '{"type": "overloaded_error", "message": "x"}'))[1] is None
    )
    assert state.feed(msg(2, RELAY_REQUEST_ID, "req_two")) == ([], None)
    state.feed(msg(2, "message_start"))
    frames, error = state.feed(msg(2, "content_block_start"))
    assert error is None and len(frames) == 2 and b"msgq_request_id" not in b"".join(frames)
    assert state.request_id == "req_two"


def test_a_worker_that_announces_no_request_id_leaves_the_header_to_msgq() -> None:
    """A worker of the previous release relays events only: the stream works, and the
    caller's `request-id` is msgq's own (set by the middleware)."""
    state = RelayState()
    state.feed(msg(1, "message_start"))
    frames, error = state.feed(msg(1, "content_block_start"))
    assert error is None and len(frames) == 2
    assert state.request_id is None
