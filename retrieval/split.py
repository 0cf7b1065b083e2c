"""Leave-last-out splits of an interaction log, for offline evaluation and tuning.

Per user, interactions are ordered by time (ties keep log order); the last one
is the target, the ones before it the history. The held-out rows are removed
from the training log, so a model fit on `Split.train` never sees a target.
Applying the split again to `Split.train` gives the validation split (target:
the second-to-last interaction) used to tune fusion and rerank weights.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval.catalog import CATALOG_FILE, read_catalog, write_dataset

__all__ = ["HELDOUT_FILE", "Split", "leave_last_out", "write_split"]

HELDOUT_FILE = "heldout.json"
"""Written beside a train-only dataset by `write_split`: which rows were held out."""


@dataclass(frozen=True)
class Split:
    """A training log plus, per evaluated user, the history before the target and the target.

    `histories[u]` lists item ids oldest first and is exactly the user's rows in
    `train`. Users with a single interaction, or whose last item repeats an
    earlier one (it could never be recommended with seen items excluded), are
    not evaluated and keep all their rows in `train`; `skipped` counts them.
    """

    train: pa.Table
    histories: dict[str, list[str]]
    targets: dict[str, str]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        """Evaluated users, in a stable order."""
        return list(self.targets)


def leave_last_out(log: pa.Table, catalog_ids: Iterable[str] | None = None) -> Split:
    """Hold out each user's last interaction (by `ts`, ties by row order).

    `log` needs `user_id`, `item_id` and `ts` columns. When `catalog_ids` is
    given, rows of items outside it are dropped first.
    """
    if catalog_ids is not None:
        known = pa.array(sorted(set(catalog_ids)), pa.string())
        log = log.filter(pc.is_in(log["item_id"], value_set=known))
    n = len(log)
    if n == 0:
        return Split(train=log, histories={}, targets={}, skipped={"single": 0, "repeat": 0})
    user_codes = log["user_id"].combine_chunks().dictionary_encode()
    u = user_codes.indices.to_numpy(zero_copy_only=False)
    ts = log["ts"].to_numpy()
    order = np.lexsort((np.arange(n), ts, u))
    sorted_u = u[order]
    is_last = np.ones(n, dtype=bool)
    is_last[:-1] = sorted_u[:-1] != sorted_u[1:]
    is_first = np.ones(n, dtype=bool)
    is_first[1:] = sorted_u[1:] != sorted_u[:-1]
    items = log["item_id"].to_pylist()
    users = user_codes.dictionary.to_pylist()

    histories: dict[str, list[str]] = {}
    targets: dict[str, str] = {}
    held = np.zeros(n, dtype=bool)
    single = repeat = 0
    starts = np.flatnonzero(is_first)
    ends = np.flatnonzero(is_last)
    for start, end in zip(starts, ends, strict=True):
        if end == start:
            single += 1
            continue
        rows = order[start : end + 1]
        history = [items[r] for r in rows[:-1]]
        target = items[rows[-1]]
        if target in history:
            repeat += 1
            continue
        user = users[sorted_u[start]]
        histories[user] = history
        targets[user] = target
        held[rows[-1]] = True
    train = log.filter(pa.array(~held))
    return Split(train, histories, targets, {"single": single, "repeat": repeat})


def write_split(data_dir: Path, out_dir: Path, split: Split) -> Path:
    """Write a dataset folder whose interactions are `split.train` only.

    The catalog is copied from `data_dir`; `heldout.json` records the held-out
    `{user: item}` targets. Build and serve this folder (`llmrec build --data
    OUT`, `llmrec up --data OUT`) so a served evaluation cannot see the targets.
    """
    catalog = read_catalog(Path(data_dir) / CATALOG_FILE)
    heldout = {"split": "leave-last-out", "targets": split.targets, "skipped": split.skipped}
    write_dataset(
        Path(out_dir),
        catalog,
        split.train,
        extra_files={HELDOUT_FILE: json.dumps(heldout, indent=1).encode()},
    )
    return Path(out_dir)
