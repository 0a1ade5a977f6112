"""Whether re-running an ended job can change its outcome: the one rule the CLI, the HTTP API
and the dashboard share, so Retry is offered only where it can help and says why not elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import JobRecord, JobStatus

# The same request gets the same answer: the API (or our validation) refused its content.
# An auth, permission or quota error is not here: fixing the key or the quota makes a retry work.
PERMANENT_ERRORS = frozenset(
    {"invalid_request_error", "not_found_error", "validation_error", "request_too_large"}
)
# Ends whose request msgq keeps for a retry even though no attempt ran out: the budget may
# have rolled over or been raised, and a retry runs without the deadline that passed.
KEEP_REQUEST_ERRORS = frozenset({"budget_exceeded"})
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.EXPIRED})


@dataclass(frozen=True)
class RetryVerdict:
    """`allowed`, or `reason` in a sentence a person reads."""

    allowed: bool
    reason: str = ""


def retry_verdict(record: JobRecord) -> RetryVerdict:
    """Can `msgq retry` change this job's outcome? (Whether its request is still kept is
    checked by the store, which holds it.)"""
    if record.status not in RETRYABLE_STATUSES:
        return RetryVerdict(False, f"it is {record.status.value}: only failed or expired jobs")
    if record.batch_id:
        return RetryVerdict(False, "it belongs to a Message Batch: submit a new batch")
    error_type = record.error.type if record.error else ""
    if error_type in PERMANENT_ERRORS:
        return RetryVerdict(
            False,
            f"{error_type} is permanent: the same request fails the same way; "
            "fix the request and submit it again",
        )
    return RetryVerdict(True)


def keeps_request(status: JobStatus, error_type: str | None) -> bool:
    """Should the request outlive this ending, so a retry can re-run it?"""
    if status is JobStatus.EXPIRED:
        return True
    return status is JobStatus.FAILED and error_type not in PERMANENT_ERRORS
