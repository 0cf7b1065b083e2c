"""User stores: the local one over the log and feedback.jsonl, and Redis (a real server)."""

import asyncio
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deployments.errors import Unavailable
from deployments.router.feedback import FEEDBACK_FILE, FeedbackLog
from deployments.router.schemas import FeedbackEvent
from deployments.router.store import LocalStore, MemoryStore, RedisStore, open_store
from retrieval.config import AppConfig


def event(user, item, event_id=None, ts=100):
    return FeedbackEvent(user_id=user, item_id=item, ts=ts, event_id=event_id)


def write_log(data_dir, rows):
    users, items, ts = zip(*rows, strict=True)
    table = pa.table({"user_id": list(users), "item_id": list(items), "ts": list(ts)})
    pq.write_table(table, data_dir / "interactions.parquet")


def config(data_dir, **router):
    return AppConfig(data_dir=str(data_dir), router=router)


def run(coro):
    return asyncio.run(coro)


def test_memory_store_moves_a_repeat_to_the_end_and_caps_the_history():
    store = MemoryStore({"u": ["a", "b", "c"]}, cap=3)
    assert run(store.record(event("u", "a")))
    assert run(store.history("u")) == ["b", "c", "a"]
    assert run(store.record(event("u", "d")))
    assert run(store.history("u")) == ["c", "a", "d"]  # the oldest dropped at the cap
    assert run(store.history("nobody")) == []


def test_an_event_id_is_recorded_once_and_a_plain_event_every_time():
    store = MemoryStore({})
    assert run(store.record(event("u", "a", event_id="e1")))
    assert run(store.record(event("u", "b")))
    assert not run(store.record(event("u", "c", event_id="e1")))  # a retry: nothing changes
    assert run(store.history("u")) == ["a", "b"]
    store.event_id_ttl_s = 0.0
    assert run(store.record(event("u", "c", event_id="e2")))
    assert run(store.record(event("u", "d", event_id="e2")))  # past the TTL: a new event


def test_local_store_is_the_log_then_the_file_and_remembers_ids_across_restarts(tmp_path):
    write_log(tmp_path, [("u", "a", 1), ("u", "b", 2), ("v", "c", 1)])
    cfg = config(tmp_path, history_cap=2)
    feedback = FeedbackLog(tmp_path / FEEDBACK_FILE)
    store = LocalStore(cfg, feedback)
    assert run(store.history("u")) == ["a", "b"]
    assert run(store.record(event("u", "x", event_id="e1")))
    assert run(store.history("u")) == ["b", "x"]
    again = LocalStore(cfg, FeedbackLog(tmp_path / FEEDBACK_FILE))  # a restarted replica
    assert run(again.history("u")) == ["b", "x"]
    assert not run(again.record(event("u", "y", event_id="e1")))
    assert len(list(feedback.replay())) == 1
    removed = run(again.erase("u"))
    assert removed == {"feedback_events": 1, "interactions": 2, "history_items": 2}
    assert run(LocalStore(cfg, FeedbackLog(tmp_path / FEEDBACK_FILE)).history("u")) == []


def test_local_store_forgets_an_id_whose_write_failed(tmp_path, monkeypatch):
    store = LocalStore(config(tmp_path), FeedbackLog(tmp_path / FEEDBACK_FILE))

    def full(event):
        raise Unavailable("could not record the event: No space left on device")

    monkeypatch.setattr(store.feedback, "append", full)
    with pytest.raises(Unavailable):
        run(store.record(event("u", "a", event_id="e1")))
    monkeypatch.undo()
    assert run(store.record(event("u", "a", event_id="e1")))  # the resend is recorded


def test_redis_store_records_caps_dedupes_and_erases(tmp_path, redis_server):
    write_log(tmp_path, [("u", "a", 1), ("u", "b", 2), ("u", "c", 2), ("v", "d", 5)])
    cfg = config(tmp_path, user_store="redis", redis_url=redis_server.url, history_cap=3)
    store = open_store(cfg, FeedbackLog(tmp_path / FEEDBACK_FILE))
    assert isinstance(store, RedisStore)

    async def scenario():
        assert await store.history("u") == ["a", "b", "c"]  # tied timestamps keep log order
        assert await store.record(event("u", "a", event_id="e1"))
        assert await store.history("u") == ["b", "c", "a"]
        assert not await store.record(event("u", "z", event_id="e1"))
        assert await store.record(event("u", "z"))
        assert await store.history("u") == ["c", "a", "z"]  # capped at 3
        removed = await store.erase("u")
        assert removed["history_items"] == 3 and removed["interactions"] == 3
        assert await store.history("u") == [] and await store.history("v") == ["d"]

    run(scenario())
    store.close()


def test_the_log_is_loaded_once_and_a_new_log_keeps_what_users_did_since(tmp_path, redis_server):
    write_log(tmp_path, [("u", "a", 1), ("u", "b", 2)])
    cfg = config(tmp_path, user_store="redis", redis_url=redis_server.url)
    first = RedisStore(cfg)
    assert first.load_log() is True
    assert RedisStore(cfg).load_log() is False  # a second replica finds it loaded
    run(first.record(event("u", "x")))
    write_log(tmp_path, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)])  # a rebuilt log
    assert RedisStore(cfg).load_log() is True
    assert run(RedisStore(cfg).history("u")) == ["a", "b", "c", "x"]


def test_replicas_starting_together_load_the_log_once(tmp_path, redis_server):
    write_log(tmp_path, [(f"u{i}", "a", 1) for i in range(500)])
    cfg = config(tmp_path, user_store="redis", redis_url=redis_server.url)
    loaded = []
    threads = [
        threading.Thread(target=lambda: loaded.append(RedisStore(cfg).load_log())) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(loaded) == [False, False, True]
    assert run(RedisStore(cfg).history("u499")) == ["a"]


def test_an_unreachable_redis_is_unavailable_not_a_traceback(tmp_path):
    from cluster.bench.driver import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisStore(config(tmp_path, user_store="redis", redis_url=url, backend_timeout_s=1))
    with pytest.raises(Unavailable, match="unreachable"):
        run(store.history("u"))
    with pytest.raises(Unavailable, match="could not record"):
        run(store.record(event("u", "a")))


def test_no_acknowledged_event_is_lost_when_redis_is_killed(tmp_path, redis_server):
    """A stream of events while the server is SIGKILLed and started again: every event
    the store acknowledged is in the history afterwards."""
    cfg = config(tmp_path, user_store="redis", redis_url=redis_server.url, backend_timeout_s=1)
    store = RedisStore(cfg)
    acked, failed = [], 0

    async def stream():
        nonlocal failed
        for n in range(600):
            if n == 200:
                redis_server.kill()
            if n == 260:
                redis_server.start()
            try:
                if await store.record(event("u", f"i{n}", event_id=f"e{n}")):
                    acked.append(f"i{n}")
            except Unavailable:
                failed += 1
                await asyncio.sleep(0.01)

    run(stream())
    history = run(RedisStore(cfg).history("u"))
    assert len(acked) >= 500 and failed > 0
    assert set(acked) <= set(history)
    missing = set(history) - set(acked)
    assert len(missing) <= 1  # at most the one in flight when the server died


def test_fold_moves_local_feedback_into_the_log_once_and_refits(tmp_path):
    from deployments.router.fold import fold_feedback
    from retrieval.build import CF_NAME, load_cf

    write_log(tmp_path, [("u", "a", 1), ("v", "b", 1)])
    pq.write_table(pa.table({"item_id": ["a", "b", "c"]}), tmp_path / "catalog.parquet")
    (tmp_path / "index").mkdir()
    cfg = config(tmp_path)
    store = LocalStore(cfg, FeedbackLog(tmp_path / FEEDBACK_FILE))
    for user, item in (("u", "c"), ("w", "a"), ("w", "c")):
        assert run(store.record(event(user, item, ts=5)))
    result = fold_feedback(cfg)
    assert (result.events, result.added, result.interactions) == (3, 3, 5)
    log = pq.read_table(tmp_path / "interactions.parquet")
    assert log.column_names == ["user_id", "item_id", "ts"]  # the log's own columns
    assert list(FeedbackLog(tmp_path / FEEDBACK_FILE).replay()) == []
    assert load_cf(tmp_path / "index").scores(["a"])[2] > 0  # a and c co-occur now
    assert (tmp_path / "index" / CF_NAME).exists()
    # The same events again (a fold cut short before the file's truncation): not added twice.
    again = FeedbackLog(tmp_path / FEEDBACK_FILE)
    again.append(event("u", "c", ts=5))
    assert fold_feedback(cfg).added == 0
    # A restarted replica sees the same histories as before the fold.
    restarted = LocalStore(cfg, FeedbackLog(tmp_path / FEEDBACK_FILE))
    assert run(restarted.history("u")) == ["a", "c"] and run(restarted.history("w")) == ["a", "c"]


def test_fold_takes_the_redis_event_stream_and_trims_it(tmp_path, redis_server):
    from deployments.router.fold import fold_feedback

    write_log(tmp_path, [("u", "a", 1)])
    pq.write_table(pa.table({"item_id": ["a", "b"]}), tmp_path / "catalog.parquet")
    (tmp_path / "index").mkdir()
    cfg = config(tmp_path, user_store="redis", redis_url=redis_server.url)
    store = open_store(cfg, FeedbackLog(tmp_path / FEEDBACK_FILE))

    async def twice():  # the second a retry: one event
        return [await store.record(event("u", "b", ts=9, event_id="x")) for _ in range(2)]

    assert run(twice()) == [True, False]
    assert fold_feedback(cfg).added == 1
    assert RedisStore(cfg).unfolded() == ([], None)
    assert run(RedisStore(cfg).history("u")) == ["a", "b"]
    assert RedisStore(cfg).load_log() is True  # the log changed: merged, nothing lost
    assert run(RedisStore(cfg).history("u")) == ["a", "b"]
