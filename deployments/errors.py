"""The one error module: every failure the API can answer, with its status code.

Cores raise these; the router turns them into JSON answers
`{"error": {"type", "message", "field"?}}` with the status below. Library errors
are wrapped with `raise ... from exc` so logs keep the cause.
"""

from __future__ import annotations

__all__ = [
    "LlmrecError",
    "InvalidInput",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Overloaded",
    "QueueFull",
    "Unavailable",
    "BackendFailed",
    "BackendUnavailable",
    "DeadlineExceeded",
]


class LlmrecError(Exception):
    """Base class: `status` is the HTTP code, `retry_after_s` set for 429/503."""

    status: int = 500
    kind: str = "internal"
    retry_after_s: int | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_json(self) -> dict:
        body: dict = {"type": self.kind, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}


class InvalidInput(LlmrecError):
    status, kind = 422, "invalid_input"


class Unauthorized(LlmrecError):
    status, kind = 401, "unauthorized"


class Forbidden(LlmrecError):
    status, kind = 403, "forbidden"


class NotFound(LlmrecError):
    status, kind = 404, "not_found"


class PayloadTooLarge(LlmrecError):
    status, kind = 413, "payload_too_large"


class Overloaded(LlmrecError):
    status, kind, retry_after_s = 429, "overloaded", 1


class Unavailable(LlmrecError):
    status, kind, retry_after_s = 503, "unavailable", 5


class QueueFull(Unavailable):
    """A deployment's bounded queue is full: answered at once, never waited on."""

    kind, retry_after_s = "overloaded", 1


class BackendFailed(LlmrecError):
    status, kind = 502, "backend_failed"


class BackendUnavailable(BackendFailed):
    """A deployment did not answer: its replica died, is being replaced, or its node went.

    Raised only where a call crosses into Ray (the router's handle wrapper); the router
    skips the stage for it. An exception raised by the deployment's own code is not one.
    """


class DeadlineExceeded(LlmrecError):
    status, kind = 504, "deadline_exceeded"
