"""The Router Serve deployment: FastAPI ingress routing HTTP to `RouterCore` and `ItemStore`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.errors import BackendUnavailable, LlmrecError, NotFound, QueueFull
from deployments.heap import settle_heap
from deployments.logs import replica_logging
from deployments.router.auth import ApiKeys
from deployments.router.core import RouterCore
from deployments.router.feedback import (
    FEEDBACK_FILE,
    FeedbackLog,
)
from deployments.router.http import (
    error_response,
    parse_feedback,
    parse_items,
    parse_recommend,
    recommend_response,
)
from deployments.router.items import ItemStore
from deployments.router.metrics import RouterMetrics
from deployments.router.store import open_store
from retrieval.build import (
    ALS_NAME,
    CF_NAME,
    EASE_NAME,
    SEQUENTIAL_NAME,
    item_texts,
    load_als,
    load_cf,
    load_ease,
    load_sequential,
)
from retrieval.config import AppConfig
from retrieval.fusion import load_fusion
from retrieval.injection import describe_flagged, flagged_items
from retrieval.privacy import UserRefs
from retrieval.sequential import choose_engine
from retrieval.shards import ShardLayout, load_manifest

__all__ = ["Router", "api"]

api = FastAPI(title="llmrec", version="1")
log = logging.getLogger(__name__)


@api.exception_handler(LlmrecError)
async def _llmrec_error(request: Request, exc: LlmrecError) -> Response:
    """Every route's errors become the status and JSON body of DESIGN.md (and a metric)."""
    router = getattr(request.app.state, "router_metrics", None)
    if router is not None:
        router.failed(exc.kind)
    return error_response(exc)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """A bug: logged with its traceback under a reference the answer gives (never the text)."""
    reference = uuid.uuid4().hex[:12]
    log.error(
        "internal error %s on %s %s", reference, request.method, request.url.path, exc_info=exc
    )
    router = getattr(request.app.state, "router_metrics", None)
    if router is not None:
        router.failed("internal")
    body = {"error": {"type": "internal", "message": f"internal error (reference {reference})"}}
    return JSONResponse(body, status_code=500)


api.add_exception_handler(Exception, _internal_error)

HEALTH_TIMEOUT_S = 30.0


def _hide_docs(app: FastAPI) -> None:
    """Drop the interactive docs and the OpenAPI schema (they describe every route)."""
    urls = (app.docs_url, app.redoc_url, app.openapi_url, app.swagger_ui_oauth2_redirect_url)
    hidden = {u for u in urls if u}
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") not in hidden]


class _Remote:
    """Calls a deployment method; the one place Ray's failures are translated.

    An `LlmrecError` raised in the replica (Ray re-raises it as an instance of
    its own class) passes through as it is; a full queue (Serve's
    `BackPressureError`) becomes `QueueFull`; any other exception the
    replica's code raised (`RayTaskError`) is a bug and passes on as it is,
    to become a logged 500; every other Ray failure (a dead or unreachable
    replica) becomes `BackendUnavailable` naming the deployment only (the
    Ray details, actor ids and node addresses, go to the log). When the
    caller stops waiting (its deadline passed, or its client went away) the
    call is cancelled in the replica too: awaiting a Serve response does not
    cancel it by itself.
    """

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def __getattr__(self, method: str):
        name = self.handle.deployment_name

        async def call(*args):
            response = getattr(self.handle, method).remote(*args)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except LlmrecError:
                raise
            except BackPressureError as exc:
                raise QueueFull(f"{name} is at capacity") from exc
            except RayTaskError:
                raise  # a bug in the replica: the 500 handler logs it, with its reference
            except RayError as exc:
                log.warning("%s.%s failed: %s", name, method, exc)
                raise BackendUnavailable(f"{name} did not answer") from exc

        return call


@serve.deployment
@serve.ingress(api)
class Router:
    def __init__(
        self,
        config: dict,
        encoder: DeploymentHandle,
        shards: list[DeploymentHandle],
        reranker: DeploymentHandle | None = None,
    ) -> None:
        replica_logging()
        self.config = AppConfig.model_validate(config)
        self.keys = ApiKeys.from_config(self.config.router)
        docs = self.config.router.docs
        if not (docs if docs is not None else not self.keys.enabled):
            _hide_docs(api)
        self.metrics = RouterMetrics()
        api.state.router_metrics = self.metrics
        self.encoder = _Remote(encoder)
        self.shards = [_Remote(s) for s in shards]
        n_shards = load_manifest(self.config.index_path).n_shards
        self.layout = ShardLayout(n_shards, self.config.retriever.shards_per_replica)
        self.reranker = _Remote(reranker) if reranker is not None else None
        self.feedback = FeedbackLog(self.config.data_path / FEEDBACK_FILE)
        self.user_ref = UserRefs.for_data_dir(self.config.data_path)  # user ids as logs show them
        self.store = open_store(self.config, self.feedback)
        self._reloading = False
        # Named in each answer's X-Replica header, so a client can tell replicas apart.
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.core = RouterCore(
            self.config,
            encode=self._encode,
            shards=self.shards,
            reranker=self.reranker,
            **self._load_models(),
            # Tuned weights from `llmrec eval --tune`; RouterConfig's when absent or disabled.
            fusion=(
                load_fusion(self.config.index_path) if self.config.router.use_tuned_fusion else None
            ),
            store=self.store,
            layout=self.layout,
        )
        # Catalog writes through this replica drop the core's cached rows of those items.
        self.items = ItemStore(
            self.config,
            encode=self._encode,
            shards=self.shards,
            on_change=self.core.forget_items,
            layout=self.layout,
        )
        # Out of the collector's full passes: the models' indexes and the stored histories.
        log.info("router loaded; %d objects frozen out of garbage collection", settle_heap())

    def _model_files(self) -> tuple[float, ...]:
        """When each collaborative model file last changed (0: absent)."""
        index = self.config.index_path
        return tuple(
            (index / name).stat().st_mtime if (index / name).exists() else 0.0
            for name in (CF_NAME, ALS_NAME, EASE_NAME, SEQUENTIAL_NAME)
        )

    def _load_models(self) -> dict[str, Any]:
        self._models_seen = self._model_files()
        self._models_checked = time.monotonic()
        index = self.config.index_path
        sequential = load_sequential(index)
        if sequential is not None:
            import torch  # loaded with the model above

            rc = self.config.router
            torch.set_num_threads(rc.sequential_threads)
            engine = choose_engine(sequential, rc.sequential_engine, rc.sequential_threads)
            log.info("the sequential model scores in %s", engine)
        return {
            "cf": load_cf(index),
            "als": load_als(index),
            "ease": load_ease(index),
            "sequential": sequential,
        }

    async def _reload_models_if_changed(self) -> None:
        """Every `router.model_reload_s`, swap in models `llmrec build --incremental` wrote
        (loaded in a worker thread; requests go on with the old ones meanwhile)."""
        every = self.config.router.model_reload_s
        if not every or time.monotonic() - self._models_checked < every or self._reloading:
            return
        self._models_checked = time.monotonic()
        if self._model_files() == self._models_seen:
            return
        self._reloading = True
        try:
            # In a worker thread: loading, and building the ALS index, take seconds.
            await asyncio.to_thread(self._use_new_models)
            log.info("collaborative models reloaded from %s", self.config.index_path)
        except (OSError, ValueError) as exc:  # a file mid-replace: try again next time
            log.warning("could not reload the collaborative models: %s", exc)
        finally:
            self._reloading = False

    def _use_new_models(self) -> None:
        self.core.use_models(**self._load_models())
        settle_heap()  # the old models' objects collected, the new ones frozen

    async def _encode(self, text: str) -> np.ndarray:
        return await self.encoder.encode(text)

    @api.post("/v1/recommend")
    async def recommend(self, request: Request) -> Response:
        arrived = time.perf_counter()
        self.keys.check(request.headers, "read")
        req = parse_recommend(await request.body(), self.config.router.max_body_bytes)
        await self._reload_models_if_changed()
        response = await self.core.recommend(req, arrived)
        self.metrics.answered(response)
        answer = recommend_response(response)
        answer.headers["X-Replica"] = self.replica_id
        return answer

    @api.get("/v1/items/{item_id}")
    async def get_item(self, item_id: str, request: Request) -> Response:
        self.keys.check(request.headers, "read")
        hit = await self.items.find(item_id)
        return JSONResponse(
            {
                "item_id": hit.item_id,
                "title": hit.title,
                "text": hit.text,
                "categories": hit.categories,
            }
        )

    @api.post("/v1/items")
    async def upsert_items(self, request: Request) -> Response:
        """Add or replace items: encoded by the encoder pool, written to their owning shards.

        Each shard has the change durable and searchable before it answers. When a
        shard fails the answer is 502 naming it; the others kept their part, and
        sending the same request again is safe (an upsert replaces). `flagged` names the
        items whose text reads as instructions to the LLM (`retrieval.injection`): they
        are stored, but the reranker withholds their text and never moves them up.
        """
        self.keys.check(request.headers, "write")
        rc = self.config.retriever
        req = parse_items(await request.body(), rc.upsert_max_bytes, rc.upsert_max_items)
        upserted = await self.items.upsert(req.items)
        texts = item_texts([i.title for i in req.items], [i.text for i in req.items])
        flagged = flagged_items(zip([i.item_id for i in req.items], texts, strict=True))
        if flagged:
            log.warning(describe_flagged(flagged))
        return JSONResponse({"upserted": upserted, "flagged": flagged})

    @api.delete("/v1/items/{item_id}")
    async def delete_item(self, item_id: str, request: Request) -> Response:
        """Delete one item from its shard; 404 when no shard has it."""
        self.keys.check(request.headers, "write")
        await self.items.delete(item_id)
        return JSONResponse({"deleted": item_id})

    @api.post("/v1/feedback")
    async def feedback_event(self, request: Request) -> Response:
        """Record what a user did with an item; the user's next request counts it.

        404 for an item no shard has. The event is durable before the answer (in
        `feedback.jsonl`, or in Redis with `router.user_store: redis`); a retry
        naming the same `event_id` is answered `duplicate: true` and recorded once.
        """
        self.keys.check(request.headers, "write")
        event = parse_feedback(await request.body(), self.config.router.max_body_bytes)
        await self.items.find(event.item_id)
        recorded = await self.store.record(event)
        log.debug(
            "feedback %s of %s on %s%s",
            event.event,
            self.user_ref(event.user_id),
            event.item_id,
            "" if recorded else " (a retry, already recorded)",
        )
        return JSONResponse({"recorded": event.model_dump(), "duplicate": not recorded})

    @api.delete("/v1/users/{user_id}")
    async def erase_user(self, user_id: str, request: Request) -> Response:
        """Forget a user: their feedback events, their rows of the interaction log and their
        stored history; the files are rewritten before the answer. 404 for a user none of
        them knows. With `user_store: local` other router replicas forget the user when they
        restart; with `redis` at once."""
        self.keys.check(request.headers, "write")
        removed = await self.store.erase(user_id)
        if not any(removed.values()):
            raise NotFound(f"unknown user {user_id!r}", field="user_id")
        log.info("erased %s: %s", self.user_ref(user_id), removed)
        return JSONResponse({"erased": user_id, **removed})

    @api.get("/v1/health")
    async def health(self) -> Response:
        """Ready only when every deployment answers its real probe."""
        # One probe per deployment, keyed by the names it answers for: a retriever
        # replica's state is given to each shard it serves.
        probes = {("encoder",): self.encoder.check_health()}
        probes.update(
            {tuple(self.layout.names_of(g)): s.check_health() for g, s in enumerate(self.shards)}
        )
        if self.reranker is not None:
            probes[("reranker",)] = self.reranker.check_health()
        results = await asyncio.gather(
            *(asyncio.wait_for(p, HEALTH_TIMEOUT_S) for p in probes.values()),
            return_exceptions=True,
        )
        checks = {
            name: "ok" if not isinstance(r, BaseException) else f"failed: {type(r).__name__}"
            for names, r in zip(probes, results, strict=True)
            for name in names
        }
        ready = all(v == "ok" for v in checks.values())
        body: dict = {"status": "ready" if ready else "unavailable", "checks": checks}
        if self.reranker is not None and checks.get("reranker") == "ok":
            # How the LLM runs here: dtype and why, threads, learnt costs, prefix-cache hits.
            body["reranker"] = await self.reranker.describe()
        return JSONResponse(
            body,
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": "5"},
        )

    def check_health(self) -> None:
        """Serve's liveness probe of the router itself (the deep probe is /v1/health)."""
