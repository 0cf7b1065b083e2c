"""Router core: compose encoder, shards and reranker into one recommendation, without Ray.

The stages and their deadline rules:

1. history: the stored history of `user_id` plus the request's `history`
   (unknown request items are a 404); vectors come from the owning shards.
2. encode the query (concurrently with 1) and build the profile.
3. retrieve: every shard searched concurrently with what is left of the
   deadline; a late or failed shard is named in `degraded` (`shard-N`).
   Collaborative candidates join; cold users with no query get popularity.
4. rerank the top candidates with the LLM, then explain the final items;
   either is skipped (and named in `degraded`) when it fails or would miss
   the deadline. Only when nothing at all can be returned is it an error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from deployments.config import AppConfig
from deployments.errors import DeadlineExceeded, NotFound, Unavailable
from deployments.reranker.prompts import Candidate
from deployments.router.schemas import RecommendedItem, RecommendRequest, RecommendResponse
from retrieval.collab import ItemKNN
from retrieval.merge import merge_top_k
from retrieval.profiles import blend_query, user_profile
from retrieval.shards import Hit, shard_of

__all__ = ["RouterCore", "ShardClient", "RerankClient"]

EncodeFn = Callable[[str], Awaitable[np.ndarray]]


class ShardClient(Protocol):
    """One shard as the router sees it (a Serve handle or a local core)."""

    async def search(
        self, vector: np.ndarray, k: int, exclude: list[str], categories: list[str] | None
    ) -> list[Hit]: ...

    async def lookup(self, item_ids: list[str]) -> dict[str, tuple[Hit, np.ndarray]]: ...


class RerankClient(Protocol):
    async def rerank(
        self,
        history_titles: list[str],
        query: str | None,
        candidates: list[Candidate],
        retrieval_scores: list[float],
    ) -> list[tuple[int, float]]: ...

    async def explain(
        self,
        history_titles: list[str],
        history_categories: list[list[str]],
        query: str | None,
        items: list[Candidate],
    ) -> list[tuple[str, bool]]: ...


@dataclass
class _Candidate:
    hit: Hit
    cosine: float
    cf: float = 0.0
    popular: float = 0.0
    sources: list[str] = field(default_factory=list)
    score: float = 0.0


class _Clock:
    def __init__(self, deadline_ms: int) -> None:
        self.start = time.perf_counter()
        self.deadline = self.start + deadline_ms / 1000.0
        self.timings: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def lap(self, stage: str, since: float) -> None:
        self.timings[stage] = round((time.perf_counter() - since) * 1000.0, 2)


class RouterCore:
    """Answers `RecommendRequest`s. Backends come in through the constructor."""

    def __init__(
        self,
        config: AppConfig,
        *,
        encode: EncodeFn,
        shards: Sequence[ShardClient],
        reranker: RerankClient | None = None,
        cf: ItemKNN | None = None,
        histories: dict[str, list[str]] | None = None,
    ) -> None:
        self.config = config
        self.encode = encode
        self.shards = list(shards)
        self.reranker = reranker
        self.cf = cf
        self.histories = histories or {}

    async def recommend(self, req: RecommendRequest) -> RecommendResponse:
        cfg = self.config.router
        clock = _Clock(req.deadline_ms or cfg.default_deadline_ms)
        degraded: list[str] = []

        t = time.perf_counter()
        stored = self.histories.get(req.user_id, []) if req.user_id else []
        history_ids = list(dict.fromkeys(stored + list(req.history or [])))[-cfg.max_history :]
        query_vec_task = asyncio.ensure_future(self.encode(req.query)) if req.query else None
        history = await self._lookup(history_ids, clock, degraded)
        if req.history:
            missing = [i for i in req.history if i not in history]
            if missing and not any(d.startswith("shard-") for d in degraded):
                if query_vec_task:
                    query_vec_task.cancel()
                raise NotFound(f"unknown item {missing[0]!r}", field="history")
        history_ids = [i for i in history_ids if i in history]
        query_vec = await self._within(query_vec_task, clock) if query_vec_task else None
        clock.lap("encode", t)

        t = time.perf_counter()
        profile = (
            user_profile(np.stack([history[i][1] for i in history_ids]), cfg.history_half_life)
            if history_ids
            else None
        )
        seen = history_ids if req.exclude_seen else []
        categories = req.filters.category if req.filters else None
        if profile is None and query_vec is None:
            candidates = await self._popular(req.k, seen, categories, clock, degraded)
        else:
            vector = blend_query(profile, query_vec, cfg.query_weight)
            candidates = await self._retrieve(
                vector, history_ids, seen, categories, req.k, clock, degraded
            )
        clock.lap("retrieve", t)
        if not candidates and any(d.startswith("shard-") for d in degraded):
            raise DeadlineExceeded("no shard answered within the deadline")
        ranked = sorted(candidates, key=lambda c: -c.score)

        reranked = False
        history_hits = [history[i][0] for i in history_ids]
        if req.rerank and ranked:
            ranked, reranked = await self._rerank(ranked, history_hits, req.query, clock, degraded)
        final = ranked[: req.k]
        explanations: list[str | None] = [None] * len(final)
        if req.explain and final:
            explanations = await self._explain(final, history_hits, req.query, clock, degraded)

        clock.timings["total"] = round((time.perf_counter() - clock.start) * 1000.0, 2)
        return RecommendResponse(
            items=[
                RecommendedItem(
                    item_id=c.hit.item_id,
                    title=c.hit.title,
                    score=round(c.score, 6),
                    sources=c.sources,
                    categories=c.hit.categories,
                    explanation=e,
                )
                for c, e in zip(final, explanations, strict=True)
            ],
            reranked=reranked,
            degraded=degraded,
            timings_ms=clock.timings,
            request_id=uuid.uuid4().hex,
        )

    async def _within(self, awaitable: Awaitable, clock: _Clock):
        try:
            return await asyncio.wait_for(awaitable, timeout=max(clock.left(), 0.001))
        except TimeoutError as exc:
            raise DeadlineExceeded("encoding the query missed the deadline") from exc

    async def _gather_shards(
        self, calls: dict[int, Awaitable], clock: _Clock, degraded: list[str]
    ) -> dict[int, object]:
        """Run per-shard calls concurrently; late or failed shards are named in `degraded`."""
        tasks = {s: asyncio.ensure_future(c) for s, c in calls.items()}
        if not tasks:
            return {}
        done, pending = await asyncio.wait(tasks.values(), timeout=max(clock.left(), 0.001))
        for task in pending:
            task.cancel()
        results = {}
        for s, task in tasks.items():
            if task in done and task.exception() is None:
                results[s] = task.result()
            elif f"shard-{s}" not in degraded:
                degraded.append(f"shard-{s}")
        return results

    async def _lookup(
        self, item_ids: list[str], clock: _Clock, degraded: list[str]
    ) -> dict[str, tuple[Hit, np.ndarray]]:
        by_shard: dict[int, list[str]] = {}
        for item_id in item_ids:
            by_shard.setdefault(shard_of(item_id, len(self.shards)), []).append(item_id)
        calls = {s: self.shards[s].lookup(ids) for s, ids in by_shard.items()}
        found: dict[str, tuple[Hit, np.ndarray]] = {}
        for part in (await self._gather_shards(calls, clock, degraded)).values():
            found.update(part)
        return found

    async def _retrieve(
        self,
        vector: np.ndarray,
        history_ids: list[str],
        seen: list[str],
        categories: list[str] | None,
        k: int,
        clock: _Clock,
        degraded: list[str],
    ) -> list[_Candidate]:
        cfg = self.config
        n = max(k, cfg.retriever.candidates)
        calls = {
            s: shard.search(vector, n, seen, categories) for s, shard in enumerate(self.shards)
        }
        results = await self._gather_shards(calls, clock, degraded)
        pool = {
            hit.item_id: _Candidate(hit=hit, cosine=hit.score, sources=["ann"])
            for hit in merge_top_k(results.values(), n)
        }
        if self.cf is not None and history_ids and cfg.router.cf_candidates:
            cf_hits = self.cf.recommend(history_ids, cfg.router.cf_candidates, exclude=seen)
            top = cf_hits[0][1] if cf_hits else 1.0
            new = [i for i, _ in cf_hits if i not in pool]
            rows = await self._lookup(new, clock, degraded) if new else {}
            for item_id, score in cf_hits:
                if item_id in pool:
                    pool[item_id].cf = score / top
                    pool[item_id].sources.append("cf")
                elif item_id in rows:
                    hit, vec = rows[item_id]
                    if categories and not set(categories) & set(hit.categories):
                        continue
                    pool[item_id] = _Candidate(
                        hit=hit, cosine=float(vec @ vector), cf=score / top, sources=["cf"]
                    )
        w = cfg.router.cf_weight if self.cf is not None and history_ids else 0.0
        for c in pool.values():
            c.score = (1.0 - w) * c.cosine + w * c.cf
        return list(pool.values())

    async def _popular(
        self,
        k: int,
        seen: list[str],
        categories: list[str] | None,
        clock: _Clock,
        degraded: list[str],
    ) -> list[_Candidate]:
        if self.cf is None:
            raise Unavailable("no history, no query and no popularity model for this index")
        want = max(k, self.config.retriever.candidates)
        # With a category filter, read further down the ranking so k can still be filled.
        ranked = self.cf.most_popular(want * (20 if categories else 1), exclude=seen)
        rows = await self._lookup([i for i, _ in ranked], clock, degraded)
        top = ranked[0][1] if ranked else 1.0
        out = []
        for item_id, pop in ranked:
            if item_id not in rows:
                continue
            hit = rows[item_id][0]
            if categories and not set(categories) & set(hit.categories):
                continue
            out.append(
                _Candidate(
                    hit=hit, cosine=0.0, popular=pop / top, sources=["popular"], score=pop / top
                )
            )
            if len(out) == want:
                break
        return out

    async def _rerank(
        self,
        ranked: list[_Candidate],
        history: list[Hit],
        query: str | None,
        clock: _Clock,
        degraded: list[str],
    ) -> tuple[list[_Candidate], bool]:
        if self.reranker is None:
            degraded.append("rerank")
            return ranked, False
        t = time.perf_counter()
        head = ranked[: self.config.reranker.max_candidates]
        try:
            order = await asyncio.wait_for(
                self.reranker.rerank(
                    [h.title for h in history],
                    query,
                    [_as_prompt_item(c.hit) for c in head],
                    [c.score for c in head],
                ),
                timeout=max(clock.left(), 0.001),
            )
        except (TimeoutError, RuntimeError, ConnectionError):
            degraded.append("rerank")
            clock.lap("rerank", t)
            return ranked, False
        for idx, score in order:
            head[idx].score = score
        reordered = [head[idx] for idx, _ in order] + ranked[len(head) :]
        clock.lap("rerank", t)
        return reordered, True

    async def _explain(
        self,
        final: list[_Candidate],
        history: list[Hit],
        query: str | None,
        clock: _Clock,
        degraded: list[str],
    ) -> list[str | None]:
        if self.reranker is None:
            degraded.append("explain")
            return [None] * len(final)
        t = time.perf_counter()
        n = min(len(final), self.config.router.explain_top)
        try:
            out = await asyncio.wait_for(
                self.reranker.explain(
                    [h.title for h in history],
                    [h.categories for h in history],
                    query,
                    [_as_prompt_item(c.hit) for c in final[:n]],
                ),
                timeout=max(clock.left(), 0.001),
            )
        except (TimeoutError, RuntimeError, ConnectionError):
            degraded.append("explain")
            clock.lap("explain", t)
            return [None] * len(final)
        clock.lap("explain", t)
        return [text for text, _grounded in out] + [None] * (len(final) - n)


def _as_prompt_item(hit: Hit) -> Candidate:
    return Candidate(item_id=hit.item_id, title=hit.title, text=hit.text, categories=hit.categories)
