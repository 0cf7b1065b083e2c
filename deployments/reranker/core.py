"""The reranker core: LLM scoring of candidates and grounded explanations, no Ray.

`RerankerCore` holds the ranking and fallback logic; the LLM comes in through
the `RerankEngine` seam, whose default implementation `VllmEngine` runs vLLM's
`AsyncLLM` in this process (its engine core is a spawned child process).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from deployments.config import RerankerConfig
from deployments.errors import BackendFailed
from deployments.reranker.prompts import (
    LETTERS,
    Candidate,
    blend,
    build_explain_prompt,
    build_rerank_prompt,
    explanation_from,
    letter_scores,
    template_reason,
)
from retrieval.models import resolve_llm

__all__ = [
    "PLAIN_SENTENCE",
    "EngineFailed",
    "PromptTooLong",
    "RerankEngine",
    "RerankFailed",
    "RerankerCore",
    "VllmEngine",
]

log = logging.getLogger(__name__)

_TOP_LOGPROBS = 20
PLAIN_SENTENCE = r"[^\"“”<>\n]{3,300}[.!?]"
"""What `VllmEngine.generate` may produce: one sentence without quotes, markup or newlines."""
_HEALTH_PROBE = [{"role": "user", "content": "Say OK."}]
_UNSCORED_STEP = 1e-3
_T = TypeVar("_T")


class EngineFailed(RuntimeError):
    """The LLM engine could not answer (dead engine, rejected or failed request)."""


class PromptTooLong(EngineFailed):
    """The prompt does not fit the engine's context (`max_model_len`)."""


class RerankFailed(BackendFailed, RuntimeError):
    """The reranker could not answer: a 502 `BackendFailed` that is also a `RuntimeError`.

    Callers that degrade on `RuntimeError` (the router skips the stage) catch it
    in-process and through Ray handles alike.
    """


@runtime_checkable
class RerankEngine(Protocol):
    """An LLM that scores next tokens and generates short texts from chat messages.

    `messages` are OpenAI-style `{"role", "content"}` dicts; when the last one
    is an assistant message the engine continues it (a prefill) instead of
    opening a new assistant turn. `next_token_logprobs(messages)` returns
    next-token log-probabilities keyed by the decoded token string (for
    example `" A"`): at least the 20 most likely tokens, or the single-letter
    tokens. `generate(messages, max_tokens)` returns the greedy continuation,
    at most `max_tokens` tokens, cut at the first newline. Both raise
    `RuntimeError` subclasses: `PromptTooLong` when the messages do not fit
    the context, `EngineFailed` for any other engine failure. `shutdown()`
    releases the engine; it is idempotent.
    """

    async def next_token_logprobs(self, messages: list[dict[str, str]]) -> dict[str, float]: ...

    async def generate(self, messages: list[dict[str, str]], max_tokens: int) -> str: ...

    def shutdown(self) -> None: ...


class VllmEngine:
    """`RerankEngine` on vLLM's `AsyncLLM`, started in the constructor (tens of seconds on CPU).

    Prefix caching is on, so prompts sharing a history (the rerank prompt and
    the explanation prompts of one request) reuse computed KV blocks. On CPU
    the KV cache is `config.kv_cache_gib` GiB and CUDA graphs are off; on GPU
    vLLM takes `config.gpu_memory_utilization` of the device memory. Scoring
    returns the logprobs of exactly the single-letter tokens (bare and with a
    leading space) rather than the top 20, so no candidate letter is missing.
    Generation is constrained (vLLM structured outputs, regex `PLAIN_SENTENCE`)
    to one sentence of plain text: no quotes, markup or line breaks can be
    produced, so a reason cannot quote an invented title or inject a tag.
    """

    def __init__(self, config: RerankerConfig, model: str) -> None:
        import torch
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            # vLLM's CPU backend reads its KV-cache size only from the environment.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
        args = AsyncEngineArgs(
            model=model,
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            enable_prefix_caching=True,
            enforce_eager=not on_gpu,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_logprobs=_TOP_LOGPROBS,
            seed=0,
            disable_log_stats=True,
        )
        self._max_model_len = config.max_model_len
        self._llm: Any = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._llm.get_tokenizer()
        self._letter_ids = self._single_letter_ids()
        # vLLM takes either top-k logprobs or the logprobs of named tokens, not both;
        # the named letter tokens give every candidate an exact score.
        self._score_params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprobs=None if self._letter_ids else _TOP_LOGPROBS,
            logprob_token_ids=self._letter_ids or None,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _single_letter_ids(self) -> list[int]:
        """Token ids that decode to one candidate letter, bare or after a space."""
        ids: set[int] = set()
        for letter in LETTERS:
            for text in (letter, f" {letter}"):
                encoded = self._tokenizer.encode(text, add_special_tokens=False)
                if len(encoded) == 1:
                    ids.add(encoded[0])
        return sorted(ids)

    async def _engine_input(self, messages: list[dict[str, str]]) -> Any:
        """Chat template applied here (prefill-aware), then vLLM's renderer builds the input."""
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        text = self._tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
        )
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= self._max_model_len:
            raise PromptTooLong(f"prompt of {len(ids)} tokens, context is {self._max_model_len}")
        prompt = {"prompt_token_ids": ids}
        renderer = getattr(self._llm, "renderer", None)
        if renderer is None:  # vLLM before the renderer API takes token prompts as they are
            return prompt
        (engine_input,) = await renderer.render_cmpl_async([prompt])
        return engine_input

    async def _final(self, messages: list[dict[str, str]], params: Any) -> Any:
        from vllm.exceptions import VLLMError

        if self._llm is None:
            raise EngineFailed("vLLM engine is shut down")
        final = None
        try:
            engine_input = await self._engine_input(messages)
            async for out in self._llm.generate(engine_input, params, uuid.uuid4().hex):
                final = out
        except VLLMError as exc:
            raise EngineFailed(f"vLLM request failed: {exc}") from exc
        if final is None or not final.outputs:
            raise EngineFailed("vLLM returned no output")
        return final.outputs[0]

    async def next_token_logprobs(self, messages: list[dict[str, str]]) -> dict[str, float]:
        out = await self._final(messages, self._score_params)
        if not out.logprobs:
            raise EngineFailed("vLLM returned no logprobs")
        scores: dict[str, float] = {}
        for token_id, entry in out.logprobs[0].items():
            token = entry.decoded_token
            if token is None:
                token = self._tokenizer.decode([token_id])
            scores[token] = max(entry.logprob, scores.get(token, float("-inf")))
        return scores

    async def generate(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            stop=["\n"],
            structured_outputs=StructuredOutputsParams(regex=PLAIN_SENTENCE),
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        out = await self._final(messages, params)
        return str(out.text)

    def shutdown(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()


class RerankerCore:
    """Reranks retrieval candidates with one LLM step and explains the final items.

    `engine` defaults to a `VllmEngine` on `config.model`, resolved against
    `models_dir` (the offline name needs `llmrec models prepare` first).
    Engine failures surface as `RerankFailed` (a `BackendFailed`) so the
    caller can degrade.
    """

    def __init__(
        self,
        config: RerankerConfig,
        models_dir: Path,
        engine: RerankEngine | None = None,
    ) -> None:
        self.config = config
        self.engine: RerankEngine = (
            engine
            if engine is not None
            else VllmEngine(config, resolve_llm(config.model, models_dir))
        )

    async def rerank(
        self,
        history_titles: Sequence[str],
        query: str | None,
        candidates: Sequence[Candidate],
        retrieval_scores: Sequence[float],
        weight: float | None = None,
    ) -> list[tuple[int, float]]:
        """`(candidate index, score)` for every candidate, best first.

        The `config.max_candidates` best by retrieval score are lettered into
        one prompt and scored in a single forward step; their score is the
        blend of normalised retrieval and letter log-probability scores (0..1,
        weight `weight`, else `config.rerank_weight`; the router passes the
        weight tuned by `llmrec eval --tune`). The others follow in retrieval order
        with scores just below the lowest blended one. Raises `ValueError` when
        the lists differ in length, `RerankFailed` when the engine fails.
        """
        if len(candidates) != len(retrieval_scores):
            raise ValueError("candidates and retrieval_scores must have the same length")
        by_retrieval = sorted(range(len(candidates)), key=lambda i: -retrieval_scores[i])
        head = by_retrieval[: self.config.max_candidates]
        tail = by_retrieval[self.config.max_candidates :]
        if len(head) < 2:
            scored = [(i, 1.0) for i in head]
        else:
            llm = await self._score_letters(history_titles, query, [candidates[i] for i in head])
            share = self.config.rerank_weight if weight is None else weight
            blended = blend([retrieval_scores[i] for i in head], llm, share)
            order = sorted(range(len(head)), key=lambda j: -blended[j])
            scored = [(head[j], blended[j]) for j in order]
        lowest = scored[-1][1] if scored else 0.0
        rest = [(i, lowest - _UNSCORED_STEP * (k + 1)) for k, i in enumerate(tail)]
        return scored + rest

    async def _score_letters(
        self, history_titles: Sequence[str], query: str | None, head: list[Candidate]
    ) -> list[float]:
        """Letter scores of `head`; item texts shrink (to a quarter, then none) until it fits."""
        full = self.config.item_text_chars
        for text_chars in (full, full // 4):
            try:
                return await self._letters_at(history_titles, query, head, text_chars)
            except RerankFailed as exc:
                if not isinstance(exc.__cause__, PromptTooLong):
                    raise
        return await self._letters_at(history_titles, query, head, 0)

    async def _letters_at(
        self,
        history_titles: Sequence[str],
        query: str | None,
        head: list[Candidate],
        text_chars: int,
    ) -> list[float]:
        messages = build_rerank_prompt(history_titles, query, head, item_text_chars=text_chars)
        logprobs = await self._call(self.engine.next_token_logprobs(messages))
        return letter_scores(logprobs, len(head))

    async def explain(
        self,
        history_titles: Sequence[str],
        history_categories: Sequence[Sequence[str]],
        query: str | None,
        items: Sequence[Candidate],
    ) -> list[tuple[str, bool]]:
        """`(explanation, grounded)` per item, generated concurrently.

        The model completes a sentence that already names the user's history or
        query. When the result fails validation (too short, an invented title),
        the prompt does not fit the context, or there is no history or query to
        name, `template_reason` is used and reported with `grounded=False`.
        Raises `RerankFailed` when the engine fails.
        """

        async def one(item: Candidate) -> tuple[str, bool]:
            if history_titles or (query and query.strip()):
                messages = build_explain_prompt(
                    history_titles,
                    query,
                    item,
                    item_text_chars=self.config.item_text_chars,
                    history_categories=history_categories,
                )
                try:
                    generated = await self._call(
                        self.engine.generate(messages, self.config.explain_max_tokens)
                    )
                except RerankFailed as exc:
                    if not isinstance(exc.__cause__, PromptTooLong):
                        raise
                    generated = ""
                valid = explanation_from(messages, generated, history_titles, query, item)
                if valid is not None:
                    return valid, True
            return template_reason(item, history_titles, history_categories, query), False

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def check_health(self) -> None:
        """One real scoring step through the engine; raises `RerankFailed` if it fails."""
        logprobs = await self._call(self.engine.next_token_logprobs(_HEALTH_PROBE))
        if not logprobs:
            raise RerankFailed("reranker engine returned no logprobs")

    def shutdown(self) -> None:
        """Stop the engine (idempotent)."""
        self.engine.shutdown()

    @staticmethod
    async def _call(awaitable: Awaitable[_T]) -> _T:
        try:
            return await awaitable
        except RuntimeError as exc:
            log.warning("reranker engine failed: %s", exc)
            raise RerankFailed(f"reranker engine failed: {exc}") from exc
