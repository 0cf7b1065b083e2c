"""Two router replicas on one Redis user store (real Serve, real Redis): feedback taken by
either replica is in the next request of both."""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from ray import serve

from cluster.redis_server import RedisServer
from deployments.app import build_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def data_dir(demo_dir, tmp_path_factory):
    """A copy of the demo dataset: the fold below rewrites its log and models."""
    out = tmp_path_factory.mktemp("shared-state") / "data"
    shutil.copytree(demo_dir, out)
    return out


def router_settings(redis_url):
    # The fold refits every model: a short sequential training keeps it quick.
    return {
        "user_store": "redis",
        "redis_url": redis_url,
        "model_reload_s": 1,
        "sequential_budget_s": 2,
    }


@pytest.fixture(scope="module")
def two_routers(ray_cluster, data_dir, redis_url):
    args = {
        "data_dir": str(data_dir),
        "reranker": {"enabled": False},
        "router": {"num_replicas": 2, **router_settings(redis_url)},
    }
    serve.run(build_app(args), name="llmrec-redis", route_prefix="/")
    with httpx.Client(base_url=ray_cluster, timeout=60) as client:
        yield client
    serve.delete("llmrec-redis")


def ask(client, user):
    r = client.post("/v1/recommend", json={"user_id": user, "k": 10, "explain": False})
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]], r.headers["x-replica"]


def test_feedback_reaches_every_replica_within_a_second(two_routers):
    replicas = set()
    for user in ("1", "7", "42"):
        before, replica = ask(two_routers, user)
        replicas.add(replica)
        clicked = before[0]  # the item both replicas would show first
        r = two_routers.post(
            "/v1/feedback", json={"user_id": user, "item_id": clicked, "event_id": f"c-{user}"}
        )
        acked = time.perf_counter()
        assert r.status_code == 200 and r.json()["duplicate"] is False
        # The 20 requests right after the acknowledgement, the first well inside a second.
        answers = [(time.perf_counter(), *ask(two_routers, user)) for _ in range(20)]
        for _, items, replica in answers:
            replicas.add(replica)
            assert clicked not in items  # seen now, on whichever replica answered
        assert answers[0][0] - acked < 1.0
    assert len(replicas) == 2  # both replicas answered, and both knew of every click


def test_a_retried_event_is_recorded_once(two_routers):
    body = {"user_id": "retry-user", "item_id": "5", "event_id": "once"}
    first = two_routers.post("/v1/feedback", json=body)
    second = two_routers.post("/v1/feedback", json=body)
    assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
    items, _ = ask(two_routers, "retry-user")
    assert "5" not in items


def test_folded_feedback_reaches_the_models_without_a_restart(two_routers, data_dir, redis_url):
    from deployments.router.fold import fold_feedback
    from retrieval.build import load_cf
    from retrieval.config import AppConfig

    # Two rarely taken items no user took together: item-kNN cannot propose one for the other.
    cf = load_cf(data_dir / "index")
    taken = sorted((n, i) for i, n in zip(cf.item_ids, cf.popularity, strict=True) if n >= 2)
    rare = [i for _, i in taken[:100]]
    a = rare[0]
    b = next(i for i in rare[1:] if cf.scores([a])[cf.index[i]] == 0)

    def proposed_by_knn() -> tuple[bool, str]:
        r = two_routers.post("/v1/recommend", json={"history": [a], "k": 100, "explain": False})
        assert r.status_code == 200, r.text  # no request dropped while models swap
        by_id = {i["item_id"]: i["sources"] for i in r.json()["items"]}
        return "cf" in by_id.get(b, []), r.headers["x-replica"]

    assert not proposed_by_knn()[0]
    for n in range(30):
        for step, item in enumerate((a, b)):
            body = {"user_id": f"fold-{n}", "item_id": item, "ts": 2_000_000_000 + step}
            assert two_routers.post("/v1/feedback", json=body).status_code == 200
    cfg = AppConfig(data_dir=str(data_dir), router=router_settings(redis_url))
    folded = fold_feedback(cfg)
    assert folded.events == folded.added >= 60  # with the earlier tests' events
    knew = set()
    deadline = time.monotonic() + 15
    while len(knew) < 2 and time.monotonic() < deadline:
        proposed, replica = proposed_by_knn()
        if proposed:
            knew.add(replica)
    assert len(knew) == 2  # both replicas swapped in the refit model, neither restarted
