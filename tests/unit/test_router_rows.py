"""The router's row cache: a row is used while its shard's version is the one it was kept under."""

import time

import numpy as np

from deployments.router.rows import RowCache
from retrieval.shards import Hit


def row(item_id: str, title: str = "t"):
    return Hit(item_id=item_id, score=0.0, title=title, text="", categories=[]), np.zeros(2)


def cache(size: int = 10, ttl_s: float = 600.0) -> RowCache:
    return RowCache(size, ttl_s, shard_of=lambda item_id: int(item_id[0]))  # "1a": shard 1


def test_rows_are_used_until_their_shards_version_moves():
    rows = cache()
    rows.learn({0: (5, 0), 1: (5, 0)})
    rows.put({"0a": row("0a"), "1a": row("1a")}, rows.versions())
    assert rows.get("0a")[0].item_id == "0a" and rows.get("1a") is not None
    rows.learn({1: (5, 1)})  # a write to shard 1, through any router replica
    assert rows.get("1a") is None  # asked again
    assert rows.get("0a") is not None  # shard 0 did not change
    rows.put({"1a": row("1a", "new")}, rows.versions())
    assert rows.get("1a")[0].title == "new"
    rows.learn({0: (9, 0)})  # shard 0 reloaded: a later load, its writes counted from 0
    assert rows.get("0a") is None and len(rows) == 1


def test_an_older_answer_does_not_make_older_rows_current_again():
    rows = cache()
    rows.learn({0: (5, 0)})
    rows.put({"0a": row("0a", "old")}, rows.versions())
    rows.learn({0: (5, 1)})  # a search that started after a write answers first...
    rows.learn({0: (5, 0)})  # ...then one that started before it
    assert rows.versions() == {0: (5, 1)}
    assert rows.get("0a") is None


def test_rows_kept_before_any_version_was_known_are_asked_again_once():
    rows = cache()
    rows.put({"0a": row("0a")}, rows.versions())  # the first request's history lookup
    assert rows.get("0a") is not None  # no version known: shards that report none keep rows
    rows.learn({0: (5, 0)})
    assert rows.get("0a") is None
    rows.put({"0a": row("0a")}, rows.versions())
    assert rows.get("0a") is not None


def test_forgotten_rows_and_old_rows_are_gone():
    rows = cache(ttl_s=0.05)
    rows.put({"0a": row("0a"), "0b": row("0b")}, {})
    rows.forget(["0a", "unknown"])
    assert rows.get("0a") is None and rows.get("0b") is not None
    time.sleep(0.08)
    assert rows.get("0b") is None
