"""`POST /v1/feedback` without a cluster: validation, the feedback file, history replay."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deployments.errors import InvalidInput, Unavailable
from deployments.router.feedback import (
    FEEDBACK_FILE,
    FeedbackLog,
    apply_event,
    erase_user,
    load_histories,
)
from deployments.router.http import parse_feedback
from deployments.router.schemas import FeedbackEvent
from retrieval.config import AppConfig


def event(user: str, item: str, ts: int = 0) -> FeedbackEvent:
    return FeedbackEvent(user_id=user, item_id=item, event="click", ts=ts)


def test_event_defaults_and_validation():
    e = parse_feedback(b'{"user_id": "u", "item_id": "7"}', 1024)
    assert e.event == "interact" and e.ts > 1_700_000_000
    with pytest.raises(InvalidInput) as bad:
        parse_feedback(b'{"user_id": "u", "item_id": "7", "rating": 5}', 1024)
    assert bad.value.field == "rating"
    with pytest.raises(InvalidInput) as bad:
        parse_feedback(b'{"user_id": "u", "item_id": "7", "event": "DROP TABLE"}', 1024)
    assert bad.value.field == "event"


def test_an_event_makes_its_item_the_newest_in_the_history():
    histories = {"u": ["a", "b", "c"]}
    apply_event(histories, event("u", "a"))
    apply_event(histories, event("new", "x"))
    assert histories == {"u": ["b", "c", "a"], "new": ["x"]}


def test_log_replays_what_was_appended(tmp_path):
    log = FeedbackLog(tmp_path / FEEDBACK_FILE)
    assert list(log.replay()) == []
    events = [event("u", "a", 1), event("v", "b", 2), event("u", "c", 3)]
    for e in events:
        log.append(e)
    assert list(FeedbackLog(tmp_path / FEEDBACK_FILE).replay()) == events


def test_a_write_cut_short_is_skipped_but_a_bad_line_is_an_error(tmp_path, caplog):
    path = tmp_path / FEEDBACK_FILE
    log = FeedbackLog(path)
    log.append(event("u", "a"))
    with path.open("a") as f:
        f.write('{"user_id": "u", "item')  # a crash in the middle of an append
    assert [e.item_id for e in log.replay()] == ["a"]
    assert "unterminated last line" in caplog.text
    log.append(event("u", "b"))  # the cut-off tail is gone: this starts a line of its own
    assert [e.item_id for e in log.replay()] == ["a", "b"]

    path.write_text(json.dumps({"user_id": "u"}) + "\n" + event("u", "a").model_dump_json() + "\n")
    with pytest.raises(ValueError, match=rf"{FEEDBACK_FILE}, line 1: not a feedback event"):
        list(log.replay())


def test_a_failed_append_is_rolled_back_and_the_log_stays_readable(tmp_path, monkeypatch):
    import os

    path = tmp_path / FEEDBACK_FILE
    log = FeedbackLog(path)
    log.append(event("u", "a"))
    good = path.read_bytes()
    real_fsync = os.fsync

    def disk_full(fd):  # the bytes are written, then the device refuses them
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(Unavailable, match="No space left"):
        log.append(event("u", "b"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == good  # no partial line for the next append to glue onto
    log.append(event("u", "c"))
    assert [e.item_id for e in FeedbackLog(path).replay()] == ["a", "c"]


def test_router_histories_are_the_log_then_the_feedback(tmp_path):
    pq.write_table(
        pa.table({"user_id": ["u", "u", "v"], "item_id": ["b", "a", "c"], "ts": [2, 1, 5]}),
        tmp_path / "interactions.parquet",
    )
    log = FeedbackLog(tmp_path / FEEDBACK_FILE)
    log.append(event("u", "a", 9))
    log.append(event("w", "d", 9))
    histories = load_histories(AppConfig(data_dir=str(tmp_path)), log)
    assert histories == {"u": ["b", "a"], "v": ["c"], "w": ["d"]}


def test_an_erased_user_is_gone_from_both_files_and_stays_gone_after_a_restart(tmp_path):
    log_path = tmp_path / "interactions.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": ["u", "u", "v", "u"],
                "item_id": ["b", "a", "c", "d"],
                "ts": [2, 1, 5, 5],
                "rating": [4.0, 3.0, 5.0, 1.0],
            }
        ),
        log_path,
    )
    feedback = FeedbackLog(tmp_path / FEEDBACK_FILE)
    for e in (event("u", "e", 9), event("w", "d", 9), event("u", "f", 10)):
        feedback.append(e)
    config = AppConfig(data_dir=str(tmp_path))
    assert erase_user(config, feedback, "u") == {"feedback_events": 2, "interactions": 3}
    # A new replica starts from the files: nothing of u is left, the others are intact.
    assert load_histories(config, FeedbackLog(tmp_path / FEEDBACK_FILE)) == {
        "v": ["c"],
        "w": ["d"],
    }
    table = pq.read_table(log_path)
    assert table.column_names == ["user_id", "item_id", "ts", "rating"]
    assert table.to_pylist() == [{"user_id": "v", "item_id": "c", "ts": 5, "rating": 5.0}]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    # Erasing again removes nothing; appends still work after a rewrite.
    assert erase_user(config, feedback, "u") == {"feedback_events": 0, "interactions": 0}
    feedback.append(event("u", "g", 11))
    assert [(e.user_id, e.item_id) for e in feedback.replay()] == [("w", "d"), ("u", "g")]


def test_erasing_refuses_a_log_with_a_line_that_is_not_an_event(tmp_path):
    feedback = FeedbackLog(tmp_path / FEEDBACK_FILE)
    feedback.append(event("u", "a", 1))
    with (tmp_path / FEEDBACK_FILE).open("ab") as f:
        f.write(b"not json\n")
    with pytest.raises(ValueError, match="line 2: not a feedback event"):
        erase_user(AppConfig(data_dir=str(tmp_path)), feedback, "u")
    assert len((tmp_path / FEEDBACK_FILE).read_bytes().splitlines()) == 2  # left as it was
