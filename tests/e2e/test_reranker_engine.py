"""RerankerCore on the real vLLM engine with the prepared SmolLM2 (CPU or GPU).

One engine serves the whole module; its tests share one event loop because
vLLM's output handler is bound to the loop of the first request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments.config import RerankerConfig
from deployments.reranker.core import RerankerCore, VllmEngine
from deployments.reranker.prompts import LETTERS, Candidate, build_rerank_prompt

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


@pytest.fixture(scope="session")
def reranker():
    from retrieval.models import prepare_llm

    prepare_llm(MODELS_DIR, progress=False)
    core = RerankerCore(RerankerConfig(), MODELS_DIR)
    yield core
    core.shutdown()


async def test_engine_scores_every_candidate_letter(reranker):
    assert isinstance(reranker.engine, VllmEngine)
    await reranker.check_health()
    prompt = build_rerank_prompt(HISTORY, None, make_candidates(20), item_text_chars=160)
    logprobs = await reranker.engine.next_token_logprobs(prompt)
    seen = {token.strip().upper() for token in logprobs}
    assert set(LETTERS) <= seen
    assert all(value <= 0.0 for value in logprobs.values())


async def test_rerank_is_a_deterministic_permutation_of_all_candidates(reranker):
    candidates = make_candidates(25)  # 20 lettered, 5 follow in retrieval order
    scores = [1.0 - i / 50 for i in range(25)]
    first = await reranker.rerank(HISTORY, "space horror", candidates, scores)
    second = await reranker.rerank(HISTORY, "space horror", candidates, scores)
    assert sorted(i for i, _ in first) == list(range(25))
    assert [i for i, _ in first][20:] == [20, 21, 22, 23, 24]
    assert [i for i, _ in first] == [i for i, _ in second]
    assert [s for _, s in first] == pytest.approx([s for _, s in second], abs=1e-6)


async def test_explain_answers_every_item(reranker):
    items = make_candidates(6)
    out = await reranker.explain(HISTORY, HISTORY_CATS, "space horror", items)
    assert len(out) == len(items)
    for text, grounded in out:
        assert isinstance(text, str) and text.strip() and len(text) <= 200
        assert isinstance(grounded, bool)
