"""The whole app on real Ray Serve with the real vLLM reranker, over HTTP."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from ray import serve

from deployments.app import build_app
from retrieval.hardware import cpu_flags, select_llm_dtype

pytestmark = pytest.mark.slow

MODELS_DIR = Path("~/.cache/llmrec/models").expanduser()
WITH_LLM = {"rerank": True, "explain": True}


@pytest.fixture(scope="module")
def service(ray_cluster, demo_dir):
    from retrieval.models import prepare_llm

    prepare_llm(MODELS_DIR)
    args = {"data_dir": str(demo_dir), "models_dir": str(MODELS_DIR)}
    serve.run(build_app(args), name="llmrec-full", route_prefix="/")
    with httpx.Client(base_url=ray_cluster, timeout=300) as client:
        yield client
    serve.delete("llmrec-full")


def test_health_includes_the_reranker_and_how_it_runs(service):
    r = service.get("/v1/health")
    assert r.status_code == 200 and r.json()["checks"]["reranker"] == "ok"
    llm = r.json()["reranker"]
    expected = select_llm_dtype("auto", flags=cpu_flags(), cuda=llm["device"] == "cuda")
    assert llm["warmed"] and llm["dtype"] == expected.dtype and llm["dtype_reason"]
    assert llm["cost"]["prefill_ms_per_token"] > 0


def test_the_default_deadline_answers_with_the_llm(service):
    """What a new user sees: no deadline given, both LLM stages inside the default one."""
    r = service.post(
        "/v1/recommend", json={"user_id": "1", "k": 10, "rerank": True, "explain": True}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["reranked"] is True and answer["degraded"] == [], answer["timings_ms"]
    assert all(i["explanation_source"] in ("llm", "template") for i in answer["items"])
    assert answer["timings_ms"]["total"] < 5000


@pytest.mark.parametrize(
    "body",
    [
        {"query": "a slow-burn space drama about astronauts", "k": 10},
        {"user_id": "1", "k": 10},
    ],
)
def test_reranked_answer_explains_every_item(service, body):
    r = service.post(
        "/v1/recommend", json={**body, "rerank": True, "explain": True, "deadline_ms": 120_000}
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["reranked"] is True and answer["degraded"] == []
    ids = [i["item_id"] for i in answer["items"]]
    assert len(ids) == 10 == len(set(ids))
    assert all(i["explanation"] and i["explanation"].strip() for i in answer["items"])
    assert {"rerank", "explain"} <= answer["timings_ms"].keys()


def test_tight_deadline_degrades_instead_of_failing(service):
    r = service.post(
        "/v1/recommend",
        json={
            "query": "cowboys on the frontier",
            "k": 5,
            "rerank": True,
            "explain": True,
            "deadline_ms": 60,
        },
    )
    # Either the stages were skipped (200, degraded) or nothing came back in time (504).
    assert r.status_code in (200, 504), r.text
    if r.status_code == 200:
        assert {"rerank", "explain"} & set(r.json()["degraded"])


def test_requests_whose_deadline_passed_leave_no_work_in_the_engine(service, ray_cluster):
    body = {"query": "a haunted lighthouse", "k": 10, "rerank": True, "explain": True}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=ray_cluster, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/recommend", json={**body, "deadline_ms": 1500})
                    for _ in range(20)
                )
            )

    answers = asyncio.run(burst())
    assert all(r.status_code in (200, 503, 504) for r in answers)
    # Beyond router.max_in_flight (16) a request is refused at once, with Retry-After.
    assert all("retry-after" in r.headers for r in answers if r.status_code == 503)
    assert any(r.status_code == 504 or r.json()["degraded"] for r in answers)
    time.sleep(1.0)
    llm = service.get("/v1/health").json()["reranker"]
    assert llm["pending"] == 0
    after = service.post(
        "/v1/recommend", json={"user_id": "2", "k": 10, "rerank": True, "explain": True}
    )
    assert after.status_code == 200 and after.json()["degraded"] == []
