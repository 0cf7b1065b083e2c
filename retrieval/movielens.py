"""Ingest of a MovieLens CSV release into the llmrec dataset layout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from retrieval.catalog_files import check_known_items, write_dataset
from retrieval.catalog_types import CATALOG_SCHEMA, IngestReport
from retrieval.ingest_columns import (
    as_text,
    build_interactions,
    check_unique,
    clean_strings,
    normalise_ids,
    require_column,
    split_categories,
)
from retrieval.ingest_readers import read_table

__all__ = ["ingest_movielens"]

_MOVIELENS_NO_GENRES = "(no genres listed)"
_MOVIELENS_MAX_TAGS = 10


def ingest_movielens(
    src_dir: Path,
    out_dir: Path,
    *,
    min_rating: float = 0.0,
    drop_unknown: bool = False,
) -> IngestReport:
    """Ingest a MovieLens CSV release (``movies.csv``, ``ratings.csv``, optional ``tags.csv``).

    Item text reads like "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun.":
    genres split on "|" ("(no genres listed)" means none), then up to ten distinct lower-cased
    tags, most frequent first. Ratings below ``min_rating`` are left out; the rest become
    ``event="rating"`` with ``weight`` = the rating. Raises :class:`IngestError` as
    :func:`retrieval.catalog.ingest_table` does; nothing is written then.
    """
    src_dir = Path(src_dir)
    movies_path = src_dir / "movies.csv"
    ratings_path = src_dir / "ratings.csv"
    tags_path = src_dir / "tags.csv"

    movies = read_table(movies_path, "csv", string_cols=["movieId", "title", "genres"])
    for column in ("movieId", "title", "genres"):
        require_column(movies, movies_path, column)
    movie_ids = normalise_ids(movies["movieId"], movies_path, "movieId")
    check_unique(movie_ids, movies_path, "movieId")
    tags_by_movie = _movielens_tags(tags_path) if tags_path.exists() else {}

    titles = clean_strings(movies["title"])
    genres_col = movies["genres"].to_pylist()
    texts: list[str] = []
    categories: list[list[str]] = []
    for movie_id, title, genres in zip(
        movie_ids.to_pylist(), titles.to_pylist(), genres_col, strict=True
    ):
        genre_list = split_categories(genres, "|")
        genre_list = [g for g in genre_list if g != _MOVIELENS_NO_GENRES]
        categories.append(genre_list)
        texts.append(_movielens_text(title, genre_list, tags_by_movie.get(movie_id, [])))
    items = pa.Table.from_arrays(
        [
            movie_ids,
            titles,
            pa.array(texts, pa.string()),
            pa.array(categories, pa.list_(pa.string())),
        ],
        schema=CATALOG_SCHEMA,
    )

    ratings = read_table(ratings_path, "csv", string_cols=["userId", "movieId"])
    events = build_interactions(
        ratings,
        ratings_path,
        user_col="userId",
        item_col="movieId",
        ts_col="timestamp",
        event_col=None,
        weight_col="rating",
        default_event="rating",
    )
    events, dropped = check_known_items(
        events, items["item_id"], ratings_path, "movieId", drop_unknown=drop_unknown
    )
    if min_rating > 0:
        keep = pc.greater_equal(events["weight"], pa.scalar(min_rating, pa.float32()))
        events = events.filter(keep)
    return write_dataset(out_dir, items, events, dropped=dropped)


def _movielens_tags(path: Path) -> dict[str, list[str]]:
    """Per movie id: distinct lower-cased tags, most frequent first (ties alphabetical)."""
    tags = read_table(path, "csv", string_cols=["movieId", "tag", "userId"])
    movie_ids = normalise_ids(require_column(tags, path, "movieId"), path, "movieId")
    words = pc.utf8_lower(clean_strings(as_text(require_column(tags, path, "tag"), path, "tag")))
    counts: dict[str, Counter[str]] = {}
    for movie_id, word in zip(movie_ids.to_pylist(), words.to_pylist(), strict=True):
        if word:
            counts.setdefault(movie_id, Counter())[word] += 1
    return {
        movie_id: [w for w, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))][
            :_MOVIELENS_MAX_TAGS
        ]
        for movie_id, c in counts.items()
    }


def _movielens_text(title: str, genres: list[str], tags: list[str]) -> str:
    parts = [title.rstrip(".")] if title else []
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if tags:
        parts.append("Tags: " + ", ".join(tags))
    return ". ".join(parts) + "." if parts else ""
