"""The app on real Ray Serve: real MiniLM encoder pool, real FAISS shard deployments."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from ray import serve

from deployments.app import build_app

READ_KEY, WRITE_KEY = "read-key-of-the-tests", "write-key-of-the-tests"
WRITER = {"authorization": f"Bearer {WRITE_KEY}"}


@pytest.fixture(scope="module")
def service(ray_cluster, demo_dir, tmp_path_factory):
    # Two retriever replicas of two shards each, so killing one (the chaos test) costs
    # half the catalog, not all of it; the demo config's one-replica layout runs in e2e.
    # API keys are on: the client below sends the write key, unless a test says otherwise.
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"read {READ_KEY}\nwrite {WRITE_KEY}\n")
    args = {
        "data_dir": str(demo_dir),
        "reranker": {"enabled": False},
        "retriever": {"shards_per_replica": 2},
        "router": {"api_keys_file": str(keys)},
    }
    serve.run(build_app(args), name="llmrec", route_prefix="/")
    with httpx.Client(base_url=ray_cluster, timeout=60, headers=WRITER) as client:
        yield client
    serve.delete("llmrec")


def test_keys_and_scopes_over_http(service):
    url = str(service.base_url)
    body = {"query": "a western", "k": 3}
    with httpx.Client(base_url=url, timeout=60) as anonymous:
        assert anonymous.get("/v1/health").status_code == 200  # probes need no key
        for r in (
            anonymous.post("/v1/recommend", json=body),
            anonymous.post("/v1/recommend", json=body, headers={"authorization": "Bearer nope"}),
            anonymous.get("/v1/items/1"),
        ):
            assert r.status_code == 401, r.text
            assert r.json()["error"]["type"] == "unauthorized"
        assert anonymous.get("/docs").status_code == 404  # keys set: the docs are off
        assert anonymous.get("/openapi.json").status_code == 404
    reader = {"authorization": f"Bearer {READ_KEY}"}
    with httpx.Client(base_url=url, timeout=60, headers=reader) as client:
        assert client.post("/v1/recommend", json=body).status_code == 200
        assert client.get("/v1/items/1").status_code == 200
        writes = (
            client.post("/v1/feedback", json={"user_id": "read-only", "item_id": "1"}),
            client.post("/v1/items", json={"items": [{"item_id": "ro", "title": "Read only"}]}),
            client.delete("/v1/items/1"),
            client.delete("/v1/users/read-only"),
        )
        for r in writes:
            assert r.status_code == 403, r.text
            assert r.json()["error"]["type"] == "forbidden"
    assert service.get("/v1/items/1").status_code == 200  # nothing was written or deleted
    assert service.get("/v1/items/ro").status_code == 404


@pytest.fixture(scope="module")
def catalog(demo_dir):
    table = pq.read_table(demo_dir / "catalog.parquet")
    return {
        i: c
        for i, c in zip(table["item_id"].to_pylist(), table["categories"].to_pylist(), strict=True)
    }


def recommend(client, **body):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_is_ready_with_every_deployment(service):
    r = service.get("/v1/health")
    assert r.status_code == 200
    checks = r.json()["checks"]
    assert checks == {"encoder": "ok", **{f"shard-{i}": "ok" for i in range(4)}}


@pytest.mark.parametrize(
    "category, words",
    [
        ("Sci-Fi", "spaceship astronaut galaxy alien planet"),
        ("Cooking", "recipes kitchen chef baking flavours"),
        ("Western", "cowboy frontier outlaw sheriff desert ranch"),
    ],
)
def test_query_of_category_words_returns_that_category(service, catalog, category, words):
    answer = recommend(service, query=words, k=10)
    hits = [category in catalog[i["item_id"]] for i in answer["items"]]
    assert sum(hits) >= 7, (category, [i["title"] for i in answer["items"]])


def test_user_gets_k_distinct_unseen_items(service, demo_dir):
    log = pq.read_table(demo_dir / "interactions.parquet")
    seen = {
        i
        for u, i in zip(log["user_id"].to_pylist(), log["item_id"].to_pylist(), strict=True)
        if u == "1"
    }
    answer = recommend(service, user_id="1", k=25)
    ids = [i["item_id"] for i in answer["items"]]
    assert len(ids) == 25 == len(set(ids))
    assert not seen & set(ids)
    assert answer["degraded"] == []


def test_filters_and_timings(service, catalog):
    r = service.post(
        "/v1/recommend",
        json={"query": "a funny story", "k": 10, "filters": {"category": ["Horror"]}},
    )
    assert r.status_code == 200
    answer = r.json()
    assert len(answer["items"]) == 10
    assert all("Horror" in catalog[i["item_id"]] for i in answer["items"])
    assert {"encode", "retrieve", "total"} <= answer["timings_ms"].keys()
    assert "retrieve;dur=" in r.headers["server-timing"]


def test_rerank_without_reranker_is_degraded_not_failed(service):
    answer = recommend(service, query="cowboys", k=3, rerank=True, explain=True)
    assert answer["degraded"] == ["rerank", "explain"] and not answer["reranked"]


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"query": "x", "k": 0}, 422, "k"),
        ({"query": "x", "unknown": 1}, 422, "unknown"),
        ({"k": 3}, 422, "body"),
        ({"history": ["no-such-item"]}, 404, "history"),
    ],
)
def test_bad_requests_get_clear_errors(service, body, status, field):
    r = service.post("/v1/recommend", json=body)
    assert r.status_code == status
    assert r.json()["error"]["field"] == field


def test_item_lookup(service, catalog):
    r = service.get("/v1/items/1")
    assert r.status_code == 200 and r.json()["categories"] == catalog["1"]
    assert service.get("/v1/items/nope").status_code == 404


def test_concurrent_queries_match_sequential(service):
    from concurrent.futures import ThreadPoolExecutor

    queries = [f"story number {n} about travel" for n in range(16)]
    sequential = [
        [i["item_id"] for i in recommend(service, query=q, k=5)["items"]] for q in queries
    ]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(
            pool.map(
                lambda q: [i["item_id"] for i in recommend(service, query=q, k=5)["items"]], queries
            )
        )
    assert concurrent == sequential


def test_feedback_joins_the_users_history(service, catalog, demo_dir):
    user = "feedback-newcomer"
    cold = [i["item_id"] for i in recommend(service, user_id=user, k=10)["items"]]
    liked = [i for i, cats in catalog.items() if "Western" in cats][:3]
    for n, item in enumerate(liked):
        r = service.post(
            "/v1/feedback", json={"user_id": user, "item_id": item, "event": "play", "ts": n}
        )
        assert r.status_code == 200, r.text
    answer = recommend(service, user_id=user, k=10)
    ids = [i["item_id"] for i in answer["items"]]
    assert ids != cold
    assert not set(liked) & set(ids)  # seen now, so excluded
    assert sum("Western" in catalog[i] for i in ids) >= 5, [catalog[i] for i in ids]
    lines = (demo_dir / "feedback.jsonl").read_text().splitlines()
    assert [json.loads(line)["item_id"] for line in lines if user in line] == liked

    # Forget the user: their events leave the file, their history this replica's memory.
    r = service.delete(f"/v1/users/{user}")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "erased": user,
        "feedback_events": 3,
        "interactions": 0,
        "history_items": 3,
    }
    lines = (demo_dir / "feedback.jsonl").read_text().splitlines()
    assert not [line for line in lines if user in line]
    again = recommend(service, user_id=user, k=10)
    assert all(i["sources"] == ["popular"] for i in again["items"])  # cold again
    r = service.delete(f"/v1/users/{user}")
    assert r.status_code == 404 and r.json()["error"]["field"] == "user_id"

    # The router's log says who was erased by a keyed hash, never by the id.
    import ray

    from retrieval.privacy import UserRefs

    ref = UserRefs.for_data_dir(demo_dir)(user)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    text = "".join(p.read_text(errors="replace") for p in logs.glob("replica_llmrec_Router_*"))
    assert f"erased {ref}" in text
    assert user not in text


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"user_id": "u", "item_id": "no-such-item"}, 404, "item_id"),
        ({"user_id": "u", "item_id": "1", "event": "Bad Event"}, 422, "event"),
        ({"item_id": "1"}, 422, "user_id"),
        ({"user_id": "u", "item_id": "1", "ts": -1}, 422, "ts"),
    ],
)
def test_bad_feedback_gets_clear_errors(service, body, status, field):
    r = service.post("/v1/feedback", json=body)
    assert r.status_code == status
    assert r.json()["error"]["field"] == field


def test_a_shard_replica_killed_under_load_costs_no_request_and_no_write(
    service, catalog, demo_dir
):
    """`run_chaos` with the real killer: SIGKILL one shard replica of this cluster mid-load."""
    import asyncio
    import os
    import random

    from cluster.faults import ReplicaKiller
    from deployments.router.feedback import FeedbackLog
    from loadtest.chaos import ChaosPlan, chaos_report, run_chaos
    from loadtest.scenario import Scenario, TaskSpec
    from loadtest.traffic import TrafficData

    rng = random.Random(3)
    items = sorted(catalog)
    users = [f"chaos-{n}" for n in range(20)]  # their own users: other tests' histories stay
    traffic = TrafficData(
        users=users,
        histories={u: rng.sample(items, 8) for u in users},
        items=items,
        categories=["Western", "Drama"],
        queries=["a slow-burn space drama about astronauts far from home"],
    )
    scenario = Scenario(
        users=[2],
        think_time_s=(0.05, 0.1),
        request_timeout_s=20,
        tasks=[
            TaskSpec(kind="user", weight=3),
            TaskSpec(kind="history", weight=2),
            TaskSpec(kind="query", weight=2),
            TaskSpec(kind="feedback", weight=1),
            TaskSpec(kind="upsert", weight=1),
        ],
    )
    plan = ChaosPlan(duration_s=16, steady_s=5, kill_every_s=60, targets=("ShardRetriever",))
    feedback = FeedbackLog(demo_dir / "feedback.jsonl")
    run = asyncio.run(
        run_chaos(
            str(service.base_url),
            scenario,
            traffic,
            plan,
            ReplicaKiller(ancestor=os.getpid()),
            feedback_recorded=feedback.recorded,
            headers=WRITER,
        )
    )
    report = chaos_report(run)
    for record in run.result.records:  # the shards' change logs are shared with later tests
        if record.write and record.write[0] == "item":
            assert service.delete(f"/v1/items/{record.write[1]}").status_code == 200

    assert len(run.kills) == 1 and "ShardRetriever" in run.kills[0].killed, run.kills
    assert run.kills[0].recovered_s is not None
    assert report["success_one_retry"] == 1.0, report["errors"]
    assert report["writes_acknowledged"] > 0 and report["writes_lost"] == 0
    assert any(d.startswith("shard-") for d in report["degraded_stages"])
