"""Catalog ingest: formats, id normalisation, validation errors, atomic writes, MovieLens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.catalog import (
    CATALOG_SCHEMA,
    INTERACTIONS_SCHEMA,
    IngestError,
    ingest_movielens,
    ingest_table,
    read_catalog,
    read_interactions,
    write_dataset,
)

# --------------------------------------------------------------------------- factories


def catalog_rows(n: int) -> list[dict[str, Any]]:
    """``n`` catalog rows with ids "1".."n", two categories each."""
    genres = ["Drama", "Comedy", "Horror"]
    return [
        {
            "item_id": str(i),
            "title": f"Movie {i}",
            "text": f"A story about number {i}.",
            "categories": [genres[i % 3], genres[(i + 1) % 3]],
        }
        for i in range(1, n + 1)
    ]


def interaction_rows(n_users: int, n_items: int) -> list[dict[str, Any]]:
    """Each user touches every item once, newest first so sorting is observable."""
    return [
        {"user_id": str(u), "item_id": str(i), "ts": 1000 * u + (n_items - i), "rating": i / 2}
        for u in range(n_users, 0, -1)
        for i in range(1, n_items + 1)
    ]


def write_rows(path: Path, rows: list[dict[str, Any]], *, sep: str = "|") -> Path:
    """Write rows as parquet, CSV (lists joined with ``sep``) or JSON lines, by suffix."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        header = list(rows[0])
        lines = [",".join(header)]
        for row in rows:
            cells = [sep.join(v) if isinstance(v, list) else str(v) for v in row.values()]
            lines.append(",".join(f'"{c}"' if "," in c else c for c in cells))
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in ``directory`` (hidden temporaries included) with its bytes."""
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_round_trip_writes_contract_schema(tmp_path: Path, suffix: str) -> None:
    catalog = write_rows(tmp_path / f"catalog{suffix}", catalog_rows(5))
    events = write_rows(tmp_path / f"events{suffix}", interaction_rows(3, 5))
    out = tmp_path / "out"

    report = ingest_table(catalog, out, interactions=events, weight_col="rating")

    items = read_catalog(report.catalog_path)
    log = read_interactions(out / "interactions.parquet")
    assert pq.read_schema(out / "catalog.parquet").names == CATALOG_SCHEMA.names
    assert items.schema == CATALOG_SCHEMA
    assert log.schema == INTERACTIONS_SCHEMA
    assert items.to_pylist() == catalog_rows(5)
    assert (report.items, report.interactions, report.users, report.dropped) == (5, 15, 3, 0)
    keys = list(zip(log["user_id"].to_pylist(), log["ts"].to_pylist(), strict=True))
    assert keys == sorted(keys)
    assert log["user_id"][0].as_py() == "1" and log["item_id"][0].as_py() == "5"
    assert set(log["event"].to_pylist()) == {"interact"}
    assert log["weight"].to_pylist()[:2] == [2.5, 2.0]


def test_ids_are_normalised_to_plain_strings(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": [42, 7, 100], "title": ["a", "b", "c"]}), catalog)
    events = tmp_path / "events.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": [3.0, 3.0, 12.0],
                "item_id": [" 42 ", "7", "100"],
                "ts": [5.0, 6.0, 7.0],
            }
        ),
        events,
    )

    ingest_table(catalog, tmp_path / "out", interactions=events)

    assert read_catalog(tmp_path / "out" / "catalog.parquet")["item_id"].to_pylist() == [
        "42",
        "7",
        "100",
    ]
    log = read_interactions(tmp_path / "out" / "interactions.parquet")
    assert log["user_id"].to_pylist() == ["12", "3", "3"]
    assert log["item_id"].to_pylist() == ["100", "42", "7"]
    assert log["ts"].to_pylist() == [7, 5, 6]


def test_csv_ids_keep_their_text(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,title\n007,Bond\n 42 ,Answer\n")

    ingest_table(catalog, tmp_path / "out")

    ids = read_catalog(tmp_path / "out" / "catalog.parquet")["item_id"].to_pylist()
    assert ids == ["007", "42"]


def test_categories_split_trimmed_and_deduplicated(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,title,genre\n1,A,Drama; War ;;Drama\n2,B,\n")

    ingest_table(catalog, tmp_path / "out", category_col="genre", category_sep=";")

    cats = read_catalog(tmp_path / "out" / "catalog.parquet")["categories"].to_pylist()
    assert cats == [["Drama", "War"], []]


def test_list_category_column_and_missing_text_fall_back(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.jsonl"
    rows = [
        {"item_id": 1, "title": "Alien", "categories": ["Sci-Fi", " Horror "]},
        {"item_id": 2, "title": "Up", "categories": None},
    ]
    write_rows(catalog, rows)

    ingest_table(catalog, tmp_path / "out")

    items = read_catalog(tmp_path / "out" / "catalog.parquet").to_pylist()
    assert items[0]["categories"] == ["Sci-Fi", "Horror"]
    assert items[1]["categories"] == []
    assert [r["text"] for r in items] == ["Alien", "Up"]


def test_empty_text_falls_back_to_title(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,title,text\n1,Alien,\n2,Up,A house floats away.\n")

    ingest_table(catalog, tmp_path / "out")

    texts = read_catalog(tmp_path / "out" / "catalog.parquet")["text"].to_pylist()
    assert texts == ["Alien", "A house floats away."]


def test_event_and_weight_columns_are_used(tmp_path: Path) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(2))
    events = tmp_path / "events.csv"
    events.write_text("uid,iid,when,kind,w\n9,1,10,click,0.5\n9,2,20,purchase,3\n")

    ingest_table(
        catalog,
        tmp_path / "out",
        interactions=events,
        user_col="uid",
        item_col="iid",
        ts_col="when",
        event_col="kind",
        weight_col="w",
    )

    log = read_interactions(tmp_path / "out" / "interactions.parquet").to_pylist()
    assert [(r["event"], r["weight"]) for r in log] == [("click", 0.5), ("purchase", 3.0)]


# --------------------------------------------------------------------------- errors


def test_missing_column_names_it_and_lists_available(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("id,name\n1,A\n")

    with pytest.raises(IngestError) as info:
        ingest_table(catalog, tmp_path / "out")

    assert info.value.column == "item_id"
    assert "'item_id'" in str(info.value) and "'id', 'name'" in str(info.value)
    assert str(catalog) in str(info.value)


def test_duplicate_id_names_the_row(tmp_path: Path) -> None:
    rows = catalog_rows(4)
    rows[3]["item_id"] = "2"
    catalog = write_rows(tmp_path / "catalog.csv", rows)

    with pytest.raises(IngestError, match="duplicate id '2'") as info:
        ingest_table(catalog, tmp_path / "out")

    assert (info.value.row, info.value.column) == (4, "item_id")
    assert "row 4" in str(info.value)


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_id_names_the_row(tmp_path: Path, bad: str) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(f"item_id,title\n1,A\n{bad},B\n")

    with pytest.raises(IngestError, match="empty id") as info:
        ingest_table(catalog, tmp_path / "out")

    assert (info.value.row, info.value.column) == (2, "item_id")


def test_null_id_names_the_row(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.parquet"
    pq.write_table(pa.table({"item_id": [1, 2, None], "title": ["a", "b", "c"]}), catalog)

    with pytest.raises(IngestError, match="missing id") as info:
        ingest_table(catalog, tmp_path / "out")

    assert info.value.row == 3


@pytest.mark.parametrize(
    ("value", "match"),
    [("yesterday", "not integer unix seconds"), ("1.5", "whole unix seconds")],
)
def test_bad_timestamp_names_row_and_column(tmp_path: Path, value: str, match: str) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(2))
    events = tmp_path / "events.csv"
    events.write_text(f"user_id,item_id,ts\n1,1,100\n1,2,{value}\n")

    with pytest.raises(IngestError, match=match) as info:
        ingest_table(catalog, tmp_path / "out", interactions=events)

    assert (info.value.row, info.value.column) == (2, "ts")


def test_unknown_item_names_the_row(tmp_path: Path) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(2))
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,ts\n1,1,10\n1,2,11\n2,99,12\n2,98,13\n")

    with pytest.raises(IngestError, match="'99' is not in the catalog") as info:
        ingest_table(catalog, tmp_path / "out", interactions=events)

    assert (info.value.row, info.value.column) == (3, "item_id")
    assert "2 such rows" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_drop_unknown_drops_and_counts(tmp_path: Path) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(2))
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,ts\n1,1,10\n1,2,11\n2,99,12\n2,98,13\n")

    report = ingest_table(catalog, tmp_path / "out", interactions=events, drop_unknown=True)

    assert (report.interactions, report.users, report.dropped) == (2, 1, 2)
    log = read_interactions(tmp_path / "out" / "interactions.parquet")
    assert log["item_id"].to_pylist() == ["1", "2"]


def test_malformed_csv_raises_ingest_error_with_row(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,title\n1,A\n2,B,extra\n3,C\n")

    with pytest.raises(IngestError, match="malformed CSV") as info:
        ingest_table(catalog, tmp_path / "out")

    assert info.value.row == 2
    assert isinstance(info.value.__cause__, pa.ArrowInvalid)


def test_malformed_jsonl_and_parquet_raise_ingest_error(tmp_path: Path) -> None:
    jsonl = tmp_path / "catalog.jsonl"
    jsonl.write_text('{"item_id": 1, "title": "A"}\n{"item_id": 2, "title": \n')
    parquet = tmp_path / "catalog.parquet"
    parquet.write_bytes(b"not a parquet file at all")

    for path in (jsonl, parquet):
        with pytest.raises(IngestError, match="cannot read") as info:
            ingest_table(path, tmp_path / "out")
        assert info.value.__cause__ is not None


def test_unknown_suffix_asks_for_fmt(tmp_path: Path) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(2))
    renamed = catalog.rename(tmp_path / "catalog.txt")

    with pytest.raises(IngestError, match="pass fmt"):
        ingest_table(renamed, tmp_path / "out")
    report = ingest_table(renamed, tmp_path / "out", fmt="csv")
    assert report.items == 2


# --------------------------------------------------------------------------- atomic writes


def test_failed_ingest_writes_nothing(tmp_path: Path) -> None:
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(3))
    events = tmp_path / "events.csv"
    events.write_text("user_id,item_id,ts\n1,1,10\n1,7,11\n")
    out = tmp_path / "out"

    with pytest.raises(IngestError):
        ingest_table(catalog, out, interactions=events)

    assert snapshot(out) == {}


def test_failed_ingest_keeps_previous_output_intact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    good_catalog = write_rows(tmp_path / "good.csv", catalog_rows(3))
    good_events = write_rows(tmp_path / "good_events.csv", interaction_rows(2, 3))
    ingest_table(good_catalog, out, interactions=good_events)
    before = snapshot(out)

    bigger = write_rows(tmp_path / "bigger.csv", catalog_rows(6))
    bad_events = tmp_path / "bad_events.csv"
    bad_events.write_text("user_id,item_id,ts\n1,1,10\n1,2,oops\n")
    with pytest.raises(IngestError):
        ingest_table(bigger, out, interactions=bad_events)
    malformed = tmp_path / "malformed.csv"
    malformed.write_text("item_id,title\n1,A,B\n")
    with pytest.raises(IngestError):
        ingest_table(malformed, out)

    assert set(before) == {"catalog.parquet", "interactions.parquet"}
    assert snapshot(out) == before


def test_write_dataset_validates_before_touching_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_table(write_rows(tmp_path / "catalog.csv", catalog_rows(3)), out)
    before = snapshot(out)
    catalog = pa.Table.from_pylist(catalog_rows(4), schema=CATALOG_SCHEMA)
    unknown = pa.Table.from_pylist(
        [{"user_id": "1", "item_id": "9", "ts": 1, "event": "click", "weight": 1.0}],
        schema=INTERACTIONS_SCHEMA,
    )

    with pytest.raises(IngestError, match="not in the catalog"):
        write_dataset(out, catalog, unknown)

    assert snapshot(out) == before


def test_write_dataset_failure_mid_staging_leaves_no_trace(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_table(write_rows(tmp_path / "catalog.csv", catalog_rows(3)), out)
    before = snapshot(out)
    catalog = pa.Table.from_pylist(catalog_rows(4), schema=CATALOG_SCHEMA)

    with pytest.raises(OSError):
        write_dataset(out, catalog, extra_files={"no-such-dir/meta.json": b"{}"})

    assert snapshot(out) == before


def test_catalog_only_ingest_replaces_stale_interactions(tmp_path: Path) -> None:
    out = tmp_path / "out"
    catalog = write_rows(tmp_path / "catalog.csv", catalog_rows(3))
    ingest_table(catalog, out, interactions=write_rows(tmp_path / "e.csv", interaction_rows(1, 3)))

    report = ingest_table(catalog, out)

    assert report.interactions_path is None and report.interactions == 0
    assert sorted(p.name for p in out.iterdir()) == ["catalog.parquet"]


# --------------------------------------------------------------------------- reading back


def test_read_catalog_rejects_wrong_types_and_duplicates(tmp_path: Path) -> None:
    wrong_type = tmp_path / "wrong.parquet"
    pq.write_table(
        pa.table({"item_id": [1], "title": ["a"], "text": ["a"], "categories": [["x"]]}),
        wrong_type,
    )
    duplicated = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_pylist(catalog_rows(2) + catalog_rows(1)), duplicated)

    with pytest.raises(IngestError, match="expected string") as info:
        read_catalog(wrong_type)
    assert info.value.column == "item_id"
    with pytest.raises(IngestError, match="duplicate id '1'") as info:
        read_catalog(duplicated)
    assert info.value.row == 3


def test_read_interactions_rejects_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    pq.write_table(pa.table({"user_id": ["1"], "item_id": ["1"], "ts": [1]}), path)

    with pytest.raises(IngestError, match="missing column") as info:
        read_interactions(path)

    assert info.value.column == "event"


# --------------------------------------------------------------------------- MovieLens


def write_movielens(directory: Path, *, tags: bool = True) -> Path:
    directory.mkdir()
    (directory / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation\n"
        '2,"Good, the Bad and the Ugly, The (1966)",Western\n'
        "3,Unlisted (2001),(no genres listed)\n"
    )
    (directory / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"
        "1,2,2.5,964981247\n"
        "2,3,3.5,964982224\n"
        "2,1,5.0,964980000\n"
    )
    if tags:
        tag_rows = ["userId,movieId,tag,timestamp"]
        tag_rows += [f"{u},1,pixar,1" for u in range(3)]
        tag_rows += ["1,1,Fun,1", "2,1, fun ,1", "1,1,toys,1"]
        tag_rows += [f"1,2,tag{i:02d},1" for i in range(12)]
        tag_rows += ["1,99,orphan,1"]
        (directory / "tags.csv").write_text("\n".join(tag_rows) + "\n")
    return directory


def test_movielens_text_genres_and_tags(tmp_path: Path) -> None:
    src = write_movielens(tmp_path / "ml")

    report = ingest_movielens(src, tmp_path / "out")

    items = {r["item_id"]: r for r in read_catalog(report.catalog_path).to_pylist()}
    assert items["1"]["text"] == (
        "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun, toys."
    )
    assert items["1"]["categories"] == ["Adventure", "Animation"]
    assert items["2"]["title"] == "Good, the Bad and the Ugly, The (1966)"
    assert items["2"]["text"].endswith("Tags: " + ", ".join(f"tag{i:02d}" for i in range(10)) + ".")
    assert items["3"]["categories"] == []
    assert items["3"]["text"] == "Unlisted (2001)."
    log = read_interactions(tmp_path / "out" / "interactions.parquet").to_pylist()
    assert [(r["user_id"], r["item_id"], r["ts"]) for r in log] == [
        ("1", "2", 964981247),
        ("1", "1", 964982703),
        ("2", "1", 964980000),
        ("2", "3", 964982224),
    ]
    assert {r["event"] for r in log} == {"rating"}
    assert [r["weight"] for r in log] == [2.5, 4.0, 5.0, 3.5]


def test_movielens_min_rating_and_no_tags(tmp_path: Path) -> None:
    src = write_movielens(tmp_path / "ml", tags=False)

    report = ingest_movielens(src, tmp_path / "out", min_rating=3.5)

    assert (report.interactions, report.users, report.dropped) == (3, 2, 0)
    log = read_interactions(tmp_path / "out" / "interactions.parquet")
    assert min(log["weight"].to_pylist()) == 3.5
    text = read_catalog(report.catalog_path)["text"][0].as_py()
    assert text == "Toy Story (1995). Genres: Adventure, Animation."


def test_movielens_unknown_movie_in_ratings(tmp_path: Path) -> None:
    src = write_movielens(tmp_path / "ml")
    with (src / "ratings.csv").open("a") as fh:
        fh.write("3,404,4.0,964982000\n")

    with pytest.raises(IngestError) as info:
        ingest_movielens(src, tmp_path / "out")
    report = ingest_movielens(src, tmp_path / "out", drop_unknown=True)

    assert info.value.path == src / "ratings.csv"
    assert (info.value.row, info.value.column) == (5, "movieId")
    assert (report.interactions, report.dropped) == (4, 1)


def test_movielens_missing_file_is_an_ingest_error(tmp_path: Path) -> None:
    src = write_movielens(tmp_path / "ml")
    (src / "ratings.csv").unlink()

    with pytest.raises(IngestError, match="file not found") as info:
        ingest_movielens(src, tmp_path / "out")

    assert info.value.path == src / "ratings.csv"
    assert not (tmp_path / "out").exists()
