"""How a drop-in call (`POST /v1/messages`) that did not succeed is answered: the API's status
and error body for what the API said, the closest of them for what msgq decided.

| the job's end                                   | status | `error.type`            |
|-------------------------------------------------|--------|-------------------------|
| the API's final error (400, 401, 403, 404, 413) | same   | the API's               |
| the API's retryable error, attempts used up     | same   | the API's               |
| `validation_error` (msgq's checks, or worker's) | 400    | `invalid_request_error` |
| `budget_exceeded` (tenant `on_budget = "fail"`) | 429    | `rate_limit_error`      |
| waiting for budget (`on_budget = "wait"`)       | 429    | `rate_limit_error`      |
| `expired` (deadline), `batch_expired`           | 504    | `timeout_error`         |
| `timeout` (no answer in time)                   | 504    | `timeout_error`         |
| `connection_error`, `invalid_response`          | 502    | `api_error`             |
| `canceled` (by someone else)                    | 409    | `conflict_error`        |
| anything else (`lost`, `internal_error`, ...)   | 500    | `api_error`             |

Every answer but the last row carries `x-should-retry: false`: msgq has already retried the call
as the job's policy allows (an SDK retrying on top would multiply the attempts), and a budget or
a bad request does not change in the SDK's half a second of backoff. The last row is msgq's own
fault (a job lost or a bug), where a new call may well succeed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from msgq.http.errors import ERROR_TYPES
from schemas import JobError, JobErrorType, JobRecord, JobStatus

# error.type as recorded (msgq's own kinds) -> the API's status and type.
OWN_ERRORS: dict[JobErrorType, tuple[int, str]] = {
    JobErrorType.VALIDATION: (400, "invalid_request_error"),
    JobErrorType.BUDGET_EXCEEDED: (429, "rate_limit_error"),
    JobErrorType.BATCH_EXPIRED: (504, "timeout_error"),
    JobErrorType.TIMEOUT: (504, "timeout_error"),
    JobErrorType.CONNECTION: (502, "api_error"),
    JobErrorType.INVALID_RESPONSE: (502, "api_error"),
}
API_ERROR_TYPES = frozenset(ERROR_TYPES.values()) | {
    "billing_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
}


@dataclass(frozen=True)
class DropinError:
    """One error answer: status, the API's error body and the headers that go with it."""

    status: int
    type: str
    message: str
    request_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": self.type, "message": self.message},
        }
        if self.request_id:
            body["request_id"] = self.request_id
        return body

    def answer_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.request_id:
            headers["request-id"] = self.request_id
        return headers


def record_error(record: JobRecord) -> DropinError:
    """The answer for a job that ended without a Message."""
    if record.status is JobStatus.EXPIRED:
        return _final(504, "timeout_error", "the job's deadline passed before it could be sent")
    if record.status is JobStatus.CANCELED:
        return _final(409, "conflict_error", "the job was canceled before it finished")
    error = record.error or JobError(type="api_error", message="the job failed")
    own = JobErrorType.own(error.type)
    if own is not None and own in OWN_ERRORS:
        status, kind = OWN_ERRORS[own]
        return _final(status, kind, error.message, request_id=error.request_id)
    if error.status_code is not None and 400 <= error.status_code <= 599:
        kind = error.type if error.type in API_ERROR_TYPES else _type_for(error.status_code)
        # What the API said, as it said it; msgq has already retried it as far as it may.
        return _final(error.status_code, kind, error.message, request_id=error.request_id)
    message = f"{error.type}: {error.message}"
    return _final(500, "api_error", message, request_id=error.request_id, retry=True)


def budget_wait_error() -> DropinError:
    """A job held back by its tenant's budget: a call cannot wait until the budget resets."""
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    message = (
        'this key\'s tenant has spent its budget (msgq on_budget = "wait"); the call was '
        "canceled rather than held until the budget resets"
    )
    error = _final(429, "rate_limit_error", message)
    error.headers["retry-after"] = str(max(1, int((midnight - now).total_seconds())))
    return error


def _type_for(status: int) -> str:
    if status == 529:
        return "overloaded_error"
    if status == 504:
        return "timeout_error"
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _final(
    status: int, kind: str, message: str, *, request_id: str | None = None, retry: bool = False
) -> DropinError:
    headers = {"x-should-retry": "true" if retry else "false"}
    return DropinError(status, kind, message, request_id, headers)
