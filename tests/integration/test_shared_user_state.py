"""Two router replicas on one Redis user store (real Serve, real Redis): feedback taken by
either replica is in the next request of both."""

from __future__ import annotations

import time

import httpx
import pytest
from ray import serve

from deployments.app import build_app
from tests.conftest import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def two_routers(ray_cluster, demo_dir, redis_url):
    args = {
        "data_dir": str(demo_dir),
        "reranker": {"enabled": False},
        "router": {"num_replicas": 2, "user_store": "redis", "redis_url": redis_url},
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
