"""The LLM seam of the reranker: the `RerankEngine` contract and its vLLM implementation.

`VllmEngine` runs vLLM's `AsyncLLM` in this process (its engine core is a
spawned child process). Cancelling a call (the caller's deadline passed, or
the caller went away) cancels vLLM's output stream, and vLLM then aborts the
request in the engine core, so no compute is spent on answers nobody reads.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from deployments.reranker.prompts import LETTERS, Steer, stem
from retrieval.config import RerankerConfig
from retrieval.hardware import cpu_flags, select_llm_dtype, usable_cores, vllm_cpu_bind

__all__ = [
    "PLAIN_SENTENCE",
    "EngineFailed",
    "EngineOutput",
    "PromptTooLong",
    "RerankEngine",
    "VllmEngine",
]

log = logging.getLogger(__name__)

_TOP_LOGPROBS = 20
_PREFER_BIAS = 2.0
_STREAM_INTERVAL = 4
"""Tokens between the outputs of a generation that may be stopped (`stop_at`)."""
_FREQUENCY_PENALTY = 0.5
"""Generation only: each repeat of an output token costs this much logit, so a small model
does not loop ("a sports drama about a sports drama about ..."); prompt tokens are not
penalised (unlike vLLM's `repetition_penalty`), so the item's own words stay cheap."""
PLAIN_SENTENCE = r"[^\"“”<>\n]{3,300}[.!?]"
"""What `VllmEngine.generate` may produce: one sentence without quotes, markup or newlines."""


class EngineFailed(RuntimeError):
    """The LLM engine could not answer (dead engine, rejected or failed request)."""


class PromptTooLong(EngineFailed):
    """The prompt does not fit the engine's context (`max_model_len`)."""


@dataclass(frozen=True)
class EngineOutput:
    """One finished engine request and what it cost, as the engine itself counted it.

    `logprobs` (scoring calls) maps decoded next tokens to log-probabilities;
    `text` (generation calls) is the continuation. `cached_tokens` of the
    `prompt_tokens` came from the prefix cache. `finished` is false for a
    generation stopped at its `stop_at` time: `text` is what it had written.
    """

    text: str = ""
    logprobs: dict[str, float] | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    finished: bool = True


@runtime_checkable
class RerankEngine(Protocol):
    """An LLM that scores next tokens and generates short texts from chat messages.

    `messages` are OpenAI-style `{"role", "content"}` dicts; when the last one
    is an assistant message the engine continues it (a prefill) instead of
    opening a new assistant turn. `count_tokens(messages)` is the prompt's
    length in tokens. `score(messages)` returns next-token log-probabilities
    keyed by the decoded token string (for example `" A"`): at least the 20
    most likely tokens, or the single-letter tokens. `generate(batch,
    max_tokens, temperature, seed, steer)` runs every prompt of `batch`
    together (they share the engine's batch and prefix cache) and returns, in
    order, continuations of at most `max_tokens` tokens, cut at the first
    newline: greedy at temperature 0, else sampled (reproducibly for a given
    `seed`); `steer[i]`, when given, names words the continuation of prompt
    `i` must not use (`avoid`, nor any word of the same `stem`) and words it
    is nudged toward (`prefer`); at `stop_at` (a `time.time()` value) the
    requests still running are aborted and answer what they have written.
    Cancelling either call aborts its requests in the engine; `running()` is
    how many requests the engine holds; `check_alive()` raises `EngineFailed` when the
    engine has died or been shut down, without sending it a request. Failures raise
    `PromptTooLong` when messages do not fit the context and `EngineFailed` otherwise.
    `describe()` says how the engine runs (dtype and why, threads);
    `shutdown()` releases it and is idempotent.
    """

    def count_tokens(self, messages: list[dict[str, str]]) -> int: ...

    async def score(self, messages: list[dict[str, str]]) -> EngineOutput: ...

    async def generate(
        self,
        batch: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        steer: Sequence[Steer] | None = None,
        stop_at: float | None = None,
    ) -> list[EngineOutput]: ...

    def running(self) -> int: ...

    def check_alive(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def shutdown(self) -> None: ...


class VllmEngine:
    """`RerankEngine` on vLLM's `AsyncLLM`, started in the constructor (tens of seconds on CPU).

    The dtype comes from `select_llm_dtype` (float32 on CPUs without native
    bf16, where bf16 is emulated and ~3x slower). On CPU the engine's worker
    threads are bound to `config.cpu_cores`, the KV cache is
    `config.kv_cache_gib` GiB and CUDA graphs are off; on GPU vLLM takes
    `config.gpu_memory_utilization` of the device memory. Prefix caching is on
    with `config.block_size`-token blocks, so the explanations of a request
    reuse the KV blocks of its rerank prompt. Scoring returns the logprobs of
    exactly the single-letter tokens (bare and with a leading space), so no
    candidate letter is missing. Generation is constrained (vLLM structured
    outputs, regex `PLAIN_SENTENCE`) to one sentence of plain text, steered
    by logit biases: -100 (never sampled) on the tokens that could start an
    avoided word (`_avoided_ids`), so "romantic" goes with "romance", and
    `_PREFER_BIAS` on the first token of each preferred word (lower case and
    capitalised, after a space).
    """

    def __init__(self, config: RerankerConfig, model: str) -> None:
        import torch
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        on_gpu = torch.cuda.is_available()
        choice = select_llm_dtype(
            config.dtype,
            flags=cpu_flags(),
            cuda=on_gpu,
            cuda_bf16=on_gpu and torch.cuda.is_bf16_supported(),
        )
        self._described: dict[str, Any] = {
            "model": model,
            "device": "cuda" if on_gpu else "cpu",
            "dtype": choice.dtype,
            "dtype_reason": choice.reason,
        }
        if not on_gpu:
            # vLLM's CPU backend reads these only from the environment of its worker.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(config.kv_cache_gib)
            bind = vllm_cpu_bind(config.cpu_cores, usable_cores())
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = bind
            self._described["cpu_threads_bind"] = bind
        log.info("LLM engine: %s", self._described)
        args = AsyncEngineArgs(
            model=model,
            dtype=choice.dtype,
            max_model_len=config.max_model_len,
            enable_prefix_caching=True,
            block_size=config.block_size,
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
        self._vocab: list[tuple[int, str]] | None = None
        self._avoid_ids: dict[str, list[int]] = {}
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

    def _avoided_ids(self, word: str) -> list[int]:
        """The tokens that could start `word` or another word of its `stem`.

        Every token whose text (lower case, leading space dropped) starts with
        the stem, and the first token of the word itself (after a space, lower
        case or capitalised) when it has three letters or more: " thriller" is
        " thr" + "iller", so " thr" goes too (common words that start the
        same, like " three", are tokens of their own).
        """
        if word not in self._avoid_ids:
            if self._vocab is None:  # leading space: "Ġ" (byte BPE), "▁" (SentencePiece)
                self._vocab = [
                    (i, t.replace("Ġ", " ").replace("▁", " ").lstrip().lower())
                    for t, i in self._tokenizer.get_vocab().items()
                ]
            root = stem(word)
            ids = {i for i, text in self._vocab if text.startswith(root)}
            for first in self._first_ids(word):  # the first piece of a multi-token word
                if len(self._tokenizer.decode([first]).strip()) >= 3:
                    ids.add(first)
            self._avoid_ids[word] = sorted(ids)
        return self._avoid_ids[word]

    def _first_ids(self, word: str) -> set[int]:
        """The first token of `word` after a space, lower case and capitalised."""
        forms = (f" {word}", f" {word.capitalize()}")
        return {self._tokenizer.encode(f, add_special_tokens=False)[0] for f in forms}

    def _token_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template applied here (prefill-aware), tokenised."""
        prefill = bool(messages) and messages[-1]["role"] == "assistant"
        text = self._tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=not prefill,
            continue_final_message=prefill,
        )
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self._token_ids(messages))

    async def _engine_input(self, messages: list[dict[str, str]]) -> Any:
        ids = self._token_ids(messages)
        if len(ids) >= self._max_model_len:
            raise PromptTooLong(f"prompt of {len(ids)} tokens, context is {self._max_model_len}")
        prompt = {"prompt_token_ids": ids}
        renderer = getattr(self._llm, "renderer", None)
        if renderer is None:  # vLLM before the renderer API takes token prompts as they are
            return prompt
        (engine_input,) = await renderer.render_cmpl_async([prompt])
        return engine_input

    async def _final(
        self, messages: list[dict[str, str]], params: Any, stop_at: float | None = None
    ) -> EngineOutput:
        """The request's last output; at `stop_at` the one so far (params must stream
        cumulative outputs then)."""
        from vllm.exceptions import VLLMError

        if self._llm is None:
            raise EngineFailed("vLLM engine is shut down")
        final, finished = None, True
        try:
            engine_input = await self._engine_input(messages)
            # Cancellation of this loop reaches vLLM's generator, which aborts the request.
            stream = self._llm.generate(engine_input, params, uuid.uuid4().hex)
            left = None if stop_at is None else max(stop_at - time.time(), 0.0)
            try:
                async with asyncio.timeout(left):  # None: no limit
                    async for out in stream:
                        final = out
            except TimeoutError:
                finished = False
        except VLLMError as exc:
            raise EngineFailed(f"vLLM request failed: {exc}") from exc
        if (final is None or not final.outputs) and not finished:
            return EngineOutput(finished=False)  # stopped before its first token
        if final is None or not final.outputs:
            raise EngineFailed("vLLM returned no output")
        first = final.outputs[0]
        return EngineOutput(
            text=str(first.text),
            logprobs=self._decoded(first.logprobs[0]) if first.logprobs else None,
            prompt_tokens=len(final.prompt_token_ids or ()),
            cached_tokens=int(final.num_cached_tokens or 0),
            output_tokens=len(first.token_ids),
            finished=finished,
        )

    def _decoded(self, entries: dict[int, Any]) -> dict[str, float]:
        scores: dict[str, float] = {}
        for token_id, entry in entries.items():
            token = entry.decoded_token
            if token is None:
                token = self._tokenizer.decode([token_id])
            scores[token] = max(entry.logprob, scores.get(token, float("-inf")))
        return scores

    async def score(self, messages: list[dict[str, str]]) -> EngineOutput:
        out = await self._final(messages, self._score_params)
        if not out.logprobs:
            raise EngineFailed("vLLM returned no logprobs")
        return out

    async def generate(
        self,
        batch: list[list[dict[str, str]]],
        max_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        steer: Sequence[Steer] | None = None,
        stop_at: float | None = None,
    ) -> list[EngineOutput]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        def params(how: Steer) -> Any:
            bias = {i: _PREFER_BIAS for w in how.prefer for i in self._first_ids(w)}
            bias.update({i: -100.0 for w in how.avoid for i in self._avoided_ids(w)})
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                stop=["\n"],
                frequency_penalty=_FREQUENCY_PENALTY,
                structured_outputs=StructuredOutputsParams(regex=PLAIN_SENTENCE),
                logit_bias=bias or None,
                # Streamed when it may be stopped, so what it wrote so far is at hand;
                # every few tokens only (each output costs the replica CPU time).
                output_kind=RequestOutputKind.FINAL_ONLY
                if stop_at is None
                else RequestOutputKind.CUMULATIVE,
                stream_interval=None if stop_at is None else _STREAM_INTERVAL,
            )

        hows = list(steer) if steer is not None else [Steer()] * len(batch)
        if len(hows) != len(batch):
            raise ValueError("steer needs one Steer per prompt")
        requests = [self._final(m, params(h), stop_at) for m, h in zip(batch, hows, strict=True)]
        # gather cancels every request of the batch when the caller is cancelled.
        return list(await asyncio.gather(*requests))

    def running(self) -> int:
        if self._llm is None:
            return 0
        return int(self._llm.output_processor.get_num_unfinished_requests())

    def check_alive(self) -> None:
        if self._llm is None:
            raise EngineFailed("the engine is shut down")
        if self._llm.errored:
            raise EngineFailed(f"the engine died: {self._llm.dead_error}")

    def describe(self) -> dict[str, Any]:
        return dict(self._described)

    def shutdown(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()
