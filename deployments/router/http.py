"""HTTP edge of the router: parse and validate bodies, map errors to status codes.

Plain functions over bytes and headers, so the API's behaviour is tested
without a cluster; the Serve deployment only wires them to routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from deployments.errors import InvalidInput, LlmrecError, PayloadTooLarge
from deployments.router.schemas import (
    FeedbackEvent,
    RecommendRequest,
    RecommendResponse,
    UpsertItemsRequest,
)

__all__ = [
    "error_response",
    "parse_feedback",
    "parse_items",
    "parse_recommend",
    "recommend_response",
    "server_timing",
]


M = TypeVar("M", bound=BaseModel)


def _field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "body"


def _validate(model: type[M], body: bytes, max_bytes: int) -> M:
    """Parse `body` as `model`; raises PayloadTooLarge or InvalidInput naming the field."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body is {len(body)} bytes, limit {max_bytes}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = "; ".join(
            f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise InvalidInput(message, field=_field_path(first["loc"])) from exc


def parse_recommend(body: bytes, max_bytes: int) -> RecommendRequest:
    """Validate a recommend body; raises PayloadTooLarge or InvalidInput naming the field."""
    return _validate(RecommendRequest, body, max_bytes)


def parse_items(body: bytes, max_bytes: int, max_items: int) -> UpsertItemsRequest:
    """Validate a `POST /v1/items` body; PayloadTooLarge or InvalidInput naming the field."""
    req = _validate(UpsertItemsRequest, body, max_bytes)
    if len(req.items) > max_items:
        raise InvalidInput(
            f"items: {len(req.items)} items, at most {max_items} per request", field="items"
        )
    return req


def parse_feedback(body: bytes, max_bytes: int) -> FeedbackEvent:
    """Validate a `POST /v1/feedback` body; PayloadTooLarge or InvalidInput naming the field."""
    return _validate(FeedbackEvent, body, max_bytes)


def server_timing(timings: Mapping[str, float]) -> str:
    """The `Server-Timing` header value for per-stage times in milliseconds."""
    return ", ".join(f"{stage};dur={ms}" for stage, ms in timings.items())


def recommend_response(answer: RecommendResponse) -> JSONResponse:
    return JSONResponse(
        answer.model_dump(),
        headers={
            "Server-Timing": server_timing(answer.timings_ms),
            "X-Request-Id": answer.request_id,
        },
    )


def error_response(exc: LlmrecError) -> JSONResponse:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)
