"""Synthetic demo dataset: determinism, contract, and users concentrated on their tastes."""

from __future__ import annotations

import json
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
    assert len(users) >= 500
    assert users == {str(u) for u in range(1, len(users) + 1)}
    assert meta["n_items"] == catalog.num_rows and meta["n_users"] == len(users)
    assert meta["n_interactions"] == interactions.num_rows


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
    _, interactions, _ = load(default_demo)
    per_user: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in interactions.to_pylist():
        per_user[row["user_id"]].append((row["ts"], row["item_id"]))

    for history in per_user.values():
        stamps = [ts for ts, _ in history]
        assert 15 <= len(history) <= 40
        assert len({item for _, item in history}) == len(history)
        assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))
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
