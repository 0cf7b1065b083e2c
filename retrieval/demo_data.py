"""Seeded synthetic demo dataset: a film/book/product-like catalog and a realistic click log.

The catalog has twelve categories with four sub-themes each; every sub-theme has its own
vocabulary (who the story is about, where it happens, what it is about) so a sentence encoder
places items of a sub-theme near each other; the phrases live in the package data file
``demo_vocabulary.yaml`` next to this module. Titles carry a release year, and a title used
twice is a remake from another year. Some works are series ("The Silent Orbit (1994)",
"The Silent Orbit II (1997)", ...) whose parts share their (category, sub-theme). Item
popularity is Zipf-like, and a share of the catalog is cold: no one has clicked it yet.

The log models what real ones (MovieLens and the like) show:

- **Power-law activity.** Clicks per user follow a log-logistic law truncated to the
  ``interactions_per_user`` bounds: a median of a couple of dozen, a few users with only one to
  three clicks, and a long tail of heavy users with thousands.
- **Taste streaks.** Each user has one to three latent (category, sub-theme) tastes and clicks in
  sittings; a sitting stays in one taste (its sub-theme, then its category once that is used
  up), with about 15% popular items from anywhere mixed in.
- **Series in order.** A user who reaches any part of a series starts at the first part they
  have not seen and often goes straight on to the next.
- **Bulk sessions.** Timestamps are non-decreasing per user; sittings are about a day apart,
  clicks inside one minutes apart, and a share of them fall in the same second as the click
  before (a bulk rating session). A sequel always comes strictly after its predecessor.

``demo_meta.json`` records every user's tastes, every item's (category, sub-theme) pairs, the
series (item ids in part order) and the cold items, so relevance can be measured.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from retrieval.catalog import CATALOG_SCHEMA, INTERACTIONS_SCHEMA, IngestReport, write_dataset

__all__ = ["DEMO_CATEGORIES", "DEMO_META_FILE", "make_demo_dataset"]

DEMO_META_FILE = "demo_meta.json"
_VOCABULARY_FILE = "demo_vocabulary.yaml"
"""Package data file holding every category's title and text vocabulary."""
_SUBTHEMES_PER_CATEGORY = 4
"""Sub-themes of every category; the generator draws them by index."""

_DEFAULT_N_ITEMS = 3000
_DEFAULT_N_USERS = 5000
"""Enough users for `llmrec eval`'s paired intervals (about ±0.005 NDCG@10, ±0.009 Recall@10)
to tell sources apart."""
_DEFAULT_MAX_PER_USER = 2600
"""Upper activity bound when ``interactions_per_user`` is not given (capped by the warm catalog)."""
_ACTIVITY_SCALE = 22.0
"""Median of the activity law (clicks above the lower bound) before truncation."""
_ACTIVITY_TAIL = 1.05
"""Power-law exponent of the activity law at both ends; smaller means a heavier tail."""
_TASTE_SHARE = 0.85
_SECOND_CATEGORY_SHARE = 0.15
_ZIPF_EXPONENT = 1.0
_TASTE_ZIPF_EXPONENT = 0.8
"""Zipf exponent of how many users hold each (category, sub-theme) taste; some genres draw more."""
_COLD_SHARE = 0.07
"""Share of the catalog no one clicks (fewer when a history of the upper bound needs them)."""
_SERIES_START_SHARE = 0.035
"""Chance that a new title starts a series rather than standing alone."""
_MAX_SERIES_PARTS = 4
_SERIES_CONTINUE = 0.7
"""Chance that a user goes straight on to the next part of a series."""
_MEAN_SITTING = 8.0
"""Mean number of clicks drawn for one sitting in one taste."""
_TIE_SHARE = 0.15
"""Chance that a click inside a sitting is logged in the same second as the one before."""
_START_TS = 1_700_000_000
_MINUTE = 60
_DAY = 86_400
_RELEASE_YEARS = (1950, 2013)
"""Range of a work's first release year; each later part comes one to four years after."""


@dataclass(frozen=True)
class _SubTheme:
    name: str
    subjects: tuple[str, ...]
    settings: tuple[str, ...]
    plots: tuple[str, ...]
    hook: str  # verb phrase used when this sub-theme flavours an item of another category


@dataclass(frozen=True)
class _Category:
    name: str
    forms: tuple[str, ...]
    adjectives: tuple[str, ...]
    title_adjectives: tuple[str, ...]
    title_nouns: tuple[str, ...]
    subthemes: tuple[_SubTheme, ...]


@functools.cache
def _vocabulary() -> tuple[_Category, ...]:
    """The catalog vocabulary, read from the packaged ``demo_vocabulary.yaml`` once per process.

    Raises ``ValueError`` when a category does not have exactly
    ``_SUBTHEMES_PER_CATEGORY`` sub-themes, since the generator draws sub-themes by index.
    """
    text = resources.files("retrieval").joinpath(_VOCABULARY_FILE).read_text(encoding="utf-8")
    categories = tuple(_category(raw) for raw in yaml.safe_load(text)["categories"])
    for category in categories:
        if len(category.subthemes) != _SUBTHEMES_PER_CATEGORY:
            raise ValueError(
                f"{_VOCABULARY_FILE}: category {category.name!r} has "
                f"{len(category.subthemes)} sub-themes, expected {_SUBTHEMES_PER_CATEGORY}"
            )
    return categories


def _category(raw: dict[str, Any]) -> _Category:
    """One category entry of the vocabulary file, its phrase lists as tuples."""
    subthemes = tuple(
        _SubTheme(
            sub["name"],
            tuple(sub["subjects"]),
            tuple(sub["settings"]),
            tuple(sub["plots"]),
            sub["hook"],
        )
        for sub in raw["subthemes"]
    )
    return _Category(
        raw["name"],
        tuple(raw["forms"]),
        tuple(raw["adjectives"]),
        tuple(raw["title_adjectives"]),
        tuple(raw["title_nouns"]),
        subthemes,
    )


DEMO_CATEGORIES: dict[str, tuple[str, ...]] = {
    c.name: tuple(s.name for s in c.subthemes) for c in _vocabulary()
}
"""Category name → its sub-theme names, as used in ``demo_meta.json``."""


@dataclass(frozen=True)
class _Items:
    """The generated catalog, indexed by item position (item id minus one)."""

    titles: list[str]
    texts: list[str]
    categories: list[list[str]]
    pairs: list[list[tuple[int, int]]]
    """(category, sub-theme) index pairs; the first is the item's main theme."""
    series: list[list[int]]
    """Item positions of every series, in part order."""


@dataclass(frozen=True)
class _ClickModel:
    """What users' clicks are drawn from: popularity, taste pools and series membership."""

    popularity: np.ndarray
    """Zipf-like weight per item; 0 for cold items."""
    warm: np.ndarray
    """Positions of the items that can be clicked."""
    pair_pools: dict[tuple[int, int], np.ndarray]
    category_pools: dict[int, np.ndarray]
    series_of: np.ndarray
    """Series index per item, -1 for a standalone title."""
    series: list[list[int]]


def make_demo_dataset(
    out_dir: Path,
    *,
    n_items: int = _DEFAULT_N_ITEMS,
    n_users: int = _DEFAULT_N_USERS,
    seed: int = 0,
    interactions_per_user: tuple[int, int] | None = None,
) -> IngestReport:
    """Write a deterministic synthetic dataset (catalog, interactions, ``demo_meta.json``).

    The same arguments give the same tables. Item ids are "1".."n_items", user ids
    "1".."n_users"; every user has distinct clicks, their number following the truncated
    power law of the module docstring between the inclusive ``interactions_per_user`` bounds
    (default: 1 to 2,600, capped by the warm catalog), with non-decreasing timestamps. Files are
    written atomically through :func:`retrieval.catalog.write_dataset`. Raises ``ValueError``
    for counts that cannot be satisfied.
    """
    if n_items < 1 or n_users < 1:
        raise ValueError("n_items and n_users must be at least 1")
    low, high = _activity_bounds(n_items, interactions_per_user)
    rng = np.random.default_rng(seed)
    items = _make_items(rng, n_items)
    n_cold = min(round(_COLD_SHARE * n_items), n_items - high)
    model = _click_model(rng, items, n_cold)
    counts = _activity_counts(rng, n_users, low, high)
    interactions, tastes = _make_interactions(rng, counts, model)
    meta = {
        "seed": seed,
        "n_items": n_items,
        "n_users": n_users,
        "n_interactions": interactions.num_rows,
        "interactions_per_user": [low, high],
        "taste_share": _TASTE_SHARE,
        "categories": {name: list(subs) for name, subs in DEMO_CATEGORIES.items()},
        "users": tastes,
        "items": {
            str(i + 1): [_pair_meta(pair) for pair in item_pairs]
            for i, item_pairs in enumerate(items.pairs)
        },
        "series": [[str(i + 1) for i in parts] for parts in items.series],
        "cold_items": [str(i + 1) for i in np.flatnonzero(model.popularity == 0)],
    }
    content = json.dumps(meta, indent=1, ensure_ascii=False).encode("utf-8")
    return write_dataset(
        out_dir, _catalog_table(items), interactions, extra_files={DEMO_META_FILE: content}
    )


def _activity_bounds(n_items: int, bounds: tuple[int, int] | None) -> tuple[int, int]:
    """The (low, high) clicks-per-user bounds; the default leaves room for the cold items."""
    if bounds is None:
        return 1, min(_DEFAULT_MAX_PER_USER, n_items - round(_COLD_SHARE * n_items))
    low, high = bounds
    if not 1 <= low <= high <= n_items:
        raise ValueError(
            f"interactions_per_user must satisfy 1 <= low <= high <= n_items, got {low, high}"
        )
    return low, high


def _activity_counts(rng: np.random.Generator, n_users: int, low: int, high: int) -> np.ndarray:
    """Clicks per user: a log-logistic law truncated to ``[low, high]``, in random user order.

    Users take the law's quantiles at evenly spaced levels, so even a few hundred users show
    the heavy tail the law promises rather than whatever one draw of it gives.
    """
    span = high - low + 1
    top = 1.0 / (1.0 + (span / _ACTIVITY_SCALE) ** -_ACTIVITY_TAIL)
    levels = (np.arange(n_users) + 0.5) / n_users * top
    extra = _ACTIVITY_SCALE * (levels / (1.0 - levels)) ** (1.0 / _ACTIVITY_TAIL)
    counts = low + np.minimum(np.floor(extra), span - 1).astype(np.int64)
    return rng.permutation(counts)


def _make_items(rng: np.random.Generator, n_items: int) -> _Items:
    """Titles, texts and themes of ``n_items`` items; series parts get ascending positions."""
    vocabulary = _vocabulary()
    titles = [""] * n_items
    texts = [""] * n_items
    categories: list[list[str]] = [[] for _ in range(n_items)]
    pairs_of: list[list[tuple[int, int]]] = [[] for _ in range(n_items)]
    series: list[list[int]] = []
    used: set[str] = set()
    slots = rng.permutation(n_items)
    start = 0
    for length in _plan_works(rng, n_items):
        positions = sorted(int(p) for p in slots[start : start + length])
        start += length
        pairs = _draw_pairs(rng)
        work_titles = _work_titles(rng, vocabulary[pairs[0][0]], length, used)
        for part, position in enumerate(positions):
            titles[position] = work_titles[part]
            texts[position] = _make_text(rng, pairs)
            if part:
                texts[position] += f" The sequel to {work_titles[part - 1]}."
            categories[position] = [vocabulary[c].name for c, _ in pairs]
            pairs_of[position] = pairs
        if length > 1:
            series.append(positions)
    return _Items(titles, texts, categories, pairs_of, series)


def _plan_works(rng: np.random.Generator, n_items: int) -> list[int]:
    """Number of parts of each work: mostly 1, sometimes a series of 2..4; sums to n_items."""
    lengths: list[int] = []
    remaining = n_items
    while remaining:
        length = 1
        if rng.random() < _SERIES_START_SHARE:
            length = int(rng.integers(2, _MAX_SERIES_PARTS + 1))
        lengths.append(min(length, remaining))
        remaining -= lengths[-1]
    return lengths


def _draw_pairs(rng: np.random.Generator) -> list[tuple[int, int]]:
    """A main (category, sub-theme) pair and, for some items, a second one of another category."""
    n_categories = len(_vocabulary())
    c = int(rng.integers(n_categories))
    pairs = [(c, int(rng.integers(_SUBTHEMES_PER_CATEGORY)))]
    if rng.random() < _SECOND_CATEGORY_SHARE:
        c2 = int((c + rng.integers(1, n_categories)) % n_categories)
        pairs.append((c2, int(rng.integers(_SUBTHEMES_PER_CATEGORY))))
    return pairs


def _work_titles(
    rng: np.random.Generator, category: _Category, n_parts: int, used: set[str]
) -> list[str]:
    """Titles of a work's parts, "Stem (1994)", "Stem II (1997)", ...; none already in ``used``.

    The new titles are added to ``used``.
    """
    while True:
        stem = _make_title(rng, category)
        year = int(rng.integers(*_RELEASE_YEARS))
        titles = []
        for part in range(1, n_parts + 1):
            titles.append(f"{stem} ({year})" if part == 1 else f"{stem} {_roman(part)} ({year})")
            year += int(rng.integers(1, 5))
        if used.isdisjoint(titles):
            used.update(titles)
            return titles


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _make_title(rng: np.random.Generator, category: _Category) -> str:
    adjective = _pick(rng, category.title_adjectives)
    noun = _pick(rng, category.title_nouns)
    pattern = int(rng.integers(3))
    if pattern == 0:
        return f"The {adjective} {noun}"
    if pattern == 1:
        return f"{adjective} {noun}"
    other = _pick(rng, tuple(n for n in category.title_nouns if n != noun))
    return f"{noun} of the {adjective} {other}"


def _make_text(rng: np.random.Generator, pairs: list[tuple[int, int]]) -> str:
    vocabulary = _vocabulary()
    c, s = pairs[0]
    category = vocabulary[c]
    theme = category.subthemes[s]
    adjective = _pick(rng, category.adjectives)
    article = "An" if adjective[0] in "aeiou" else "A"
    text = (
        f"{article} {adjective} {_pick(rng, category.forms)} about {_pick(rng, theme.subjects)} "
        f"{_pick(rng, theme.settings)}, {_pick(rng, theme.plots)}."
    )
    for c2, s2 in pairs[1:]:
        text += f" It also {vocabulary[c2].subthemes[s2].hook}."
    return text


def _roman(n: int) -> str:
    numerals = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
    out = ""
    for value, numeral in numerals:
        while n >= value:
            out += numeral
            n -= value
    return out


def _pair_meta(pair: tuple[int, int]) -> dict[str, str]:
    category = _vocabulary()[pair[0]]
    return {"category": category.name, "subtheme": category.subthemes[pair[1]].name}


def _click_model(rng: np.random.Generator, items: _Items, n_cold: int) -> _ClickModel:
    """Zipf popularity over a random ranking, ``n_cold`` standalone items made cold, and pools."""
    n_items = len(items.titles)
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** _ZIPF_EXPONENT
    series_of = np.full(n_items, -1, dtype=np.int64)
    for index, parts in enumerate(items.series):
        series_of[parts] = index
    standalone = np.flatnonzero(series_of < 0)
    cold = rng.choice(standalone, size=min(n_cold, standalone.size), replace=False)
    popularity[cold] = 0.0
    warm = popularity > 0
    n_categories = len(_vocabulary())
    pair_pools = _taste_pools(items.pairs, n_categories, warm)
    category_pools = {
        c: np.unique(np.concatenate([pair_pools[(c, s)] for s in range(_SUBTHEMES_PER_CATEGORY)]))
        for c in range(n_categories)
    }
    return _ClickModel(
        popularity, np.flatnonzero(warm), pair_pools, category_pools, series_of, items.series
    )


def _taste_pools(
    item_pairs: list[list[tuple[int, int]]], n_categories: int, warm: np.ndarray
) -> dict[tuple[int, int], np.ndarray]:
    """(category, sub-theme) → positions of the warm items carrying that pair."""
    pools: dict[tuple[int, int], list[int]] = {
        (c, s): [] for c in range(n_categories) for s in range(_SUBTHEMES_PER_CATEGORY)
    }
    for index, pairs in enumerate(item_pairs):
        if warm[index]:
            for pair in pairs:
                pools[pair].append(index)
    return {pair: np.asarray(members, dtype=np.int64) for pair, members in pools.items()}


def _make_interactions(
    rng: np.random.Generator, counts: np.ndarray, model: _ClickModel
) -> tuple[pa.Table, dict[str, list[dict[str, Any]]]]:
    """Every user's tastes and click history, as the interactions table and the tastes meta."""
    all_pairs = [(c, s) for c in range(len(_vocabulary())) for s in range(_SUBTHEMES_PER_CATEGORY)]
    appeal = 1.0 / (rng.permutation(len(all_pairs)) + 1.0) ** _TASTE_ZIPF_EXPONENT
    users: list[str] = []
    item_rows: list[np.ndarray] = []
    ts_rows: list[np.ndarray] = []
    tastes_meta: dict[str, list[dict[str, Any]]] = {}
    for user, n in enumerate(counts, 1):
        n_tastes = int(rng.integers(1, 4))
        chosen = rng.choice(len(all_pairs), size=n_tastes, replace=False, p=appeal / appeal.sum())
        weights = rng.dirichlet(np.ones(n_tastes))
        tastes = [all_pairs[int(i)] for i in chosen]
        tastes_meta[str(user)] = [
            {**_pair_meta(pair), "weight": round(float(w), 4)}
            for pair, w in zip(tastes, weights, strict=True)
        ]
        picked, new_sitting, sequel = _user_history(rng, int(n), tastes, weights, model)
        users.extend([str(user)] * picked.size)
        item_rows.append(picked)
        ts_rows.append(_timestamps(rng, new_sitting, sequel))
    n_rows = len(users)
    table = pa.Table.from_arrays(
        [
            pa.array(users, pa.string()),
            pa.array([str(i + 1) for i in np.concatenate(item_rows)], pa.string()),
            pa.array(np.concatenate(ts_rows).astype(np.int64)),
            pa.array(["click"] * n_rows, pa.string()),
            pa.array(np.ones(n_rows, dtype=np.float32)),
        ],
        schema=INTERACTIONS_SCHEMA,
    )
    return table, tastes_meta


def _user_history(
    rng: np.random.Generator,
    n: int,
    tastes: list[tuple[int, int]],
    weights: np.ndarray,
    model: _ClickModel,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` distinct items in click order, flagging sitting starts and parts after the first.

    Sittings pick a taste by its weight; the user goes through the sitting's candidates, and
    one that belongs to a series is replaced by the first part they have not seen, so the parts
    of a series they click are always a prefix, clicked in order.
    """
    taken = np.zeros(model.popularity.size, dtype=bool)
    progress: dict[int, int] = {}
    items: list[int] = []
    new_sitting: list[bool] = []
    sequel: list[bool] = []
    while len(items) < n:
        taste = tastes[int(rng.choice(len(tastes), p=weights))]
        length = min(int(rng.geometric(1.0 / _MEAN_SITTING)), n - len(items))
        candidates = _sitting_candidates(rng, taste, length, taken, model)
        clicked, later_part = _sitting_clicks(rng, candidates, taken, progress, model)
        keep = min(len(clicked), n - len(items))
        items += clicked[:keep]
        sequel += later_part[:keep]
        new_sitting += [True] + [False] * (keep - 1)
    return np.asarray(items), np.asarray(new_sitting), np.asarray(sequel)


def _sitting_candidates(
    rng: np.random.Generator,
    taste: tuple[int, int],
    length: int,
    taken: np.ndarray,
    model: _ClickModel,
) -> np.ndarray:
    """``length`` distinct unseen items: ~85% from the taste, the rest popular ones from anywhere.

    The taste's sub-theme comes first; once the user has seen all of it, its category, and once
    that is used up too, the whole catalog. Never empty while an unseen warm item is left.
    """
    blocked = taken.copy()
    n_taste = int(rng.binomial(length, _TASTE_SHARE))
    drawn: list[np.ndarray] = []
    for pool, quota in (
        (model.pair_pools[taste], n_taste),
        (model.category_pools[taste[0]], n_taste),
        (model.warm, length),
    ):
        # Each wider pool tops up what the narrower ones before it could not fill.
        picked = _draw(rng, pool, blocked, model.popularity, quota - sum(d.size for d in drawn))
        blocked[picked] = True
        drawn.append(picked)
    return rng.permutation(np.concatenate(drawn))


def _draw(
    rng: np.random.Generator, pool: np.ndarray, blocked: np.ndarray, popularity: np.ndarray, k: int
) -> np.ndarray:
    """Up to ``k`` distinct items of ``pool`` that are not ``blocked``, weighted by popularity."""
    free = pool[~blocked[pool]]
    k = min(k, free.size)
    if k <= 0:
        return free[:0]
    weights = popularity[free]
    return rng.choice(free, size=k, replace=False, p=weights / weights.sum())


def _sitting_clicks(
    rng: np.random.Generator,
    candidates: np.ndarray,
    taken: np.ndarray,
    progress: dict[int, int],
    model: _ClickModel,
) -> tuple[list[int], list[bool]]:
    """The sitting's clicked items and, per click, whether it is a series part after the first.

    Marks the clicked items in ``taken`` and the parts seen per series in ``progress``.
    """
    clicked: list[int] = []
    later_part: list[bool] = []
    for candidate in candidates:
        if taken[candidate]:
            continue
        index = int(model.series_of[candidate])
        if index < 0:
            taken[candidate] = True
            clicked.append(int(candidate))
            later_part.append(False)
            continue
        parts = model.series[index]
        seen = progress.get(index, 0)
        while True:
            taken[parts[seen]] = True
            clicked.append(parts[seen])
            later_part.append(seen > 0)
            seen += 1
            if seen == len(parts) or rng.random() >= _SERIES_CONTINUE:
                break
        progress[index] = seen
    return clicked, later_part


def _timestamps(
    rng: np.random.Generator, new_sitting: np.ndarray, sequel: np.ndarray
) -> np.ndarray:
    """Non-decreasing click times: about a day between sittings, minutes inside one.

    A click inside a sitting shares the second of the one before with ``_TIE_SHARE`` chance
    (a bulk rating session), except a later series part, which always comes strictly after.
    """
    n = new_sitting.size
    between = np.exp(rng.normal(np.log(_DAY), 1.0, n))
    within = np.exp(rng.normal(np.log(20 * _MINUTE), 1.0, n))
    gaps = np.where(new_sitting, between, within).astype(np.int64) + 1
    gaps[(rng.random(n) < _TIE_SHARE) & ~new_sitting & ~sequel] = 0
    gaps[0] = 0
    return _START_TS + int(rng.integers(0, 90 * _DAY)) + np.cumsum(gaps)


def _catalog_table(items: _Items) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array([str(i) for i in range(1, len(items.titles) + 1)], pa.string()),
            pa.array(items.titles, pa.string()),
            pa.array(items.texts, pa.string()),
            pa.array(items.categories, pa.list_(pa.string())),
        ],
        schema=CATALOG_SCHEMA,
    )
