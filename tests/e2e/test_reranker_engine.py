"""RerankerCore on the real vLLM engine with the prepared SmolLM2 (CPU or GPU).

One engine serves the whole module; its tests share one event loop because
vLLM's output handler is bound to the loop of the first request.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import pytest_asyncio

from deployments.errors import DeadlineExceeded
from deployments.reranker.core import RerankerCore
from deployments.reranker.engine import VllmEngine
from deployments.reranker.prompts import (
    LETTERS,
    Candidate,
    PromptContext,
    Steer,
    build_rerank_prompt,
)
from retrieval.config import RerankerConfig
from retrieval.hardware import cpu_flags, select_llm_dtype

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

MODELS_DIR = Path("~/.cache/llmrec/models").expanduser()

HISTORY = ["Alien (1979)", "Blade Runner (1982)", "Terminator, The (1984)"]
HISTORY_CATS = [["Sci-Fi", "Horror"], ["Sci-Fi", "Thriller"], ["Sci-Fi", "Action"]]
GENRES = ["Sci-Fi", "Romance", "Comedy", "Action", "Drama"]


def make_candidates(n: int) -> list[Candidate]:
    return [
        Candidate(
            item_id=str(i),
            title=f"Picture {i} ({1970 + i})",
            text=f"A {GENRES[i % len(GENRES)].lower()} story about crew number {i} and a ship.",
            categories=[GENRES[i % len(GENRES)]],
        )
        for i in range(n)
    ]


def context(n: int, query: str | None = "space horror") -> PromptContext:
    return PromptContext(HISTORY, HISTORY_CATS, query, make_candidates(n))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reranker():
    from retrieval.models import prepare_llm

    prepare_llm(MODELS_DIR, progress=False)
    core = RerankerCore(RerankerConfig(), MODELS_DIR)
    await core.warm_up()
    yield core
    core.shutdown()


async def test_engine_runs_in_the_dtype_this_cpu_is_fast_in_and_scores_every_letter(reranker):
    assert isinstance(reranker.engine, VllmEngine)
    described = reranker.describe()
    expected = select_llm_dtype("auto", flags=cpu_flags(), cuda=described["device"] == "cuda")
    assert described["dtype"] == expected.dtype and described["warmed"]
    await reranker.check_health()
    prompt = build_rerank_prompt(context(20, None), item_text_chars=160)
    out = await reranker.engine.score(prompt)
    seen = {token.strip().upper() for token in out.logprobs}
    assert set(LETTERS) <= seen
    assert all(value <= 0.0 for value in out.logprobs.values())
    assert out.prompt_tokens == reranker.engine.count_tokens(prompt)


async def test_rerank_is_a_deterministic_permutation_of_all_candidates(reranker):
    scores = [1.0 - i / 50 for i in range(25)]  # 20 lettered, 5 follow in retrieval order
    first = await reranker.rerank(context(25), scores)
    second = await reranker.rerank(context(25), scores)  # served from the prefix cache
    third = await reranker.rerank(context(25), scores)
    assert second.cached_tokens > first.cached_tokens
    order = [i for i, _ in first.order]
    assert sorted(order) == list(range(25)) and order[20:] == [20, 21, 22, 23, 24]
    # From the prefix cache the same prompt gets the same answer, every time.
    assert second.order == third.order
    # The first run computes the whole prompt, the cached ones only its tail: the kernels
    # differ (bf16 on CPU) and the blended scores move by a few thousandths, so only
    # near-ties may swap places.
    cold, cached = dict(first.order), dict(second.order)
    assert all(cold[i] == pytest.approx(cached[i], abs=0.01) for i in range(25))


async def test_explanations_reuse_the_rerank_prompt_from_the_prefix_cache(reranker):
    ctx = context(8)
    outcome = await reranker.rerank(ctx, [1.0 - i / 10 for i in range(8)])
    before = reranker.stats.explain.as_json()
    out = await reranker.explain(ctx, [0, 1, 2, 3], outcome.item_text_chars)
    after = reranker.stats.explain.as_json()
    prompt, cached = (
        after["prompt_tokens"] - before["prompt_tokens"],
        after["cached_tokens"] - before["cached_tokens"],
    )
    assert cached / prompt > 0.6, (cached, prompt)
    assert len(out) == 4
    for e in out:
        assert e.text.strip() and len(e.text) <= 200 and e.source in ("llm", "template")


async def test_steered_generation_never_uses_an_avoided_word_or_its_stem(reranker):
    prompt = [
        {"role": "user", "content": "Describe the film Alien (1979) in one sentence."},
        {"role": "assistant", "content": "Alien is a"},
    ]
    stems = ("sci", "horro", "thril")  # what `stem` keeps of the avoided words

    def stemmed(text: str) -> list[str]:
        return [w for w in text.lower().replace("-", " ").split() if w.startswith(stems)]

    (free,) = await reranker.engine.generate([prompt], max_tokens=24)
    assert stemmed(free.text), free.text  # left alone, the model says "science fiction"
    steer = Steer(avoid=("sci", "horror", "thriller"))
    (steered,) = await reranker.engine.generate([prompt], max_tokens=24, steer=[steer])
    assert steered.text.strip() and not stemmed(steered.text), steered.text


async def test_a_cancelled_request_is_aborted_in_the_engine(reranker):
    engine = reranker.engine
    batch = [
        [{"role": "user", "content": f"Count slowly from one to five hundred, in words. {i}"}]
        for i in range(3)
    ]
    task = asyncio.ensure_future(engine.generate(batch, max_tokens=200))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if engine.running() == 3:
            break
    assert engine.running() == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert engine.running() == 0


async def test_a_generation_stopped_at_its_time_answers_what_it_wrote(reranker):
    engine = reranker.engine
    prompt = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
    started = time.time()
    (out,) = await engine.generate([prompt], max_tokens=400, stop_at=started + 1.0)
    assert time.time() - started < 1.5 and engine.running() == 0
    assert not out.finished and 0 < out.output_tokens < 400 and out.text.strip()
    (done,) = await engine.generate([prompt], max_tokens=4, stop_at=time.time() + 30)
    assert done.finished and done.output_tokens <= 4


async def test_work_past_its_deadline_is_refused_or_aborted(reranker):
    started = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        await reranker.explain(context(6), [0, 1, 2], deadline=time.time() + 0.05)
    assert time.perf_counter() - started < 1.0 and reranker.engine.running() == 0
