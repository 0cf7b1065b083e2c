"""`llmrec build`: encode a catalog and write its FAISS shards and collaborative models."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from retrieval.collab import AlsModel, ItemKNN
from retrieval.config import AppConfig, IndexBuildConfig, resolve_path
from retrieval.ease import EaseModel
from retrieval.encoder import Encoder
from retrieval.injection import describe_flagged, flagged_items
from retrieval.sequential import SequentialModel
from retrieval.shards import Manifest, build_shards

__all__ = [
    "ALS_NAME",
    "CF_NAME",
    "EASE_NAME",
    "SEQUENTIAL_NAME",
    "Collaborative",
    "build_from_config",
    "describe_build",
    "build_index",
    "fit_collaborative",
    "item_texts",
    "load_als",
    "load_cf",
    "load_ease",
    "load_sequential",
    "refit_collaborative",
    "prepare_demo",
]

log = logging.getLogger(__name__)

CF_NAME = "cf.npz"
ALS_NAME = "als.npz"
EASE_NAME = "ease.npz"
EASE_MAX_ITEMS = 10_000
"""EASE models the catalog's most active items only: its weights are dense, 4 bytes per
pair (10k items: 400 MB in each router replica)."""
SEQUENTIAL_NAME = "sequential.npz"
SEQUENTIAL_MAX_ITEMS = 200_000
"""Above this many items no sequential model is fit: the router scores the whole catalog
with it on every request (a few ms at 200k items)."""


def item_texts(titles: list[str], texts: list[str]) -> list[str]:
    """What the encoder sees for an item: its title, then its text unless that repeats it."""
    return [
        t if (x or "").startswith(t) else f"{t}. {x}" for t, x in zip(titles, texts, strict=True)
    ]


def build_index(
    data_dir: Path,
    encoder: Encoder,
    *,
    n_shards: int = 4,
    batch_size: int = 64,
    progress: bool = True,
    index: IndexBuildConfig | None = None,
    sequential_budget_s: float = 0.0,
) -> Manifest:
    """Encode `data_dir/catalog.parquet` in batches and write `data_dir/index/`.

    `index` picks the shard index type and its build params (default: `auto`,
    exact up to 100k items per shard). A rebuild starts from the catalog file:
    items changed through the API since the last build are not in it.

    Writes the shards (atomically, see `build_shards`) and, when
    `interactions.parquet` exists, the item-item model `index/cf.npz`, the
    ALS model `index/als.npz`, the EASE model `index/ease.npz` and, given a
    training budget, the sequential model `index/sequential.npz` (see
    `fit_collaborative`).
    """
    data_dir = Path(data_dir)
    catalog = pq.read_table(data_dir / "catalog.parquet")
    texts = item_texts(catalog["title"].to_pylist(), catalog["text"].to_pylist())
    chunks = []
    with tqdm(total=len(texts), desc="encoding catalog", unit="item", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            chunks.append(encoder.encode(batch))
            bar.update(len(batch))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, encoder.dim), np.float32)
    flagged = flagged_items(zip(catalog["item_id"].to_pylist(), texts, strict=True))
    if flagged:
        log.warning(describe_flagged(flagged))
    manifest = build_shards(
        catalog,
        vectors,
        data_dir / "index",
        n_shards=n_shards,
        encoder_id=encoder.model_id,
        index=index or IndexBuildConfig(),
        progress=progress,
    )
    if (data_dir / "interactions.parquet").exists():
        refit_collaborative(
            data_dir,
            catalog["item_id"].to_pylist(),
            sequential_budget_s=sequential_budget_s,
            progress=progress,
        )
    return manifest


def refit_collaborative(
    data_dir: Path, item_ids: list[str], *, sequential_budget_s: float = 0.0, progress: bool = True
) -> None:
    """Fit item-kNN, ALS, EASE and the sequential model on `data_dir/interactions.parquet`
    over `item_ids` and write them to `data_dir/index/` (`llmrec build`, and `--incremental`
    after a fold)."""
    data_dir = Path(data_dir)
    path = data_dir / "interactions.parquet"
    columns = [c for c in ("user_id", "item_id", "ts") if c in pq.read_schema(path).names]
    interactions = pq.read_table(path, columns=columns)
    fit_collaborative(
        interactions, item_ids, sequential_budget_s=sequential_budget_s, progress=progress
    ).save(data_dir / "index")


class Collaborative(NamedTuple):
    """The models fit on the interaction log: item-kNN (with popularity), ALS, EASE and,
    when it was given training time, the sequential model."""

    cf: ItemKNN
    als: AlsModel
    ease: EaseModel
    sequential: SequentialModel | None = None

    def save(self, index_dir: Path) -> None:
        """Write each model beside the shards (`CF_NAME`, `ALS_NAME`, `EASE_NAME`,
        `SEQUENTIAL_NAME`), each through a temporary file and a rename; a sequential model
        left by an earlier build goes when this one has none."""
        index_dir = Path(index_dir)
        models = [(CF_NAME, self.cf), (ALS_NAME, self.als), (EASE_NAME, self.ease)]
        if self.sequential is not None:
            models.append((SEQUENTIAL_NAME, self.sequential))
        else:
            (index_dir / SEQUENTIAL_NAME).unlink(missing_ok=True)
        for name, model in models:
            tmp = index_dir / f".{name}.tmp.npz"
            model.save(tmp)
            os.replace(tmp, index_dir / name)


def fit_collaborative(
    interactions: pa.Table,
    item_ids: list[str],
    *,
    sequential_budget_s: float = 0.0,
    progress: bool = False,
) -> Collaborative:
    """Item-kNN, ALS and EASE fit on an interactions table (user_id, item_id, and `ts` for
    the order the sequential model learns), and the sequential model trained for
    `sequential_budget_s` seconds (none at 0, or above `SEQUENTIAL_MAX_ITEMS` items).

    The one recipe shared by `llmrec build` and `llmrec eval`, so an offline
    evaluation measures the models the service loads.
    """
    sequential = None
    if sequential_budget_s > 0 and len(item_ids) <= SEQUENTIAL_MAX_ITEMS:
        sequential = SequentialModel.fit(
            interactions, item_ids, time_budget_s=sequential_budget_s, progress=progress
        )
    elif sequential_budget_s > 0:
        log.info("no sequential model: %d items is above %d", len(item_ids), SEQUENTIAL_MAX_ITEMS)
    return Collaborative(
        ItemKNN.fit(interactions, item_ids),
        AlsModel.fit(interactions, item_ids),
        EaseModel.fit(interactions, item_ids, max_items=EASE_MAX_ITEMS),
        sequential,
    )


def load_cf(index_dir: Path) -> ItemKNN | None:
    """The collaborative model beside the shards, or None when the build had no interactions."""
    path = Path(index_dir) / CF_NAME
    return ItemKNN.load(path) if path.exists() else None


def load_als(index_dir: Path) -> AlsModel | None:
    """The ALS model beside the shards, or None when the build had no interactions."""
    path = Path(index_dir) / ALS_NAME
    return AlsModel.load(path) if path.exists() else None


def load_ease(index_dir: Path) -> EaseModel | None:
    """The EASE model beside the shards, or None when the build had no interactions (or
    predates EASE: `llmrec build` again to add it)."""
    path = Path(index_dir) / EASE_NAME
    return EaseModel.load(path) if path.exists() else None


def load_sequential(index_dir: Path) -> SequentialModel | None:
    """The sequential model beside the shards, or None when the build fit none."""
    path = Path(index_dir) / SEQUENTIAL_NAME
    return SequentialModel.load(path) if path.exists() else None


def build_from_config(cfg: AppConfig, n_shards: int, index_type: str | None = None) -> Manifest:
    """`llmrec build`: the index of `cfg`'s data folder, with its encoder and index settings;
    `index_type` overrides `retriever.index.type`."""
    from retrieval.encoder import SentenceEncoder
    from retrieval.models import resolve_encoder

    enc = cfg.encoder
    encoder = SentenceEncoder(
        resolve_encoder(enc.model),
        model_id=enc.model,
        device=enc.device,
        max_seq_length=enc.max_seq_length,
        batch_size=enc.build_batch_size,
    )
    index = cfg.retriever.index
    return build_index(
        cfg.data_path,
        encoder,
        n_shards=n_shards,
        batch_size=enc.build_batch_size,
        index=index.model_copy(update={"type": index_type or index.type}),
        sequential_budget_s=cfg.router.sequential_budget_s,
    )


def prepare_demo(cfg: AppConfig, n_shards: int = 4, log=log.info) -> None:
    """Models, demo data and index of `cfg`'s data folder, each made only when missing."""
    from retrieval.demo_data import make_demo_dataset
    from retrieval.models import prepare_models

    prepare_models(resolve_path(cfg.models_dir))
    if not (cfg.data_path / "catalog.parquet").exists():
        report = make_demo_dataset(cfg.data_path)
        log(f"demo data: {report.items} items, {report.users} users → {cfg.data_path}")
    if not (cfg.index_path / "manifest.json").exists():
        log(describe_build(build_from_config(cfg, n_shards), cfg.index_path))


def describe_build(manifest: Manifest, index_dir: Path) -> str:
    """One line on a built index: shards, type, params, items, dimension and where."""
    params = {k: v for k, v in manifest.index_params.items() if k != "factory"}
    return (
        f"built {manifest.n_shards} {manifest.index_type} shards {params or ''}, "
        f"{manifest.items} items, dim {manifest.dim} → {index_dir}"
    )
