"""The reranker core: LLM scoring of candidates and grounded explanations, no Ray.

`RerankerCore` holds the ranking, budgeting and fallback logic; the LLM comes
in through the `RerankEngine` seam (`deployments.reranker.engine`). Every call
carries the caller's deadline (a `time.time()` value). Work is sized to it
from the engine's measured costs (`EngineCost`): a rerank letters fewer
candidates, an explanation gets fewer tokens, and work that cannot finish in
time is refused at once (`DeadlineExceeded`) instead of started. A full queue
is `QueueFull` at once. Work that is running when the deadline passes is
aborted in the engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from deployments.errors import BackendFailed, DeadlineExceeded, QueueFull
from deployments.reranker.budget import Admission, EngineCost, Work
from deployments.reranker.engine import EngineFailed, PromptTooLong, RerankEngine, VllmEngine
from deployments.reranker.prompts import (
    LETTERS,
    Candidate,
    PromptContext,
    Steer,
    blend,
    build_explain_prompt,
    build_rerank_prompt,
    explanation_from,
    guard_context,
    letter_scores,
    prompt_vocabulary,
    steer_for,
    template_reason,
)
from retrieval.config import RerankerConfig
from retrieval.models import resolve_llm

__all__ = ["Explanation", "RerankFailed", "RerankOutcome", "RerankerCore"]

log = logging.getLogger(__name__)

_UNSCORED_STEP = 1e-3
_LOGPROB_DECIMALS = 2
"""Letter log-probabilities are rounded before ordering: a cold prompt and a prefix-cached
one differ in the last digits, and ties then fall back to the retrieval order."""
_TEXT_SHARES = (1.0, 0.25, 0.0)
"""Item-text lengths tried, as shares of `item_text_chars`, until a prompt fits its budget."""
_RECENT_CONTEXTS = 256
_TASK_TOKENS = 40
"""About the tokens of a prompt's task line and prefill, which rerank and explain do not share."""
_CALIBRATION_WIDTH = 10
"""The widest explain batch the warm-up measures: the router's default `explain_top`."""
_CALIBRATION_STEPS = 16
_ANSWER_S = 0.1
"""Explanations stop this long before the deadline, so the answer still reaches the client in
time: the router, the Serve proxy and HTTP add ~50-150 ms on a busy 2-core machine."""
_RETRY_TEMPERATURE = 0.7
"""Later explanation rounds sample, so a reason that failed its checks is not written again."""
_T = TypeVar("_T")


class RerankFailed(BackendFailed):
    """The LLM engine failed (a 502 `BackendFailed`; the router degrades the stage)."""


@dataclass(frozen=True)
class RerankOutcome:
    """A rerank: `(candidate index, score)` for every candidate, best first, and its prompt.

    The first `lettered` candidates by retrieval score were in the prompt, with
    item texts cut to `item_text_chars`; `explain` given the same context and
    text length reuses that prompt's KV blocks.
    """

    order: list[tuple[int, float]]
    lettered: int
    item_text_chars: int
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class Explanation:
    """One item's reason, where it came from, and why a generated one was replaced.

    `check` is `"ok"` for an accepted generated reason, else the failed check
    (`too_short`, `markup`, `not_about_item`, `contradicts_catalog`,
    `invented_title`, `prompt_too_long`, `nothing_to_name`, `no_time`).
    """

    text: str
    source: Literal["llm", "template"]
    check: str


@dataclass
class _StageStats:
    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0

    def add(self, prompt: int, cached: int) -> None:
        self.calls += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached

    def as_json(self) -> dict[str, float]:
        hit = self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prefix_cache_hit_rate": round(hit, 4),
        }


@dataclass
class _Stats:
    rerank: _StageStats = field(default_factory=_StageStats)
    explain: _StageStats = field(default_factory=_StageStats)
    outcomes: Counter[str] = field(default_factory=Counter)
    """Explanations answered, by check: "ok" (generated) or why the template was used."""


class RerankerCore:
    """Reranks retrieval candidates with one LLM step and explains the final items.

    `engine` defaults to a `VllmEngine` on `config.model`, resolved against
    `models_dir` (the offline name needs `llmrec models prepare` first).
    `warm_up()` runs a real rerank and a real explanation and calibrates the
    cost model; `check_health()` fails until it has.
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
        self.cost = EngineCost()
        self.admission = Admission(config.max_pending)
        self.stats = _Stats()
        self.warmed = False
        self._answered_at = -math.inf  # time.monotonic() of the engine's latest answer
        self._always_cached = 0  # tokens every prompt shares (system message, instructions)
        self._common: tuple[tuple, int] = ((), 0)  # see _common_tokens
        # User key -> (ids of the candidates a recent rerank lettered, its prompt tokens).
        self._scored: OrderedDict[tuple, tuple[tuple[str, ...], int]] = OrderedDict()

    # --- rerank ---------------------------------------------------------------

    async def rerank(
        self,
        context: PromptContext,
        retrieval_scores: Sequence[float],
        weight: float | None = None,
        deadline: float | None = None,
        explain_after: int = 0,
    ) -> RerankOutcome:
        """Every candidate of `context`, best first, with the prompt that scored them.

        The `config.max_candidates` best by retrieval score are lettered into
        one prompt and scored in a single forward step; their score is the
        blend of normalised retrieval and letter log-probability scores (0..1,
        weight `weight`, else `config.rerank_weight`). The others follow in
        retrieval order with scores just below the lowest blended one. When the
        prompt would not finish before `deadline` leaving time to explain
        `explain_after` items at `config.explain_min_tokens`, fewer candidates
        are lettered (a slow engine reranks fewer and still explains every item
        shown), or time is left for half of them, or for none; when even two
        would not fit, `DeadlineExceeded`. Raises `ValueError` when the lists
        differ in length, `QueueFull` when the queue is full, `RerankFailed`
        when the engine fails.
        """
        candidates = context.candidates
        if len(candidates) != len(retrieval_scores):
            raise ValueError("candidates and retrieval_scores must have the same length")
        by_retrieval = sorted(range(len(candidates)), key=lambda i: -retrieval_scores[i])
        head = by_retrieval[: self.config.max_candidates]
        if len(head) < 2:
            return RerankOutcome([(i, 1.0) for i in by_retrieval], len(head), 0)
        ordered = _with_candidates(context, [candidates[i] for i in head])
        flagged: frozenset[int] = frozenset()
        if self.config.injection_guard:
            ordered, flagged = guard_context(ordered)
        messages, n, text_chars, estimate, budget = self._fit_rerank(
            ordered, deadline, explain_after
        )
        lettered = _with_candidates(context, ordered.candidates[:n])
        with self.admission.admit(estimate, budget):
            started = time.perf_counter()
            out = await self._call(self.engine.score(messages), deadline)
        self._record_score(lettered, text_chars, out.prompt_tokens, out.cached_tokens, started)
        llm = [round(v, _LOGPROB_DECIMALS) for v in letter_scores(out.logprobs or {}, n)]
        if flagged:  # the LLM may not move an item whose text talks to it up
            llm = [min(llm) if j in flagged else v for j, v in enumerate(llm)]
        share = self.config.rerank_weight if weight is None else weight
        blended = blend([retrieval_scores[i] for i in head[:n]], llm, share)
        order = sorted(range(n), key=lambda j: -blended[j])  # stable: ties keep retrieval order
        scored = [(head[j], blended[j]) for j in order]
        lowest = scored[-1][1]
        rest = [(i, lowest - _UNSCORED_STEP * (k + 1)) for k, i in enumerate(by_retrieval[n:])]
        return RerankOutcome(scored + rest, n, text_chars, out.prompt_tokens, out.cached_tokens)

    def _fit_text(self, context: PromptContext) -> tuple[list[dict[str, str]], int, int]:
        """The rerank prompt with the longest item text (of `_TEXT_SHARES`) that fits
        `prompt_tokens` (else none), its text length and its tokens."""
        for share in _TEXT_SHARES:
            chars = int(self.config.item_text_chars * share)
            messages = build_rerank_prompt(context, item_text_chars=chars)
            tokens = self.engine.count_tokens(messages)
            if tokens <= self.config.prompt_tokens or share == _TEXT_SHARES[-1]:
                return messages, chars, tokens
        raise AssertionError("unreachable: the last share is always taken")

    def _fit_rerank(
        self, context: PromptContext, deadline: float | None, explain_after: int
    ) -> tuple[list[dict[str, str]], int, int, Work, float | None]:
        """The largest lettered head (halving from all of it, at least 2) whose prompt ends
        in time to explain `explain_after` items afterwards, else half of them, else none;
        with its budget (the time by which it must end). When nothing fits, the last one
        tried (two lettered, nothing reserved), which admission then refuses."""

        @functools.cache
        def head_of(n: int) -> tuple[list[dict[str, str]], int, Work, int]:
            """Prompt, text length, cost and explain-tail tokens of `n` lettered (built once)."""
            head = _with_candidates(context, context.candidates[:n])
            messages, chars, tokens = self._fit_text(head)
            estimate = self.cost.work(max(tokens - self._cached_rerank(head, chars), 1))
            return messages, chars, estimate, self._explain_tail(head, chars, tokens)

        least = self.config.explain_min_tokens
        for count in dict.fromkeys((explain_after, (explain_after + 1) // 2, 0)):
            n = len(context.candidates)
            while True:
                messages, chars, estimate, tail = head_of(n)
                budget = None
                if deadline is not None:
                    reserve = self.cost.predict(count * tail, least, count) if count else 0.0
                    budget = deadline - reserve
                if self.admission.fits(estimate, budget):
                    return messages, n, chars, estimate, budget
                if n <= 2:
                    break
                n = max(n // 2, 2)
        return messages, n, chars, estimate, budget

    def _cached_rerank(self, context: PromptContext, chars: int) -> int:
        """Tokens of this rerank prompt the prefix cache holds: all but the last block when
        the same user's same candidates were scored recently, else the fixed instructions."""
        scored = self._scored.get(_user_key(context, chars))
        if scored is not None and scored[0] == _candidate_ids(context):
            return max(scored[1] - self.config.block_size, self._always_cached)
        return self._always_cached

    def _explain_tail(self, context: PromptContext, chars: int, rerank_tokens: int) -> int:
        """Tokens each explain prompt computes after this rerank prompt: what follows the
        shared candidates (task line, item text, prefill), plus half a block."""
        explain = build_explain_prompt(
            context, 0, item_text_chars=chars, target_text_chars=self.config.explain_text_chars
        )
        shared = rerank_tokens - _TASK_TOKENS
        return max(self.engine.count_tokens(explain) - shared, 1) + self.config.block_size // 2

    def _record_score(
        self, context: PromptContext, chars: int, prompt: int, cached: int, started: float
    ) -> None:
        self.cost.observe_prefill(prompt - cached, time.perf_counter() - started)
        self.stats.rerank.add(prompt, cached)
        key = _user_key(context, chars)
        self._scored[key] = (_candidate_ids(context), prompt)
        self._scored.move_to_end(key)
        while len(self._scored) > _RECENT_CONTEXTS:
            self._scored.popitem(last=False)

    # --- explain --------------------------------------------------------------

    async def explain(
        self,
        context: PromptContext,
        targets: Sequence[int],
        item_text_chars: int | None = None,
        deadline: float | None = None,
    ) -> list[Explanation]:
        """One `Explanation` per index in `targets` (lettered candidates of `context`).

        All prompts go to the engine as one batch; they start with the rerank
        prompt of the same context and `item_text_chars` (default
        `config.item_text_chars`), so a rerank just before leaves their shared
        part in the prefix cache; the target's own line repeats its text, cut
        to `config.explain_text_chars`. Each gets as many tokens as the time to
        `deadline` allows, at most `config.explain_max_tokens`; when not all of
        them fit at `config.explain_min_tokens`, the best-ranked that do are
        explained (the others get template reasons, check `no_time`); when not
        even one fits, `DeadlineExceeded`. Reasons that fail
        `explanation_from` are asked for again, sampled, while time is left (at
        most `config.explain_attempts` rounds in all); what still fails, or a
        prompt too long for the context, gets the template reason. A round the
        engine has not finished shortly before `deadline` is stopped there, and
        its reasons are judged as far as they were written (closed with "…"). Raises
        `QueueFull` when the queue is full and `RerankFailed` when the engine
        fails.
        """
        if not targets:
            return []
        limit = min(len(context.candidates), len(LETTERS))
        if any(not 0 <= t < limit for t in targets):
            raise ValueError("targets must index lettered candidates of the context")
        if self.config.injection_guard:
            context, _ = guard_context(context)  # as the rerank prompt showed it
        if not context.history_titles and not (context.query and context.query.strip()):
            return [self._template(context, t, "nothing_to_name") for t in targets]
        chars = self.config.item_text_chars if item_text_chars is None else item_text_chars
        prompts = {
            t: build_explain_prompt(
                context, t, item_text_chars=chars, target_text_chars=self.config.explain_text_chars
            )
            for t in targets
        }
        lengths = {
            t: self.engine.count_tokens(m) for t, m in prompts.items()
        }  # once, not per round
        vocabulary = prompt_vocabulary(context)
        steer = {t: steer_for(context.candidates[t], vocabulary) for t in targets}
        done: dict[int, Explanation] = {}
        failed: dict[int, str] = dict.fromkeys(targets, "no_time")
        # As many of the best-ranked items as fit; one at least, which raises if it cannot.
        widest = self._widest(context, chars, [lengths[t] for t in targets], deadline)
        todo, attempt = list(targets)[: max(widest, 1)], 0
        while todo and attempt < self.config.explain_attempts:
            try:
                texts = await self._generate(
                    context,
                    chars,
                    [prompts[t] for t in todo],
                    [lengths[t] for t in todo],
                    [steer[t] for t in todo],
                    deadline,
                    attempt,
                )
            except DeadlineExceeded:
                running_late = deadline is None or time.time() >= deadline
                if attempt == 0 and len(todo) > 1 and not running_late:
                    todo = todo[: len(todo) // 2]  # refused after all: the better half
                    continue
                if attempt == 0:
                    raise  # nothing fits, or the deadline passed while the engine ran
                break  # the first round's answers stand; no time for another
            except QueueFull:
                if attempt == 0:
                    raise
                break
            except PromptTooLong:
                return [self._template(context, t, "prompt_too_long") for t in targets]
            for t, text in zip(todo, texts, strict=True):
                sentence, check = explanation_from(prompts[t], text, context, context.candidates[t])
                if sentence is not None:
                    done[t] = Explanation(sentence, "llm", "ok")
                else:
                    failed[t] = check
                    log.debug(
                        "reason for item %s failed %s: %r",
                        context.candidates[t].item_id,
                        check,
                        text,
                    )
            todo = [t for t in todo if t not in done]
            attempt += 1
        answered = [done.get(t) or self._template(context, t, failed[t]) for t in targets]
        self.stats.outcomes.update(e.check for e in answered)
        return answered

    async def _generate(
        self,
        context: PromptContext,
        chars: int,
        prompts: list[list[dict[str, str]]],
        lengths: list[int],
        steer: list[Steer],
        deadline: float | None,
        attempt: int,
    ) -> list[str]:
        """One round of explanations: greedy first, sampled (seeded by round) on later rounds."""
        new_tokens = self._explain_new_tokens(context, chars, lengths)
        width = len(prompts)
        max_tokens = self._explain_tokens(new_tokens, deadline, width)
        with self.admission.admit(self.cost.work(new_tokens, max_tokens, width), deadline):
            started = time.perf_counter()
            try:
                outs = await self._call(
                    self.engine.generate(
                        prompts,
                        max_tokens,
                        temperature=_RETRY_TEMPERATURE if attempt else 0.0,
                        seed=attempt or None,
                        steer=steer,
                        stop_at=None if deadline is None else deadline - _ANSWER_S,
                    ),
                    deadline,
                )
            except RerankFailed as exc:
                if isinstance(exc.__cause__, PromptTooLong):
                    raise exc.__cause__ from exc
                raise
        seconds = time.perf_counter() - started
        computed = sum(o.prompt_tokens - o.cached_tokens for o in outs)
        steps = max((o.output_tokens for o in outs), default=0)
        self.cost.observe_generate(computed, steps, seconds, width)
        for o in outs:
            self.stats.explain.add(o.prompt_tokens, o.cached_tokens)
        return [o.text for o in outs]

    def _explain_new_tokens(
        self, context: PromptContext, chars: int, lengths: Sequence[int]
    ) -> int:
        """Of explain prompts of `lengths` tokens, those the engine will compute: what the
        prefix cache cannot serve.

        They all start with the rerank prompt of `context` (less its task line). The part
        a recent rerank scored is cached; the rest of it (candidates the router appended)
        is computed once and then shared; each prompt computes its own task line, plus half
        a block on average (a prefix is cached in whole blocks).
        """
        cached = self._always_cached
        scored = self._scored.get(_user_key(context, chars))
        if scored is not None and _candidate_ids(context)[: len(scored[0])] == scored[0]:
            cached = max(scored[1] - _TASK_TOKENS, self._always_cached)
        common = self._common_tokens(context, chars)
        own = sum(max(n - common, 1) for n in lengths)
        return max(common - cached, 0) + own + len(lengths) * (self.config.block_size // 2)

    def _common_tokens(self, context: PromptContext, chars: int) -> int:
        """Tokens every explain prompt of `context` shares (its rerank prompt without the task
        line); the last answer is kept, as `explain` asks for it once per round and width."""
        key = (_user_key(context, chars), _candidate_ids(context))
        if self._common[0] != key:
            prompt = build_rerank_prompt(context, item_text_chars=chars)
            self._common = (key, max(self.engine.count_tokens(prompt) - _TASK_TOKENS, 0))
        return self._common[1]

    def _widest(
        self, context: PromptContext, chars: int, lengths: Sequence[int], deadline: float | None
    ) -> int:
        """How many prompts of `lengths` (best-ranked first) can be explained at
        `config.explain_min_tokens` before `deadline`, behind the work in flight."""
        if deadline is None:
            return len(lengths)
        left = deadline - time.time() - self.admission.backlog_s()
        least = self.config.explain_min_tokens
        for width in range(len(lengths), 0, -1):
            new_tokens = self._explain_new_tokens(context, chars, lengths[:width])
            if self.cost.predict(new_tokens, least, width) <= left:
                return width
        return 0

    def _explain_tokens(self, new_tokens: int, deadline: float | None, width: int) -> int:
        """Tokens per explanation of a batch of `width` that fit before `deadline` behind the
        work in flight."""
        most = self.config.explain_max_tokens
        if deadline is None:
            return most
        left = deadline - time.time() - self.admission.backlog_s()
        step = max(self.cost.step_cost(width), 1e-6)
        fit = int((left - self.cost.predict(new_tokens)) / step) + 1
        if fit < self.config.explain_min_tokens:
            need = self.cost.predict(new_tokens, self.config.explain_min_tokens, width)
            raise DeadlineExceeded(f"explanations need ~{need:.2f} s, {max(left, 0.0):.2f} s left")
        return min(fit, most)

    @staticmethod
    def _template(context: PromptContext, target: int, check: str) -> Explanation:
        item = context.candidates[target]
        reason = template_reason(
            item, context.history_titles, context.history_categories, context.query
        )
        return Explanation(reason, "template", check)

    # --- lifecycle --------------------------------------------------------------

    async def warm_up(self) -> dict[str, Any]:
        """A real rerank and real explanations of two made-up users; calibrates the costs.

        The first user's prompts are cold, the second's share only the fixed
        instructions with them: what every request can count on being cached.
        Between them, decode steps are timed at two batch widths.
        """
        # The engine's very first forward pass is several times slower than any later one.
        await self._call(
            self.engine.score(build_rerank_prompt(_WARM_UP[1], item_text_chars=0)), None
        )
        first = await self.rerank(_WARM_UP[0], _WARM_UP_SCORES)
        await self._calibrate_decode(first.item_text_chars)
        explained = await self.explain(
            _WARM_UP[0], [i for i, _ in first.order[:3]], item_text_chars=first.item_text_chars
        )
        second = await self.rerank(_WARM_UP[1], _WARM_UP_SCORES)
        self._always_cached = second.cached_tokens
        self.warmed = True
        report = {
            "rerank_prompt_tokens": first.prompt_tokens,
            "always_cached_tokens": self._always_cached,
            "explanations": [f"{e.source}:{e.check}" for e in explained],
            **self.cost.as_json(),
        }
        log.info("reranker warmed up: %s", report)
        return report

    async def _calibrate_decode(self, item_text_chars: int) -> None:
        """Measure a decode step alone and `_CALIBRATION_WIDTH` wide (`EngineCost.calibrate_steps`).

        One unmeasured generation goes first: the engine compiles the
        structured-output grammar on its first constrained request, which
        would count as decoding time otherwise.
        """
        context = _WARM_UP[0]
        prompts = [
            build_explain_prompt(
                context,
                t,
                item_text_chars=item_text_chars,
                target_text_chars=self.config.explain_text_chars,
            )
            for t in range(len(context.candidates))
        ]
        await self._call(self.engine.generate(prompts[:1], 4), None)
        samples = []
        for width in (1, _CALIBRATION_WIDTH):
            started = time.perf_counter()
            outs = await self._call(self.engine.generate(prompts[:width], _CALIBRATION_STEPS), None)
            seconds = time.perf_counter() - started
            computed = sum(o.prompt_tokens - o.cached_tokens for o in outs)
            steps = max(o.output_tokens for o in outs)
            step = self.cost.decode_step_of(computed, steps, seconds)
            if step is not None:
                samples.append((width, step))
        if len(samples) == 2:
            self.cost.calibrate_steps(samples)

    async def check_health(self) -> None:
        """Fails until `warm_up` has run, when the engine has died, or when it cannot score a
        prompt: probed only when it has not answered for `config.health_probe_s`."""
        if not self.warmed:
            raise RerankFailed("reranker is still warming up")
        try:
            self.engine.check_alive()
        except EngineFailed as exc:
            raise RerankFailed(f"reranker engine failed: {exc}") from exc
        if time.monotonic() - self._answered_at < self.config.health_probe_s:
            return
        messages = build_rerank_prompt(_WARM_UP[1], item_text_chars=0)
        out = await self._call(self.engine.score(messages), None)
        if not out.logprobs:
            raise RerankFailed("reranker engine returned no logprobs")

    def describe(self) -> dict[str, Any]:
        """Engine settings, learnt costs, queue and prefix-cache figures (for `/v1/health`)."""
        return {
            **self.engine.describe(),
            "warmed": self.warmed,
            "cost": self.cost.as_json(),
            "pending": self.admission.pending,
            "refused": dict(self.admission.refused),
            "rerank": self.stats.rerank.as_json(),
            "explain": self.stats.explain.as_json(),
            "explanations": dict(self.stats.outcomes),
        }

    def shutdown(self) -> None:
        """Stop the engine (idempotent)."""
        self.engine.shutdown()

    async def _call(self, awaitable: Awaitable[_T], deadline: float | None) -> _T:
        """Await an engine call until `deadline`; past it the call is cancelled (and aborted)."""
        try:
            if deadline is None:
                out = await awaitable
            else:
                out = await asyncio.wait_for(awaitable, timeout=max(deadline - time.time(), 0.0))
            self._answered_at = time.monotonic()
            return out
        except TimeoutError as exc:
            raise DeadlineExceeded("LLM work passed its deadline and was aborted") from exc
        except EngineFailed as exc:
            log.warning("reranker engine failed: %s", exc)
            raise RerankFailed(f"reranker engine failed: {exc}") from exc


def _with_candidates(context: PromptContext, candidates: list[Candidate]) -> PromptContext:
    return PromptContext(
        context.history_titles, context.history_categories, context.query, candidates
    )


def _user_key(context: PromptContext, chars: int) -> tuple:
    return (tuple(context.history_titles), context.query, chars)


def _candidate_ids(context: PromptContext) -> tuple[str, ...]:
    return tuple(c.item_id for c in context.candidates)


def _warm_up_contexts() -> list[PromptContext]:
    genres = ["Drama", "Comedy", "Sci-Fi", "Thriller", "Romance"]
    users = []
    for u, (history, query) in enumerate(
        ((["Quiet Harbour (1994)", "The Long Winter (2001)"], None), ([], "a funny road trip"))
    ):
        candidates = [
            Candidate(
                item_id=f"warm-{u}-{i}",
                title=f"Sample Story {u}-{i}",
                text=f"A {genres[i % 5].lower()} about a town, a journey and an old promise.",
                categories=[genres[i % 5]],
            )
            for i in range(10)
        ]
        users.append(PromptContext(history, [["Drama"]] * len(history), query, candidates))
    return users


_WARM_UP = _warm_up_contexts()
_WARM_UP_SCORES = [1.0 - i / 20 for i in range(10)]
