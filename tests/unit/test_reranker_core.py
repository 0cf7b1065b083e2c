"""RerankerCore ordering, budgeting and fallbacks over a scripted engine (no vLLM, no Ray)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from deployments.errors import BackendFailed, DeadlineExceeded, QueueFull
from deployments.reranker.budget import Admission, EngineCost, Work
from deployments.reranker.core import RerankerCore, RerankFailed
from deployments.reranker.engine import EngineFailed, PromptTooLong, RerankEngine
from deployments.reranker.prompts import LETTERS, Candidate, PromptContext, Steer
from retrieval.config import RerankerConfig
from tests.factories import ScriptedEngine

HISTORY = ["Alien (1979)", "Heat (1995)"]
HISTORY_CATS = [["Sci-Fi"], ["Crime"]]


def make_items(n: int, categories=("Sci-Fi",)) -> list[Candidate]:
    return [Candidate(str(i), f"Film {i}", f"Plot {i}.", list(categories)) for i in range(n)]


def ctx(candidates, history=HISTORY, cats=HISTORY_CATS, query=None) -> PromptContext:
    return PromptContext(list(history), list(cats), query, list(candidates))


def make_core(engine, **overrides) -> RerankerCore:
    return RerankerCore(RerankerConfig(**overrides), Path("/nonexistent"), engine=engine)


def order_of(outcome) -> list[int]:
    return [i for i, _ in outcome.order]


def test_scripted_engine_satisfies_the_protocol():
    assert isinstance(ScriptedEngine(), RerankEngine)


async def test_llm_preference_reorders_by_the_blend():
    # retrieval favours 0 > 1 > 2; the LLM strongly prefers C (index 2).
    engine = ScriptedEngine({" A": -3.0, " B": -2.0, " C": -0.1})
    core = make_core(engine, rerank_weight=0.75)
    outcome = await core.rerank(ctx(make_items(3)), [0.9, 0.8, 0.7])
    assert order_of(outcome) == [2, 1, 0] and outcome.lettered == 3
    # retrieval normalised 1, .5, 0; llm normalised 0, 1/2.9, 1
    assert [s for _, s in outcome.order] == pytest.approx([0.75, 0.25 * 0.5 + 0.75 / 2.9, 0.25])
    assert len(engine.prompts) == 1


async def test_near_tied_letters_keep_the_retrieval_order():
    # A cold and a prefix-cached prompt differ in the last digits of the logprobs.
    first = ScriptedEngine({" A": -1.2001, " B": -1.1999, " C": -3.0})
    second = ScriptedEngine({" A": -1.1999, " B": -1.2001, " C": -3.0})
    items, scores = make_items(3), [0.9, 0.8, 0.7]
    a = await make_core(first, rerank_weight=1.0).rerank(ctx(items), scores)
    b = await make_core(second, rerank_weight=1.0).rerank(ctx(items), scores)
    assert order_of(a) == order_of(b) == [0, 1, 2]


async def test_weight_zero_keeps_retrieval_order_whatever_the_llm_says():
    engine = ScriptedEngine({" C": -0.1, " B": -0.2})
    outcome = await make_core(engine, rerank_weight=0.0).rerank(ctx(make_items(3)), [3, 2, 1])
    assert order_of(outcome) == [0, 1, 2]


async def test_only_max_candidates_are_lettered_and_the_rest_keep_retrieval_order():
    engine = ScriptedEngine({" D": -0.01})
    core = make_core(engine, max_candidates=4, rerank_weight=1.0)
    scores = [0.1, 0.9, 0.8, 0.3, 0.7, 0.2, 0.6]  # retrieval order: 1, 2, 4, 6, 3, 5, 0
    outcome = await core.rerank(ctx(make_items(7)), scores)
    indices = order_of(outcome)
    assert sorted(indices) == list(range(7))
    assert indices[0] == 6  # letter D = 4th best by retrieval
    assert indices[4:] == [3, 5, 0]
    values = [s for _, s in outcome.order]
    assert values == sorted(values, reverse=True) and values[3] > values[4]
    prompt = engine.prompts[0][1]["content"]
    assert "D. <item>Film 6" in prompt and "E. " not in prompt


async def test_one_candidate_needs_no_engine_and_lengths_must_match():
    engine = ScriptedEngine()
    core = make_core(engine)
    assert (await core.rerank(ctx(make_items(1)), [0.5])).order == [(0, 1.0)]
    assert (await core.rerank(ctx([]), [])).order == []
    assert engine.prompts == []
    with pytest.raises(ValueError):
        await core.rerank(ctx(make_items(2)), [0.5])


async def test_a_prompt_over_its_token_budget_gets_shorter_item_texts():
    long_text = [Candidate(str(i), f"Film {i}", "word " * 60, ["Drama"]) for i in range(4)]
    engine = ScriptedEngine()
    outcome = await make_core(engine, prompt_tokens=200).rerank(ctx(long_text), [4, 3, 2, 1])
    assert outcome.item_text_chars == 40  # a quarter of 160
    assert engine.count_tokens(engine.prompts[0]) <= 200
    roomy = await make_core(ScriptedEngine()).rerank(ctx(long_text), [4, 3, 2, 1])
    assert roomy.item_text_chars == 160


async def test_engine_failure_is_a_backend_failure_the_router_can_degrade_on():
    core = make_core(ScriptedEngine(fail=lambda m: EngineFailed("dead")))
    with pytest.raises(RerankFailed) as info:
        await core.rerank(ctx(make_items(3)), [3, 2, 1])
    assert isinstance(info.value, BackendFailed) and not isinstance(info.value, RuntimeError)
    assert info.value.status == 502 and isinstance(info.value.__cause__, EngineFailed)
    with pytest.raises(RerankFailed):
        await core.explain(ctx(make_items(2)), [0, 1])


async def test_explanations_go_to_the_engine_as_one_batch_and_keep_checked_ones():
    engine = ScriptedEngine(reply=lambda m: " its sci-fi dread builds slowly.\nignored")
    core = make_core(engine)
    out = await core.explain(ctx(make_items(4)), [0, 1, 2, 3])
    assert engine.batches == [4]
    assert out[0].text == (
        'Since you enjoyed "Alien", you may like "Film 0" because its sci-fi dread builds slowly.'
    )
    assert all(e.source == "llm" and e.check == "ok" for e in out)


async def test_each_explanation_is_steered_from_the_categories_its_item_lacks():
    engine = ScriptedEngine()
    items = [make_items(1, ("Sci-Fi",))[0], Candidate("9", "Heat II", "A heist.", ["Crime"])]
    await make_core(engine).explain(ctx(items), [0, 1])
    # The prompt shows Sci-Fi and Crime: each item is kept off the other's category.
    assert engine.steered[0] == [Steer(("crime",), ("sci",)), Steer(("sci",), ("crime",))]


async def test_failed_reasons_are_asked_again_then_fall_back_to_the_template():
    replies = {"1": iter([" it is a crime saga.", " it is a sci-fi heist."])}

    def reply(messages):
        task = messages[1]["content"].splitlines()[-1]
        if "Film 1" in task:
            return next(replies["1"])
        if "Film 2" in task:
            return ' of "Dune" and its sci-fi worms.'
        return " it is a slow sci-fi classic."

    engine = ScriptedEngine(reply=reply)
    out = await make_core(engine, explain_attempts=3).explain(ctx(make_items(3)), [0, 1, 2])
    assert engine.batches == [3, 2, 1]  # only what failed goes round again
    assert [e.source for e in out] == ["llm", "llm", "template"]
    assert out[1].text.endswith("because it is a sci-fi heist.")
    assert out[2] == type(out[2])(
        'Like "Alien", which you enjoyed, it is Sci-Fi.', "template", "invented_title"
    )


async def test_nothing_to_name_skips_generation():
    engine = ScriptedEngine()
    out = await make_core(engine).explain(ctx(make_items(1, ("Drama",)), [], []), [0])
    assert [(e.text, e.source, e.check) for e in out] == [
        ("A popular Drama pick.", "template", "nothing_to_name")
    ]
    assert engine.prompts == []


async def test_an_explain_prompt_too_long_for_the_context_gets_the_template():
    core = make_core(ScriptedEngine(fail=lambda m: PromptTooLong("long")))
    out = await core.explain(ctx([Candidate("1", "X", "", ["Crime"])]), [0])
    assert [(e.text, e.check) for e in out] == [
        ('Like "Heat", which you enjoyed, it is Crime.', "prompt_too_long")
    ]


# --- deadline, queue, warm-up -------------------------------------------------


async def test_work_that_cannot_finish_in_time_is_refused_before_it_starts():
    engine = ScriptedEngine(seconds_per_token=0.01)
    core = make_core(engine)
    core.cost.prefill_s = 0.01  # as a warm-up would have measured
    with pytest.raises(DeadlineExceeded):
        await core.rerank(
            ctx(make_items(20)), [1.0 - i / 20 for i in range(20)], deadline=time.time() + 0.05
        )
    assert engine.prompts == []


async def test_a_near_deadline_letters_fewer_candidates():
    engine = ScriptedEngine()
    core = make_core(engine)
    core.cost.prefill_s, core.cost.call_s = 0.002, 0.0
    items = make_items(20)
    full = engine.count_tokens(
        __import__("deployments.reranker.prompts", fromlist=["x"]).build_rerank_prompt(
            ctx(items), item_text_chars=160
        )
    )
    budget = full * 0.002 * 0.7  # room for well under all twenty
    outcome = await core.rerank(
        ctx(items), [1.0 - i / 20 for i in range(20)], deadline=time.time() + budget
    )
    assert 2 <= outcome.lettered < 20
    assert sorted(order_of(outcome)) == list(range(20))


async def test_the_rerank_leaves_time_to_explain_every_item_asked_for():
    engine = ScriptedEngine()
    core = make_core(engine, explain_text_chars=160)

    def costs() -> None:  # only prompt tokens cost, 1 ms a word (each call re-learns them)
        core.cost.prefill_s, core.cost.call_s = 0.001, 0.0
        core.cost.step_s = core.cost.seq_step_s = 0.0

    text = " ".join(["a long and winding plot about a crew"] * 4)
    items = [Candidate(str(i), f"Film {i}", text, ["Sci-Fi"]) for i in range(20)]
    scores = [1.0 - i / 20 for i in range(20)]
    # A rerank prompt holds ~37 words per candidate of this text, an explain prompt
    # computes ~110 (task line and a block): ~0.8 s to rerank twenty, ~1.1 s to explain
    # ten afterwards, not both in 1.75 s; ten lettered (~0.43 s) leave the time.
    deadline = time.time() + 1.75
    costs()
    alone = await core.rerank(ctx(items), scores, deadline=deadline)
    assert alone.lettered == 20  # with nothing to explain, all twenty fit
    costs()
    other = ctx(items, history=["Heat (1995)"], cats=[["Crime"]])  # nothing of it cached
    then = await core.rerank(other, scores, deadline=deadline, explain_after=10)
    assert 2 <= then.lettered < 20
    costs()
    lettered = ctx(items[: then.lettered], history=["Heat (1995)"], cats=[["Crime"]])
    out = await core.explain(
        lettered, list(range(then.lettered))[:10], then.item_text_chars, deadline
    )
    assert all(e.source == "llm" for e in out)
    # The first user's prompt was just scored: cached, it letters all twenty again.
    costs()
    again = await core.rerank(ctx(items), scores, deadline=time.time() + 1.75, explain_after=10)
    assert again.lettered == 20


async def test_explanation_tokens_follow_the_time_left():
    engine = ScriptedEngine()
    core = make_core(engine, explain_max_tokens=32, explain_min_tokens=8)
    core.cost.prefill_s, core.cost.call_s, core.cost.step_s = 0.0, 0.0, 0.01
    core.cost.seq_step_s = 0.0
    await core.explain(ctx(make_items(2)), [0, 1], deadline=time.time() + 0.2)
    assert 8 <= engine.max_tokens[0] <= 21
    await core.explain(ctx(make_items(2)), [0, 1])
    assert engine.max_tokens[-1] == 32
    core.cost.step_s, core.cost.seq_step_s = 0.01, 0.0  # the scripted engine is instant
    with pytest.raises(DeadlineExceeded):
        await core.explain(ctx(make_items(2)), [0, 1], deadline=time.time() + 0.05)


async def test_short_of_time_the_best_ranked_items_are_explained_and_the_rest_templated():
    engine = ScriptedEngine()
    core = make_core(engine, explain_min_tokens=10, explain_max_tokens=10, explain_attempts=1)
    # Each prompt costs 0.02 s to compute, every decode step 0.01 s: 8 items need ~0.25 s.
    core.cost.call_s, core.cost.step_s, core.cost.seq_step_s = 0.0, 0.01, 0.0
    core.cost.prefill_s = 0.02 / 60
    out = await core.explain(ctx(make_items(8)), list(range(8)), deadline=time.time() + 0.18)
    sources = [e.source for e in out]
    assert engine.batches and engine.batches[0] < 8
    assert sources[: engine.batches[0]] == ["llm"] * engine.batches[0]
    assert all(e.check == "no_time" for e in out[engine.batches[0] :])


async def test_a_round_past_its_deadline_is_stopped_and_judged_as_written():
    reply = " its sci-fi dread builds slowly across a long night on a cold and silent ship."
    engine = ScriptedEngine(reply=lambda m: reply, seconds_per_step=0.05)
    core = make_core(engine)
    # The model thinks the engine is instant; 32 steps take it 1.6 s, the deadline is 0.8 s.
    core.cost.prefill_s, core.cost.call_s, core.cost.step_s = 0.0, 0.0, 0.0
    core.cost.seq_step_s = 0.0
    started = time.perf_counter()
    out = await core.explain(ctx(make_items(3)), [0, 1, 2], deadline=time.time() + 0.8)
    assert time.perf_counter() - started < 0.8 and engine.running() == 0
    for e in out:
        assert e.source == "llm" and e.text.endswith("…") and "sci-fi dread" in e.text


async def test_a_cancelled_caller_aborts_its_engine_requests():
    engine = ScriptedEngine(seconds_per_step=1.0)
    core = make_core(engine)
    task = asyncio.ensure_future(core.explain(ctx(make_items(2)), [0, 1]))
    await asyncio.sleep(0.05)
    assert engine.running() == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.running() == 0 and engine.aborted == 2 and core.admission.pending == 0


async def test_a_full_queue_refuses_at_once():
    engine = ScriptedEngine(seconds_per_step=0.5)
    core = make_core(engine, max_pending=1)
    first = asyncio.ensure_future(core.explain(ctx(make_items(1)), [0]))
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    with pytest.raises(QueueFull):
        await core.rerank(ctx(make_items(3)), [3, 2, 1])
    assert time.perf_counter() - started < 0.05
    assert core.admission.refused["queue_full"] == 1
    first.cancel()


async def test_health_waits_for_the_warm_up_which_calibrates_the_costs():
    engine = ScriptedEngine(seconds_per_token=0.001, seconds_per_step=0.001)
    core = make_core(engine)
    with pytest.raises(RerankFailed):
        await core.check_health()
    report = await core.warm_up()
    assert core.warmed and report["rerank_prompt_tokens"] > 0
    assert core.cost.prefill_s == pytest.approx(0.001, rel=0.6)
    await core.check_health()
    described = core.describe()
    assert described["dtype"] == "float32" and described["warmed"]
    assert described["explain"]["prefix_cache_hit_rate"] > 0
    empty = make_core(ScriptedEngine({}))
    empty.warmed = True
    with pytest.raises(RerankFailed):
        await empty.check_health()
    core.shutdown()
    assert engine.closed


async def test_an_engine_that_answered_lately_passes_the_health_check_without_a_probe():
    engine = ScriptedEngine()
    core = make_core(engine, health_probe_s=300)
    await core.warm_up()
    sent = len(engine.prompts)
    await core.check_health()
    assert len(engine.prompts) == sent  # the warm-up's answers count: nothing sent
    core._answered_at -= 301  # as if idle for longer than health_probe_s
    await core.check_health()
    assert len(engine.prompts) == sent + 1  # probed
    await core.check_health()
    assert len(engine.prompts) == sent + 1  # the probe's answer counts too
    every = make_core(ScriptedEngine(), health_probe_s=0)
    every.warmed = True
    for n in (1, 2):
        await every.check_health()
        assert len(every.engine.prompts) == n
    engine.closed = True  # a dead engine fails at once, however lately it answered
    with pytest.raises(RerankFailed, match="shut down"):
        await core.check_health()
    assert len(engine.prompts) == sent + 1


def test_letters_cover_the_configured_maximum():
    assert RerankerConfig(max_candidates=len(LETTERS)).max_candidates == len(LETTERS)
    with pytest.raises(ValueError):
        RerankerConfig(max_candidates=len(LETTERS) + 1)
    with pytest.raises(ValueError, match="explain_min_tokens"):
        RerankerConfig(explain_min_tokens=40, explain_max_tokens=32)


def test_admission_waits_for_prompts_in_flight_but_not_for_their_decoding():
    admission = Admission(max_pending=4)
    with admission.admit(Work(prefill_s=1.0, decode_s=10.0), None):
        now = time.time()
        assert admission.backlog_s() == pytest.approx(1.0, abs=0.05)
        # 1 s of prompt ahead + 0.5 s own prompt + 2 s own decode: ends ~3.5 s from now.
        assert admission.fits(Work(0.5, 2.0), now + 3.7)
        assert not admission.fits(Work(0.5, 2.0), now + 3.2)
    assert admission.backlog_s() == 0.0 and admission.pending == 0


def test_decode_cost_grows_with_the_batch_width_and_follows_observations():
    cost = EngineCost(prefill_s=0.001, call_s=0.0)
    # Measured at start: 30 ms a step alone, 75 ms ten wide (5 ms more per sequence).
    cost.calibrate_steps([(1, 0.030), (10, 0.075)])
    assert cost.step_s == pytest.approx(0.025) and cost.seq_step_s == pytest.approx(0.005)
    assert cost.predict(100, steps=11, width=10) == pytest.approx(0.1 + 10 * 0.075)
    # A ten-wide batch turns out twice as slow per step: both parts move by one factor.
    before = cost.step_cost(10)
    cost.observe_generate(100, 11, 0.1 + 10 * 0.150, width=10)
    assert cost.step_cost(10) == pytest.approx(before * (0.7 + 0.3 * 2.0))
    assert cost.step_cost(1) / cost.step_cost(10) == pytest.approx(0.030 / 0.075)
    with pytest.raises(ValueError):
        cost.calibrate_steps([(4, 0.05), (4, 0.06)])


async def test_explain_counts_the_rerank_prompt_as_cached_even_with_items_appended():
    engine = ScriptedEngine()
    core = make_core(engine)
    items = [Candidate(str(i), f"Film {i}", "a long plot " * 12, ["Sci-Fi"]) for i in range(8)]
    await core.rerank(ctx(items[:5]), [5, 4, 3, 2, 1])  # lettered 5 (e.g. a near deadline)
    explain_context = ctx(items)  # the router appends final items the rerank did not letter
    prompts = [
        __import__("deployments.reranker.prompts", fromlist=["x"]).build_explain_prompt(
            explain_context, t, item_text_chars=160
        )
        for t in (0, 6)
    ]
    lengths = [engine.count_tokens(m) for m in prompts]
    total = sum(lengths)
    new = core._explain_new_tokens(explain_context, 160, lengths)
    assert new < 0.6 * total  # the rerank prompt's part of each is counted as cached
    # Nothing of another user's is cached, but their prompts share history and candidates
    # with each other: computed once, then served from the cache.
    other_user = ctx(items, history=["Heat (1995)"], cats=[["Crime"]])
    assert new < core._explain_new_tokens(other_user, 160, lengths) < 0.75 * total
