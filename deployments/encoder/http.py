"""The encoder pool's own HTTP shape: an OpenAI-style `/v1/embeddings`, without Ray.

Request: `{"input": "text" | ["text", ...], "encoding_format": "float" | "base64",
"model": ...}` (`model` is accepted and ignored: a pool serves one model).
Answer: `{"object": "list", "model": ..., "data": [{"object": "embedding",
"index": i, "embedding": [...] | "<base64 of little-endian float32>"}]}`.
Errors are the `deployments.errors` types (422 invalid input, 413 too many inputs).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np

from deployments.errors import InvalidInput, PayloadTooLarge

__all__ = ["MAX_INPUTS", "EmbeddingsRequest", "embeddings_body", "parse_embeddings_request"]

MAX_INPUTS = 2048
"""Most texts in one request."""


@dataclass(frozen=True)
class EmbeddingsRequest:
    texts: list[str]
    encoding_format: Literal["float", "base64"] = "float"


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    """Validate a request body; raises `InvalidInput` or `PayloadTooLarge` naming the field."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = set(data) - {"input", "encoding_format", "model", "user"}
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    texts = data.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise InvalidInput("input must be a string or a non-empty list of strings", field="input")
    if len(texts) > MAX_INPUTS:
        raise PayloadTooLarge(f"at most {MAX_INPUTS} inputs per request", field="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput("every input must be a non-empty string", field=f"input.{i}")
    fmt = data.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise InvalidInput("encoding_format must be 'float' or 'base64'", field="encoding_format")
    return EmbeddingsRequest(texts, fmt)


def embeddings_body(vectors: np.ndarray, encoding_format: str, model: str) -> bytes:
    """The JSON answer for `vectors` (row i answers input i)."""
    rows = np.asarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        embeddings: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        embeddings = rows.tolist()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)]
    return json.dumps({"object": "list", "model": model, "data": data}).encode()
