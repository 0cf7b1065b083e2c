"""Synthetic demo dataset: determinism, contract, and a log shaped like a real one.

Besides the contract (ids, distinct clicks, meta), the default dataset must show what real
interaction logs show: power-law user activity, taste streaks, series clicked in order, tied
timestamps and cold items.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from retrieval.catalog import read_catalog, read_interactions
from retrieval.demo_data import DEMO_CATEGORIES, DEMO_META_FILE, make_demo_dataset


def load(directory: Path) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Catalog, interactions and meta of a generated dataset, read through the validators."""
    catalog = read_catalog(directory / "catalog.parquet")
    interactions = read_interactions(directory / "interactions.parquet")
    meta = json.loads((directory / DEMO_META_FILE).read_text())
    return catalog, interactions, meta


def histories(interactions: pa.Table) -> dict[str, list[tuple[int, str]]]:
    """User → (ts, item_id) per click, in file order (sorted by user and time, ties kept)."""
    per_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in interactions.select(["user_id", "ts", "item_id"]).to_pylist():
        per_user[row["user_id"]].append((row["ts"], row["item_id"]))
    return per_user


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset with default arguments, made once for this module."""
    path = tmp_path_factory.mktemp("demo")
    make_demo_dataset(path)
    return path


def test_same_seed_gives_same_dataset(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"n_items": 300, "n_users": 40, "seed": 7}
    make_demo_dataset(tmp_path / "a", **kwargs)
    make_demo_dataset(tmp_path / "b", **kwargs)
    make_demo_dataset(tmp_path / "c", **{**kwargs, "seed": 8})

    a, b, c = load(tmp_path / "a"), load(tmp_path / "b"), load(tmp_path / "c")

    assert a[0].equals(b[0]) and a[1].equals(b[1]) and a[2] == b[2]
    assert not a[0].equals(c[0])
    assert not a[1].equals(c[1])


def test_default_sizes_and_ids(default_demo: Path) -> None:
    catalog, interactions, meta = load(default_demo)

    assert catalog.num_rows >= 2000
    assert catalog["item_id"].to_pylist() == [str(i) for i in range(1, catalog.num_rows + 1)]
    users = set(interactions["user_id"].to_pylist())
    assert len(users) >= 5000
    assert users == {str(u) for u in range(1, len(users) + 1)}
    assert meta["n_items"] == catalog.num_rows and meta["n_users"] == len(users)
    assert meta["n_interactions"] == interactions.num_rows


def test_user_activity_has_a_power_law_tail(default_demo: Path) -> None:
    _, interactions, _ = load(default_demo)
    counts = sorted(Counter(interactions["user_id"].to_pylist()).values())

    assert sum(n >= 1000 for n in counts) >= 5
    assert counts[-1] >= 2000
    assert 10 <= statistics.median(counts) < 100
    assert counts[0] <= 3 and sum(n <= 3 for n in counts) >= 10
    assert interactions.num_rows < 600_000


def test_activity_follows_the_given_bounds_with_a_heavy_tail(tmp_path: Path) -> None:
    make_demo_dataset(tmp_path, n_items=400, n_users=200, interactions_per_user=(2, 300))

    _, interactions, meta = load(tmp_path)
    counts = sorted(Counter(interactions["user_id"].to_pylist()).values())

    assert meta["interactions_per_user"] == [2, 300]
    assert len(counts) == 200 and counts[0] >= 2 and counts[-1] <= 300
    assert counts[-1] > 5 * statistics.median(counts)


def test_report_matches_files(tmp_path: Path) -> None:
    report = make_demo_dataset(tmp_path, n_items=200, n_users=30, interactions_per_user=(5, 9))

    catalog, interactions, _ = load(tmp_path)
    assert report.items == catalog.num_rows == 200
    assert report.users == 30
    assert report.interactions == interactions.num_rows
    assert 30 * 5 <= report.interactions <= 30 * 9


def test_every_interaction_names_a_catalog_item(default_demo: Path) -> None:
    catalog, interactions, _ = load(default_demo)

    known = pc.is_in(interactions["item_id"], value_set=catalog["item_id"].combine_chunks())

    assert pc.all(known).as_py()


def test_user_histories_are_distinct_ordered_clicks(default_demo: Path) -> None:
    _, interactions, meta = load(default_demo)
    low, high = meta["interactions_per_user"]

    for history in histories(interactions).values():
        stamps = [ts for ts, _ in history]
        assert low <= len(history) <= high
        assert len({item for _, item in history}) == len(history)
        assert all(a <= b for a, b in zip(stamps, stamps[1:], strict=False))
    assert set(interactions["event"].to_pylist()) == {"click"}
    assert set(interactions["weight"].to_pylist()) == {1.0}


def test_items_mostly_have_one_category_some_two(default_demo: Path) -> None:
    catalog, _, _ = load(default_demo)
    sizes = Counter(len(c) for c in catalog["categories"].to_pylist())
    seen = {c for cats in catalog["categories"].to_pylist() for c in cats}

    assert set(sizes) == {1, 2}
    assert sizes[1] > 0.7 * catalog.num_rows and sizes[2] > 0.05 * catalog.num_rows
    assert seen == set(DEMO_CATEGORIES) and len(seen) >= 12


def test_texts_are_descriptive_and_titles_unique(default_demo: Path) -> None:
    catalog, _, _ = load(default_demo)
    titles = catalog["title"].to_pylist()
    texts = catalog["text"].to_pylist()

    assert len(set(titles)) == len(titles)
    assert len(set(texts)) > 0.9 * len(texts)
    assert all(len(t.split()) >= 12 and t.endswith(".") for t in texts)


def test_meta_records_tastes_and_item_themes(default_demo: Path) -> None:
    catalog, _, meta = load(default_demo)

    assert meta["seed"] == 0
    assert meta["categories"] == {k: list(v) for k, v in DEMO_CATEGORIES.items()}
    for tastes in meta["users"].values():
        assert 1 <= len(tastes) <= 3
        assert sum(t["weight"] for t in tastes) == pytest.approx(1.0, abs=1e-3)
        assert all(t["subtheme"] in DEMO_CATEGORIES[t["category"]] for t in tastes)
    ids = catalog["item_id"].to_pylist()
    for item_id, cats in zip(ids, catalog["categories"].to_pylist(), strict=True):
        assert [p["category"] for p in meta["items"][item_id]] == cats


def test_clicks_concentrate_in_latent_taste_categories(default_demo: Path) -> None:
    catalog, interactions, meta = load(default_demo)
    item_categories = dict(
        zip(catalog["item_id"].to_pylist(), catalog["categories"].to_pylist(), strict=True)
    )
    hits = Counter[str]()
    totals = Counter[str]()
    for user, item in zip(
        interactions["user_id"].to_pylist(), interactions["item_id"].to_pylist(), strict=True
    ):
        liked = {t["category"] for t in meta["users"][user]}
        totals[user] += 1
        hits[user] += bool(liked.intersection(item_categories[item]))

    overall = sum(hits.values()) / sum(totals.values())
    assert overall > 0.6
    assert sum(hits[u] / totals[u] > 0.6 for u in totals) > 0.9 * len(totals)


def test_popular_items_are_clicked_far_more(default_demo: Path) -> None:
    _, interactions, _ = load(default_demo)
    counts = sorted(Counter(interactions["item_id"].to_pylist()).values(), reverse=True)

    top_share = sum(counts[: len(counts) // 10]) / sum(counts)

    assert top_share > 0.27


def test_some_clicks_share_the_second_of_the_click_before(default_demo: Path) -> None:
    _, interactions, _ = load(default_demo)
    per_user = histories(interactions)

    tied = sum(a[0] == b[0] for h in per_user.values() for a, b in zip(h, h[1:], strict=False))
    steps = sum(len(h) - 1 for h in per_user.values())
    active = [h for h in per_user.values() if len(h) >= 20]
    with_tie = sum(any(a[0] == b[0] for a, b in zip(h, h[1:], strict=False)) for h in active)

    assert 0.05 < tied / steps < 0.3
    assert with_tie > 0.8 * len(active)


def test_some_catalog_items_are_cold(default_demo: Path) -> None:
    catalog, interactions, meta = load(default_demo)
    never_clicked = set(catalog["item_id"].to_pylist()) - set(interactions["item_id"].to_pylist())

    assert 0.05 * catalog.num_rows <= len(never_clicked) <= 0.12 * catalog.num_rows
    assert set(meta["cold_items"]) <= never_clicked
    assert len(meta["cold_items"]) >= 0.05 * catalog.num_rows


def test_series_parts_share_a_theme_and_a_numbered_title(default_demo: Path) -> None:
    catalog, _, meta = load(default_demo)
    titles = dict(zip(catalog["item_id"].to_pylist(), catalog["title"].to_pylist(), strict=True))
    texts = dict(zip(catalog["item_id"].to_pylist(), catalog["text"].to_pylist(), strict=True))
    numerals = ["I", "II", "III", "IV"]

    assert len(meta["series"]) >= 30
    for parts in meta["series"]:
        assert 2 <= len(parts) <= 4
        assert len({json.dumps(meta["items"][p][0]) for p in parts}) == 1
        first = re.fullmatch(r"(.+) \((\d{4})\)", titles[parts[0]])
        assert first is not None
        stem, year = first[1], int(first[2])
        for number, (previous, part) in enumerate(zip(parts, parts[1:], strict=False), 2):
            later = re.fullmatch(
                rf"{re.escape(stem)} {numerals[number - 1]} \((\d{{4}})\)", titles[part]
            )
            assert later is not None, titles[part]
            assert int(later[1]) > year
            year = int(later[1])
            assert f"The sequel to {titles[previous]}." in texts[part]


def test_series_parts_are_clicked_in_order(default_demo: Path) -> None:
    _, interactions, meta = load(default_demo)
    part_of = {
        item: (s, k) for s, parts in enumerate(meta["series"]) for k, item in enumerate(parts)
    }

    several = 0
    for history in histories(interactions).values():
        clicked: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for ts, item in history:
            if item in part_of:
                series, number = part_of[item]
                clicked[series].append((number, ts))
        for parts in clicked.values():
            if len(parts) > 1:
                several += 1
                assert [n for n, _ in parts] == sorted(n for n, _ in parts)
                assert all(a[1] < b[1] for a, b in zip(parts, parts[1:], strict=False))
    assert several >= 100


def test_consecutive_clicks_stay_in_one_taste(default_demo: Path) -> None:
    catalog, interactions, meta = load(default_demo)
    item_categories = dict(
        zip(catalog["item_id"].to_pylist(), catalog["categories"].to_pylist(), strict=True)
    )
    shuffler = random.Random(0)

    def same_taste_share(items: list[str], liked: list[str]) -> float:
        taste = [next((c for c in liked if c in item_categories[i]), None) for i in items]
        pairs = list(zip(taste, taste[1:], strict=False))
        return sum(a is not None and a == b for a, b in pairs) / len(pairs)

    observed: list[float] = []
    shuffled: list[float] = []
    for user, history in histories(interactions).items():
        liked = sorted({t["category"] for t in meta["users"][user]})
        if len(history) < 10 or len(liked) < 2:
            continue
        items = [item for _, item in history]
        observed.append(same_taste_share(items, liked))
        shuffled.append(same_taste_share(shuffler.sample(items, len(items)), liked))

    assert len(observed) >= 100
    assert statistics.mean(observed) > statistics.mean(shuffled) + 0.1
    assert statistics.mean(observed) > 1.2 * statistics.mean(shuffled)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_items": 0},
        {"n_users": 0},
        {"interactions_per_user": (0, 3)},
        {"interactions_per_user": (5, 3)},
        {"n_items": 10, "interactions_per_user": (5, 11)},
    ],
)
def test_impossible_arguments_are_rejected(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_small_catalog_still_fills_every_history(tmp_path: Path) -> None:
    report = make_demo_dataset(tmp_path, n_items=20, n_users=10, interactions_per_user=(20, 20))

    _, interactions, _ = load(tmp_path)
    assert report.interactions == 200
    assert set(Counter(interactions["user_id"].to_pylist()).values()) == {20}
