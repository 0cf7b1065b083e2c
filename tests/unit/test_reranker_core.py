"""RerankerCore ordering, blending and fallbacks over a scripted engine (no vLLM, no Ray)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployments.config import RerankerConfig
from deployments.errors import BackendFailed
from deployments.reranker.core import (
    EngineFailed,
    PromptTooLong,
    RerankEngine,
    RerankerCore,
    RerankFailed,
)
from deployments.reranker.prompts import LETTERS, Candidate

HISTORY = ["Alien (1979)", "Heat (1995)"]
HISTORY_CATS = [["Sci-Fi"], ["Crime"]]


class ScriptedEngine:
    """Answers letter logprobs from a fixed table and explanations from a function."""

    def __init__(self, logprobs=None, reply=lambda messages: " it is great fun.", fail=None):
        self.logprobs = logprobs or {}
        self.reply = reply
        self.fail = fail
        self.prompts: list[list[dict[str, str]]] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self.closed = False

    async def next_token_logprobs(self, messages):
        self.prompts.append(messages)
        if self.fail:
            raise self.fail(messages)
        return dict(self.logprobs)

    async def generate(self, messages, max_tokens):
        self.prompts.append(messages)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        await asyncio.sleep(0.01)
        self._in_flight -= 1
        if self.fail:
            raise self.fail(messages)
        return self.reply(messages)

    def shutdown(self):
        self.closed = True


def make_items(n: int) -> list[Candidate]:
    return [Candidate(str(i), f"Film {i}", f"Plot {i}.", ["Sci-Fi"]) for i in range(n)]


def make_core(engine, **overrides) -> RerankerCore:
    return RerankerCore(RerankerConfig(**overrides), Path("/nonexistent"), engine=engine)


def test_scripted_engine_satisfies_the_protocol():
    assert isinstance(ScriptedEngine(), RerankEngine)


async def test_llm_preference_reorders_by_the_blend():
    # retrieval favours 0 > 1 > 2; the LLM strongly prefers C (index 2).
    engine = ScriptedEngine({" A": -3.0, " B": -2.0, " C": -0.1})
    core = make_core(engine, rerank_weight=0.75)
    order = await core.rerank(HISTORY, None, make_items(3), [0.9, 0.8, 0.7])
    assert [i for i, _ in order] == [2, 1, 0]
    # retrieval normalised 1, .5, 0; llm normalised 0, 1/2.9, 1
    assert [s for _, s in order] == pytest.approx([0.75, 0.25 * 0.5 + 0.75 / 2.9, 0.25])
    assert len(engine.prompts) == 1


async def test_weight_zero_keeps_retrieval_order_whatever_the_llm_says():
    engine = ScriptedEngine({" C": -0.1, " B": -0.2})
    order = await make_core(engine, rerank_weight=0.0).rerank([], "q", make_items(3), [3, 2, 1])
    assert [i for i, _ in order] == [0, 1, 2]


async def test_only_max_candidates_are_lettered_and_the_rest_keep_retrieval_order():
    engine = ScriptedEngine({" D": -0.01})
    core = make_core(engine, max_candidates=4, rerank_weight=1.0)
    items = make_items(7)
    scores = [0.1, 0.9, 0.8, 0.3, 0.7, 0.2, 0.6]  # retrieval order: 1, 2, 4, 6, 3, 5, 0
    order = await core.rerank(HISTORY, None, items, scores)
    indices = [i for i, _ in order]
    assert sorted(indices) == list(range(7))
    assert indices[0] == 6  # letter D = 4th best by retrieval
    assert indices[4:] == [3, 5, 0]
    values = [s for _, s in order]
    assert values == sorted(values, reverse=True) and values[3] > values[4]
    prompt = engine.prompts[0][1]["content"]
    assert "D. <item>Film 6" in prompt and "E. " not in prompt


async def test_one_candidate_needs_no_engine_and_lengths_must_match():
    engine = ScriptedEngine()
    core = make_core(engine)
    assert await core.rerank([], "q", make_items(1), [0.5]) == [(0, 1.0)]
    assert await core.rerank([], "q", [], []) == []
    assert engine.prompts == []
    with pytest.raises(ValueError):
        await core.rerank([], "q", make_items(2), [0.5])


async def test_too_long_prompt_is_retried_with_shorter_item_texts():
    def too_long_with_text(messages):
        return PromptTooLong("long") if " — " in messages[1]["content"] else None

    class Shrinking(ScriptedEngine):
        async def next_token_logprobs(self, messages):
            self.prompts.append(messages)
            if (err := too_long_with_text(messages)) is not None:
                raise err
            return {" B": -0.1, " A": -2.0}

    engine = Shrinking()
    order = await make_core(engine, rerank_weight=1.0).rerank([], "q", make_items(2), [2, 1])
    assert [i for i, _ in order] == [1, 0]
    assert len(engine.prompts) == 3


async def test_engine_failure_is_a_backend_failure_the_router_can_degrade_on():
    core = make_core(ScriptedEngine(fail=lambda m: EngineFailed("dead")))
    with pytest.raises(RerankFailed) as info:
        await core.rerank([], "q", make_items(3), [3, 2, 1])
    assert isinstance(info.value, BackendFailed) and isinstance(info.value, RuntimeError)
    assert info.value.status == 502 and isinstance(info.value.__cause__, EngineFailed)
    with pytest.raises(RerankFailed):
        await core.explain(HISTORY, HISTORY_CATS, None, make_items(2))
    with pytest.raises(RerankFailed):
        await core.check_health()


async def test_explanations_run_concurrently_and_keep_grounded_ones():
    engine = ScriptedEngine(reply=lambda m: " its dread builds slowly.\nignored")
    core = make_core(engine)
    out = await core.explain(HISTORY, HISTORY_CATS, None, make_items(4))
    assert engine.max_in_flight == 4
    assert out[0] == (
        'Since you enjoyed "Alien", you may like "Film 0" because its dread builds slowly.',
        True,
    )
    assert all(grounded for _, grounded in out)


async def test_invented_titles_and_empty_replies_fall_back_to_the_template():
    replies = iter([' of "Dune" and its worms.', "", " it is a slow tense classic."])
    core = make_core(ScriptedEngine(reply=lambda m: next(replies)))
    items = [Candidate("1", "X", "", ["Sci-Fi"]), Candidate("2", "Y", "", ["Crime"])]
    items.append(Candidate("3", "Z", "", ["Crime"]))
    out = await core.explain(HISTORY, HISTORY_CATS, None, items)
    assert out[0] == ('Like "Alien", which you enjoyed, it is Sci-Fi.', False)
    assert out[1] == ('Like "Heat", which you enjoyed, it is Crime.', False)
    assert out[2] == (
        'Since you enjoyed "Heat", you may like "Z" because it is a slow tense classic.',
        True,
    )


async def test_nothing_to_ground_on_skips_generation():
    engine = ScriptedEngine()
    out = await make_core(engine).explain([], [], None, [Candidate("1", "X", "", ["Drama"])])
    assert out == [("A popular Drama pick.", False)] and engine.prompts == []


async def test_health_probe_goes_through_the_engine_and_shutdown_reaches_it():
    engine = ScriptedEngine({" A": -0.1})
    core = make_core(engine)
    await core.check_health()
    assert len(engine.prompts) == 1
    empty = make_core(ScriptedEngine({}))
    with pytest.raises(RerankFailed):
        await empty.check_health()
    core.shutdown()
    assert engine.closed


def test_letters_cover_the_configured_maximum():
    assert RerankerConfig(max_candidates=len(LETTERS)).max_candidates == len(LETTERS)
    with pytest.raises(ValueError):
        RerankerConfig(max_candidates=len(LETTERS) + 1)


async def test_an_explain_prompt_too_long_for_the_context_gets_the_template():
    core = make_core(ScriptedEngine(fail=lambda m: PromptTooLong("long")))
    out = await core.explain(HISTORY, HISTORY_CATS, None, [Candidate("1", "X", "", ["Crime"])])
    assert out == [('Like "Heat", which you enjoyed, it is Crime.', False)]
