"""The baseline of `llmrec bench encoder`: one request, one forward pass, behind Serve's proxy.

Same HTTP shape as the encoder pool (`deployments.encoder.http`), same model,
`SentenceTransformer.encode` on each request's texts alone, one pass at a time,
with the libraries' defaults (torch's intra-op threads unless `torch_threads` is given).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from deployments.encoder.http import embeddings_body, parse_embeddings_request
from deployments.errors import LlmrecError
from retrieval.encoder import SentenceEncoder

__all__ = ["NaiveEncoder"]


@serve.deployment
class NaiveEncoder:
    def __init__(self, model_path: str, model_name: str, torch_threads: int | None = None) -> None:
        self.encoder = SentenceEncoder(model_path, device="cpu", torch_threads=torch_threads)
        self.model_name = model_name
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="naive-forward")

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    async def __call__(self, request: Request) -> Response:
        try:
            req = parse_embeddings_request(await request.body())
        except LlmrecError as exc:
            return Response(str(exc), status_code=exc.status)
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self.executor, self._encode, req.texts)
        body = embeddings_body(vectors, req.encoding_format, self.model_name)
        return Response(body, media_type="application/json")
