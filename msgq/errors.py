"""The exception tree. Each carries data; `retryable` decides between arq's deferral and failing.

ServiceError
├── InvalidJobError          payload failed schema validation: never sent, never retried
├── JobNotFoundError         no record under that ID (client and CLI)
├── JobConflictError         a caller-chosen ID reused with a different request
├── NotReplicatedError       submit: fewer replicas than MSGQ_SUBMIT_MIN_REPLICAS acknowledged
└── UpstreamError            .status_code, .retry_after_s, .request_id, .error_type
    ├── RejectedError        final: 400/401/402/403/404/413/422, x-should-retry: false
    ├── SpendLimitError      the org's spend limit: pauses the fleet, the job stays queued
    ├── InvalidResponseError final: a 200 whose body is not a Message
    └── TransientError       retryable
        ├── RateLimitError   429
        ├── OverloadedError  529
        └── UnavailableError 408/409/5xx, x-should-retry: true, timeouts, connection errors
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    retryable: ClassVar[bool] = False


class InvalidJobError(ServiceError):
    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class JobNotFoundError(ServiceError):
    pass


class JobConflictError(ServiceError):
    """Idempotency protects a retried submission; the same ID for another request is a bug in
    the caller, and answering with the old job would hide it."""


class NotReplicatedError(ServiceError, TimeoutError):
    """The job was written to the primary but too few replicas confirmed it in time: it may
    exist, and may be lost with the primary. Submitting again with the same job ID is safe."""

    retryable = True

    def __init__(self, message: str, *, job_id: str, replicas: int, wanted: int) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.replicas = replicas
        self.wanted = wanted


class UpstreamError(ServiceError):
    error_type: str = "api_error"  # a class default that one instance may override

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        request_id: str | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.request_id = request_id
        self.headers = headers or {}
        if error_type:
            self.error_type = error_type

    def as_record_error(self) -> dict[str, Any]:
        return {
            "type": self.error_type,
            "message": self.message,
            "status_code": self.status_code,
            "request_id": self.request_id,
            "retryable": self.retryable,
        }


class RejectedError(UpstreamError):
    error_type = "invalid_request_error"


class SpendLimitError(UpstreamError):
    error_type = "spend_limit"


class InvalidResponseError(UpstreamError):
    error_type = "invalid_response"


class TransientError(UpstreamError):
    retryable = True


class RateLimitError(TransientError):
    error_type = "rate_limit_error"


class OverloadedError(TransientError):
    error_type = "overloaded_error"


class UnavailableError(TransientError):
    error_type = "api_error"
