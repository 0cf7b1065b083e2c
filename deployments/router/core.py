"""Router core: compose encoder, shards and reranker into one recommendation, without Ray.

The stages and their deadline rules:

1. history: the stored history of `user_id` plus the request's `history`
   (unknown request items are a 404); rows and vectors come from the owning
   shards, or from the replica's cache of them (`router.item_cache_size`, kept while
   their shard's version is unchanged: `deployments/router/rows.py`).
2. encode the query (concurrently with 1) and build the profile.
   An encoder that fails or is later than `encode_timeout_ms` costs the query
   only (`degraded: ["encoder"]`): the request goes on from its history, or
   from popularity when it has none.
3. retrieve: every retriever replica searched concurrently for ids and scores
   (one call each, for all the shards it serves; see `ShardLayout`), each sent
   only the seen items its shards own and bounded by what is left of the
   deadline and by `shard_timeout_ms`; a late or failed replica has each of its
   shards named in `degraded` (`shard-N`). The rows of the candidates come from
   the cache, the rest in one lookup per replica.
   Item-kNN, ALS, EASE and sequential-model candidates join; every candidate
   gets the features of `retrieval.fusion` (cosine, item-kNN, ALS, popularity,
   EASE, sequential) and their weighted sum, or the learned fusion's score of
   them (`retrieval.ltr`), is its score. The collaborative scores are kept to
   what the history touches (`retrieval.user_scores`); only the sequential
   model, fit up to `SEQUENTIAL_MAX_ITEMS` items, scores every catalog item.
   Cold users with no query get popularity.
4. rerank the top candidates with the LLM, then explain the final items in
   prompts that repeat the rerank prompt (its lettered candidates first);
   both calls carry the deadline, which the reranker sizes its work to. Either
   is skipped (and named in `degraded`) when it fails, is refused (queue
   full, cannot finish in time) or misses the deadline. Only when nothing at
   all can be returned is it an error.
   A fusion whose rerank weight is 0 skips the LLM call (it could not
   change the order); the answer then says `reranked: false`.

The fusion weights come from `index/fusion.json` (`llmrec eval --tune`) when
the deployment passes them in, else from `RouterConfig`. They are tuned on
history-only requests; a request with a `query` drops the popularity weight
and lifts the cosine weight to at least the collaborative weights' sum, so
the stated intent leads (`RouterCore.query_fusion`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from deployments.errors import (
    BackendFailed,
    DeadlineExceeded,
    NotFound,
    QueueFull,
    Unavailable,
)
from deployments.reranker.core import Explanation, RerankOutcome
from deployments.reranker.prompts import Candidate, PromptContext
from deployments.router.rows import RowCache
from deployments.router.schemas import RecommendedItem, RecommendRequest, RecommendResponse
from deployments.router.store import MemoryStore, UserStore
from retrieval.collab import AlsModel, FactorIndex, ItemKNN
from retrieval.config import AppConfig
from retrieval.ease import EaseModel
from retrieval.fusion import FEATURES, FusionWeights
from retrieval.merge import merge_top_k
from retrieval.profiles import blend_query, recency_weights, user_profile
from retrieval.sequential import SequentialModel
from retrieval.shards import Found, Hit, ShardLayout
from retrieval.user_scores import (
    Ids,
    Positioned,
    UserScores,
    als_scores,
    ease_scores,
    item_knn_scores,
    positions_of,
    sequential_scores,
    share_catalog,
)

__all__ = [
    "Answer",
    "PoolEntry",
    "RerankClient",
    "RouterCore",
    "ShardClient",
]

EncodeFn = Callable[[str], Awaitable[np.ndarray]]


class ShardClient(Protocol):
    """One retriever replica as the router sees it (a Serve handle or a local core).

    It serves the shards `ShardLayout.shards_of` gives it: a search covers all of
    them (best first, merged) and, asked `rows_for`, carries the rows of its best
    that many; a lookup answers the ids they hold.
    """

    async def search_ids(
        self,
        vector: np.ndarray,
        k: int,
        exclude: list[str],
        categories: list[str] | None,
        also: list[str],
        rows_for: int = 0,
    ) -> Found: ...

    async def lookup(self, item_ids: list[str]) -> dict[str, tuple[Hit, np.ndarray]]: ...


class RerankClient(Protocol):
    """The reranker as the router sees it (a Serve handle or a local `RerankerCore`).

    The contract is `RerankerCore.rerank` / `RerankerCore.explain`: `deadline`
    is the request's deadline as a `time.time()` value, and the reranker
    neither starts nor keeps running work past it. Failures the router
    degrades on: `BackendFailed` (the engine failed), `QueueFull` (queue
    full), `DeadlineExceeded` (would not finish in time), `BackendUnavailable`
    (the replica did not answer) and the router's own `TimeoutError`. Anything
    else is a bug and is not hidden.
    """

    async def rerank(
        self,
        context: PromptContext,
        retrieval_scores: list[float],
        weight: float | None = None,
        deadline: float | None = None,
        explain_after: int = 0,
    ) -> RerankOutcome: ...

    async def explain(
        self,
        context: PromptContext,
        targets: list[int],
        item_text_chars: int | None = None,
        deadline: float | None = None,
    ) -> list[Explanation]: ...


_ANN, _KNN, _ALS, _POP, _EASE, _SEQ = range(len(FEATURES))
_STAGE_ERRORS = (TimeoutError, BackendFailed, QueueFull, DeadlineExceeded)
"""What costs a stage (named in `degraded`) instead of the request: the router's own
timeouts and the project's failure family (`BackendUnavailable` is a `BackendFailed`)."""


@dataclass(frozen=True)
class _Models:
    """The collaborative models a request scores with; `use_models` swaps them as one."""

    cf: ItemKNN | None = None
    als: AlsModel | None = None
    ease: EaseModel | None = None
    sequential: SequentialModel | None = None
    als_index: FactorIndex | None = None
    """ALS's item factors, searched for its candidates."""
    popularity: np.ndarray | None = None
    """`cf.popularity_feature()`."""
    catalog: dict[str, int] | None = None
    """The catalog index the models share (`share_catalog`): a request's seen items and
    pool are looked up in it once for all of them."""


@dataclass
class _Candidate:
    item_id: str
    hit: Hit | None  # the row, fetched only for the candidates that may be shown
    features: np.ndarray  # FEATURES order
    sources: list[str] = field(default_factory=list)
    score: float = 0.0


@dataclass(frozen=True)
class PoolEntry:
    """One fused candidate before ordering: its features (`FEATURES` order) and sources."""

    item_id: str
    features: tuple[float, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Answer:
    """A response plus, per item, its `Explanation` (None where none was made)."""

    response: RecommendResponse
    explanations: list[Explanation | None]

    @property
    def grounded(self) -> list[bool | None]:
        """Per item: True for a generated reason that passed its checks, False for a template."""
        return [None if e is None else e.source == "llm" for e in self.explanations]


@dataclass
class _LlmPrompt:
    """What the rerank put in its prompt, so the explanations can share it."""

    lettered: list[_Candidate]
    item_text_chars: int | None = None


class _Clock:
    """The request's deadline, counted from `arrived` (a `perf_counter` value; default now)."""

    def __init__(self, deadline_ms: int, arrived: float | None = None) -> None:
        self.start = time.perf_counter() if arrived is None else arrived
        self.deadline = self.start + deadline_ms / 1000.0
        # The same instant on the wall clock, for stages in other processes.
        self.deadline_unix = time.time() + (self.deadline - time.perf_counter())
        self.timings: dict[str, float] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def lap(self, stage: str, since: float) -> None:
        self.timings[stage] = round((time.perf_counter() - since) * 1000.0, 2)


class RouterCore:
    """Answers `RecommendRequest`s. Backends and models come in through the constructor.

    `shards[g]` is retriever replica g of `layout` (default: one shard each).
    `cf` (item-kNN, also the popularity ranking), `als`, `ease` and `sequential` are
    optional; a missing model contributes zero to its feature (see `use_models`). `fusion`
    defaults to the weights in `config.router` (see `FusionWeights.from_config`).
    """

    def __init__(
        self,
        config: AppConfig,
        *,
        encode: EncodeFn,
        shards: Sequence[ShardClient],
        reranker: RerankClient | None = None,
        cf: ItemKNN | None = None,
        als: AlsModel | None = None,
        ease: EaseModel | None = None,
        sequential: SequentialModel | None = None,
        fusion: FusionWeights | None = None,
        histories: dict[str, list[str]] | None = None,
        layout: ShardLayout | None = None,
        store: UserStore | None = None,
    ) -> None:
        self.config = config
        self.encode = encode
        self.shards = list(shards)
        # shards[g] is retriever replica g; by default each serves one shard.
        self.layout = layout if layout is not None else ShardLayout(len(self.shards))
        if self.layout.n_replicas != len(self.shards):
            raise ValueError(
                f"{len(self.shards)} retriever clients for a layout of {self.layout.n_replicas}"
            )
        self.reranker = reranker
        self.use_models(cf, als, ease, sequential)
        self.fusion = fusion if fusion is not None else FusionWeights.from_config(config.router)
        # Stored histories: the deployment's store, or a dict in memory (tests, `llmrec eval`).
        self.store = store if store is not None else MemoryStore(histories)
        self.in_flight = 0
        # Retriever replicas that were late or failed, and until when calls skip them.
        self._skip_replica_until: dict[int, float] = {}
        rc = config.router
        # Only rows that exist are cached: an unknown id is asked again (and 404'd) every time.
        self.item_rows: RowCache | None = (
            RowCache(rc.item_cache_size, rc.item_cache_ttl_s, self.layout.shard)
            if rc.item_cache_size
            else None
        )
        f = self.fusion
        # A query states what the user wants now: the cosine to the query-blended profile
        # must count at least as much as the collaborative scores, and popularity not at all.
        # The learned fusion was trained on history requests only: a query uses the weights.
        self.query_fusion = dataclasses.replace(
            f,
            ann=max(f.ann, f.item_knn + f.als + f.ease + f.sequential, 1e-6),
            popularity=0.0,
            learned=None,
        )

    def use_models(
        self,
        cf: ItemKNN | None,
        als: AlsModel | None,
        ease: EaseModel | None,
        sequential: SequentialModel | None = None,
    ) -> None:
        """Use these collaborative models (at start, and when `llmrec build --incremental`
        fit them again); requests in work finish with the ones they started with.

        Builds ALS's `FactorIndex` first (`router.als_exact_max_items`: seconds for an
        HNSW graph over a large catalog, so a running replica calls this from a worker
        thread), then swaps all the models in one assignment.
        """
        rc = self.config.router
        share_catalog(cf, als, ease, sequential)
        first = next((m for m in (cf, als, ease, sequential) if m is not None), None)
        self._models = _Models(
            cf=cf,
            als=als,
            ease=ease,
            sequential=sequential,
            als_index=(
                FactorIndex(
                    als.item_factors,
                    exact_max_items=rc.als_exact_max_items,
                    ef_search=rc.als_ef_search,
                )
                if als is not None
                else None
            ),
            popularity=cf.popularity_feature() if cf is not None else None,
            catalog=first.index if first is not None else None,
        )

    async def recommend(
        self, req: RecommendRequest, arrived: float | None = None
    ) -> RecommendResponse:
        """The answer to `req` (see the module docstring for the stages and their errors).

        The deadline counts from `arrived` (`time.perf_counter()` when the
        request reached the ingress; default now). With `router.max_in_flight`
        requests already in work, `QueueFull` (503 with Retry-After) at once.
        """
        if self.in_flight >= self.config.router.max_in_flight:
            raise QueueFull(f"router at capacity ({self.in_flight} requests in work); retry soon")
        self.in_flight += 1
        try:
            return (await self.answer(req, arrived)).response
        finally:
            self.in_flight -= 1

    async def answer(self, req: RecommendRequest, arrived: float | None = None) -> Answer:
        """`recommend`, plus each item's `Explanation`."""
        clock = _Clock(req.deadline_ms or self.config.router.default_deadline_ms, arrived)
        degraded: list[str] = []
        # Rows for what can be shown: the top k, or the LLM's candidates when it reranks.
        rows_for = max(req.k, self.config.reranker.max_candidates if req.rerank else 0)
        history_ids, history, candidates = await self._candidates(req, clock, degraded, rows_for)
        ranked = [c for c in sorted(candidates, key=lambda c: -c.score) if c.hit is not None]

        reranked = False
        history_hits = [history[i][0] for i in history_ids]
        n_explain = min(req.k, self.config.router.explain_top) if req.explain else 0
        prompt = _LlmPrompt(lettered=[])
        if req.rerank and ranked:
            ranked, reranked, prompt = await self._rerank(
                ranked, history_hits, req.query, n_explain, clock, degraded
            )
        final = ranked[: req.k]
        explained: list[Explanation | None] = [None] * len(final)
        if req.explain and final:
            explained = await self._explain(final, prompt, history_hits, req.query, clock, degraded)

        clock.timings["total"] = round((time.perf_counter() - clock.start) * 1000.0, 2)
        response = RecommendResponse(
            items=[
                RecommendedItem(
                    item_id=c.hit.item_id,
                    title=c.hit.title,
                    score=round(c.score, 6),
                    sources=c.sources,
                    categories=c.hit.categories,
                    explanation=e.text if e else None,
                    explanation_source=e.source if e else None,
                )
                for c, e in zip(final, explained, strict=True)
            ],
            reranked=reranked,
            degraded=degraded,
            timings_ms=clock.timings,
            request_id=uuid.uuid4().hex,
        )
        return Answer(response, explained)

    async def candidate_pool(self, req: RecommendRequest) -> list[PoolEntry]:
        """The candidates of `req` with their fusion features, before ordering.

        The same stages and errors as `recommend` up to retrieval; for offline
        tuning of the fusion weights (`llmrec eval --tune`), which re-scores
        one pool per user under many weightings.
        """
        clock = _Clock(req.deadline_ms or self.config.router.default_deadline_ms)
        _, _, candidates = await self._candidates(req, clock, [], rows_for=0)
        return [
            PoolEntry(c.item_id, tuple(float(f) for f in c.features), tuple(c.sources))
            for c in candidates
        ]

    async def _candidates(
        self, req: RecommendRequest, clock: _Clock, degraded: list[str], rows_for: int
    ) -> tuple[list[str], dict[str, tuple[Hit, np.ndarray]], list[_Candidate]]:
        """History ids, their rows and vectors, and the scored candidate pool of `req`: with
        `rows_for` > 0 only its best `rows_for`, with their rows (see `_retrieve`)."""
        cfg = self.config.router
        t = time.perf_counter()
        stored: list[str] = []
        if req.user_id:
            stored = await self.store.history(req.user_id)
            clock.lap("store", t)  # the stored history's read (`router.user_store`)
        # Every item the user has seen counts for exclude_seen; the profile uses the latest.
        seen_all = list(dict.fromkeys(stored + list(req.history or [])))
        history_ids = seen_all[-cfg.max_history :]
        window = set(history_ids)
        # Request ids older than the window are looked up too: an unknown one is still a 404.
        older = [i for i in dict.fromkeys(req.history or []) if i not in window]
        query_vec_task = asyncio.ensure_future(self.encode(req.query)) if req.query else None
        history = await self._lookup(history_ids + older, clock, degraded)
        if req.history:
            missing = [i for i in req.history if i not in history]
            if missing and not any(d.startswith("shard-") for d in degraded):
                if query_vec_task:
                    query_vec_task.cancel()
                raise NotFound(f"unknown item {missing[0]!r}", field="history")
        history_ids = [i for i in history_ids if i in history]
        query_vec = await self._query_vector(query_vec_task, clock, degraded)
        clock.lap("encode", t)

        t = time.perf_counter()
        half_life = self.fusion.profile_half_life or cfg.history_half_life
        profile = (
            user_profile(np.stack([history[i][1] for i in history_ids]), half_life)
            if history_ids
            else None
        )
        seen = seen_all if req.exclude_seen else []
        categories = req.filters.category if req.filters else None
        if profile is None and query_vec is None:
            candidates = await self._popular(req.k, seen, categories, clock, degraded)
        else:
            vector = blend_query(profile, query_vec, cfg.query_weight)
            weights = self.fusion if query_vec is None else self.query_fusion
            candidates = await self._retrieve(
                vector, history_ids, seen, categories, req.k, weights, clock, degraded, rows_for
            )
        clock.lap("retrieve", t)
        if not candidates and any(d.startswith("shard-") for d in degraded):
            raise DeadlineExceeded("no shard answered within the deadline")
        return history_ids, history, candidates

    async def _query_vector(
        self, task: Awaitable[np.ndarray] | None, clock: _Clock, degraded: list[str]
    ) -> np.ndarray | None:
        """The encoded query; None (and "encoder" degraded) when it fails or comes too late."""
        if task is None:
            return None
        bound = min(clock.left(), self.config.router.encode_timeout_ms / 1000.0)
        try:
            return await asyncio.wait_for(task, timeout=max(bound, 0.001))
        except _STAGE_ERRORS:
            degraded.append("encoder")
            return None

    async def _gather_shards(
        self, calls: dict[int, Coroutine[Any, Any, Any]], clock: _Clock, degraded: list[str]
    ) -> dict[int, object]:
        """Run per-replica calls concurrently; the shards of a late or failed one go in `degraded`.

        A replica late or failed within `router.shard_retry_s` is not called (its call is
        closed unstarted) and is degraded at once. A call that raised something outside
        `_STAGE_ERRORS` (a bug) is raised.
        """
        now = time.monotonic()
        tasks = {}
        for s, call in calls.items():
            if self._skip_replica_until.get(s, 0.0) > now:
                call.close()
                degraded.extend(n for n in self.layout.names_of(s) if n not in degraded)
            else:
                tasks[s] = asyncio.ensure_future(call)
        if not tasks:
            return {}
        bound = min(clock.left(), self.config.router.shard_timeout_ms / 1000.0)
        done, pending = await asyncio.wait(tasks.values(), timeout=max(bound, 0.001))
        for task in pending:
            task.cancel()
        results = {}
        for s, task in tasks.items():
            error = task.exception() if task in done else None
            if error is not None and not isinstance(error, _STAGE_ERRORS):
                raise error
            if task in done and error is None:
                results[s] = task.result()
                self._skip_replica_until.pop(s, None)
            else:
                degraded.extend(n for n in self.layout.names_of(s) if n not in degraded)
                retry_s = self.config.router.shard_retry_s
                if retry_s > 0:
                    self._skip_replica_until[s] = time.monotonic() + retry_s
        return results

    async def _lookup(
        self,
        item_ids: list[str],
        clock: _Clock,
        degraded: list[str],
        known: dict[str, tuple[Hit, np.ndarray]] | None = None,
    ) -> dict[str, tuple[Hit, np.ndarray]]:
        """Rows and vectors of `item_ids` that exist: `known` (this request's, fetched with its
        search) and cached ones, the rest from their replicas."""
        cache, known = self.item_rows, known or {}
        found: dict[str, tuple[Hit, np.ndarray]] = {}
        missing = []
        for item_id in item_ids:
            row = known.get(item_id)
            if row is None and cache is not None:
                row = cache.get(item_id)
            if row is not None:
                found[item_id] = row
            else:
                missing.append(item_id)
        calls = {
            g: self.shards[g].lookup(ids) for g, ids in self._by_replica(missing).items() if ids
        }
        if not calls:
            return found
        versions = cache.versions() if cache is not None else {}  # what the rows are at least
        for part in (await self._gather_shards(calls, clock, degraded)).values():
            found.update(part)
            if cache is not None:
                cache.put(part, versions)
        return found

    def _cached_cosine(
        self,
        vector: np.ndarray,
        proposed: list[str],
        answered: dict[int, object],
        categories: list[str] | None,
    ) -> dict[str, float]:
        """The cosine of the proposals whose replica did not answer, from the row cache."""
        if self.item_rows is None or len(answered) == len(self.shards):
            return {}
        wanted = set(categories or ())
        out = {}
        for item_id in proposed:
            row = None
            if self.layout.replica(item_id) not in answered:
                row = self.item_rows.get(item_id)
            if row is not None and (not wanted or wanted & set(row[0].categories)):
                out[item_id] = float(row[1] @ vector)
        return out

    def _by_replica(self, item_ids: Iterable[str]) -> dict[int, list[str]]:
        """`item_ids` split by the retriever replica that serves them (every replica a key)."""
        if len(self.shards) == 1:  # one replica serves every shard: nothing to hash
            return {0: list(item_ids)}
        parts: dict[int, list[str]] = {g: [] for g in range(len(self.shards))}
        for item_id in item_ids:
            parts[self.layout.replica(item_id)].append(item_id)
        return parts

    def forget_items(self, item_ids: Iterable[str]) -> None:
        """Drop cached rows of items that changed (upserted or deleted through this replica)."""
        if self.item_rows is not None:
            self.item_rows.forget(item_ids)

    def _collaborative(
        self, models: _Models, history_ids: list[str], seen: Sequence[str]
    ) -> dict[str, UserScores]:
        """Per model (`cf`, `als`, `ease`, `sequential`) that scores an unseen item above 0:
        its normalised scores and its proposals (`retrieval.user_scores`).

        Scores are divided by the user's best unseen score (clipped at 0), so 1.0
        is the model's favourite and seen items score 0. EASE scores the history
        recency-weighted (`router.ease_half_life`).
        """
        cfg = self.config.router
        if not history_ids:
            return {}
        if models.catalog is not None:  # one lookup of the seen items for every model
            seen = Positioned.of(models.catalog, seen)
        scored: dict[str, UserScores | None] = {}
        if models.cf is not None:
            scored["cf"] = item_knn_scores(models.cf, history_ids, seen, cfg.cf_candidates)
        if models.als is not None and models.als_index is not None:
            scored["als"] = als_scores(
                models.als, models.als_index, history_ids, seen, cfg.als_candidates
            )
        if models.ease is not None:
            weights = recency_weights(len(history_ids), cfg.ease_half_life)
            scored["ease"] = ease_scores(
                models.ease, history_ids, weights, seen, cfg.ease_candidates
            )
        if models.sequential is not None:
            scored["sequential"] = sequential_scores(
                models.sequential, history_ids, seen, cfg.sequential_candidates
            )
        return {name: scores for name, scores in scored.items() if scores is not None}

    async def _retrieve(
        self,
        vector: np.ndarray,
        history_ids: list[str],
        seen: list[str],
        categories: list[str] | None,
        k: int,
        weights: FusionWeights,
        clock: _Clock,
        degraded: list[str],
        rows_for: int,
    ) -> list[_Candidate]:
        """The fused pool: with `rows_for` > 0 its best `rows_for` (best first) with their rows,
        else all of it without rows."""
        n = max(k, self.config.retriever.candidates)
        models = self._models  # the same models for the whole request, even across a swap
        collaborative = self._collaborative(models, history_ids, seen)
        proposed = list(dict.fromkeys(i for s in collaborative.values() for i in s.top))
        # One call per replica: its nearest items (without the seen ones its shards own)
        # and the cosine of the collaborative proposals they hold, ids and scores only.
        seen_by_replica, asked = self._by_replica(seen), self._by_replica(proposed)
        # Without a history the shown items are mostly the nearest (the pool has no
        # collaborative proposals): their rows come with the search, sparing a second call.
        rows_with_search = 0 if history_ids else rows_for
        calls = {
            g: shard.search_ids(
                vector, n, seen_by_replica[g], categories, asked[g], rows_with_search
            )
            for g, shard in enumerate(self.shards)
        }
        t = time.perf_counter()
        results = await self._gather_shards(calls, clock, degraded)
        clock.lap("search", t)  # the retrieve stage's wait on its shard calls
        prefetched = {i: row for r in results.values() for i, row in (r.rows or {}).items()}
        if self.item_rows is not None:
            # The shards' versions now: rows kept from before a change are asked again.
            versions = {s: v for r in results.values() for s, v in (r.versions or {}).items()}
            self.item_rows.learn(versions)
            self.item_rows.put(prefetched, versions)
        ann = {
            hit.item_id: hit.score for hit in merge_top_k([r.nearest for r in results.values()], n)
        }
        # A proposal no shard scored is deleted, outside the category filter, or on a failed
        # replica: those last are scored from their cached rows, when the cache has them.
        cosine = {s.item_id: s.score for r in results.values() for s in r.scored}
        cosine.update(self._cached_cosine(vector, proposed, results, categories))
        new_ids = [i for i in proposed if i not in ann and i in cosine]
        item_ids = [*ann, *new_ids]
        if not item_ids:
            return []
        # Every candidate's features at once: arrays in FEATURES order, then one fuse.
        features = np.zeros((len(item_ids), len(FEATURES)), dtype=np.float64)
        features[:, _ANN] = [ann.get(i, cosine.get(i, 0.0)) for i in item_ids]
        # The pool looked up once in the shared catalog index, for every model.
        pooled: Ids = (
            item_ids if models.catalog is None else Positioned.of(models.catalog, item_ids)
        )
        for column, name in ((_KNN, "cf"), (_ALS, "als"), (_EASE, "ease"), (_SEQ, "sequential")):
            if name in collaborative:
                features[:, column] = collaborative[name].of(pooled)
        if models.cf is not None and models.popularity is not None:
            features[:, _POP] = _gather(models.popularity, models.cf.index, pooled)
        scores = weights.score(features, len(history_ids))
        # Candidates are built for what can be shown or reranked: the best `rows_for`, best
        # first (ties in pool order); with rows_for 0 (the offline pool), all, in pool order.
        if rows_for > 0:
            chosen = np.argsort(-scores, kind="stable")[:rows_for]
        else:
            chosen = range(len(item_ids))
        proposers = {source: set(s.top) for source, s in collaborative.items()}
        pool = []
        for p in chosen:
            item_id = item_ids[p]
            sources = ["ann"] if item_id in ann else []
            sources += [source for source, ids in proposers.items() if item_id in ids]
            pool.append(_Candidate(item_id, None, features[p], sources, float(scores[p])))
        if rows_for <= 0:
            return pool
        t = time.perf_counter()
        rows = await self._lookup([c.item_id for c in pool], clock, degraded, prefetched)
        clock.lap("rows", t)  # rows that came with the search or were cached, else looked up
        for c in pool:
            if c.item_id in rows:
                c.hit = rows[c.item_id][0]
        # Those without a row were deleted since the search, or their replica failed the lookup.
        return [c for c in pool if c.hit is not None]

    async def _popular(
        self,
        k: int,
        seen: list[str],
        categories: list[str] | None,
        clock: _Clock,
        degraded: list[str],
    ) -> list[_Candidate]:
        models = self._models
        if models.cf is None or models.popularity is None:
            raise Unavailable("no history, no query and no popularity model for this index")
        want = max(k, self.config.retriever.candidates)
        # With a category filter, read further down the ranking so k can still be filled.
        ranked = models.cf.most_popular(want * (20 if categories else 1), exclude=seen)
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
                    item_id=item_id,
                    hit=hit,
                    features=_popularity_features(
                        float(models.popularity[models.cf.index[item_id]])
                    ),
                    sources=["popular"],
                    score=pop / top,
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
        n_explain: int,
        clock: _Clock,
        degraded: list[str],
    ) -> tuple[list[_Candidate], bool, _LlmPrompt]:
        weight = self.fusion.rerank
        if weight == 0.0:
            return ranked, False, _LlmPrompt([])  # tuned off: the LLM could not change the order
        if self.reranker is None:
            degraded.append("rerank")
            return ranked, False, _LlmPrompt([])
        t = time.perf_counter()
        head = ranked[: self.config.reranker.max_candidates]
        try:
            outcome = await asyncio.wait_for(
                self.reranker.rerank(
                    _context(history, query, head),
                    [c.score for c in head],
                    weight,
                    clock.deadline_unix,
                    n_explain,
                ),
                timeout=max(clock.left(), 0.001),
            )
        except _STAGE_ERRORS:
            degraded.append("rerank")
            clock.lap("rerank", t)
            return ranked, False, _LlmPrompt([])
        for idx, score in outcome.order:
            head[idx].score = score
        reordered = [head[idx] for idx, _ in outcome.order] + ranked[len(head) :]
        clock.lap("rerank", t)
        return reordered, True, _LlmPrompt(head[: outcome.lettered], outcome.item_text_chars)

    async def _explain(
        self,
        final: list[_Candidate],
        prompt: _LlmPrompt,
        history: list[Hit],
        query: str | None,
        clock: _Clock,
        degraded: list[str],
    ) -> list[Explanation | None]:
        if self.reranker is None:
            degraded.append("explain")
            return [None] * len(final)
        t = time.perf_counter()
        n = min(len(final), self.config.router.explain_top)
        # The rerank's lettered candidates first, in its order, so the explain prompts
        # repeat its prompt and the engine serves that part from its prefix cache.
        lettered = list(prompt.lettered)
        for c in final[:n]:
            if all(c is not other for other in lettered):
                lettered.append(c)
        targets = [next(j for j, c in enumerate(lettered) if c is item) for item in final[:n]]
        try:
            out = await asyncio.wait_for(
                self.reranker.explain(
                    _context(history, query, lettered),
                    targets,
                    prompt.item_text_chars,
                    clock.deadline_unix,
                ),
                timeout=max(clock.left(), 0.001),
            )
        except _STAGE_ERRORS:
            degraded.append("explain")
            clock.lap("explain", t)
            return [None] * len(final)
        clock.lap("explain", t)
        return list(out) + [None] * (len(final) - n)


def _context(history: list[Hit], query: str | None, candidates: list[_Candidate]) -> PromptContext:
    return PromptContext(
        history_titles=[h.title for h in history],
        history_categories=[h.categories for h in history],
        query=query,
        candidates=[_as_prompt_item(c.hit) for c in candidates],
    )


def _gather(values: np.ndarray, index: dict[str, int], item_ids: Ids) -> np.ndarray:
    """`values` at the positions of `item_ids` in `index`; 0 for ids it does not know."""
    pos = positions_of(index, item_ids)
    return np.where(pos >= 0, values[np.maximum(pos, 0)], 0.0)


def _popularity_features(popularity: float) -> np.ndarray:
    """The features of a popularity-only candidate: every other source scores it 0."""
    f = np.zeros(len(FEATURES), dtype=np.float64)
    f[_POP] = popularity
    return f


def _as_prompt_item(hit: Hit) -> Candidate:
    return Candidate(item_id=hit.item_id, title=hit.title, text=hit.text, categories=hit.categories)
