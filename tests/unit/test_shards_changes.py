"""Live catalog changes on shards: upsert, delete, change-log replay, snapshots, reload."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from cluster.bench.retrieval_core import make_data, synthetic_catalog
from deployments.retriever.core import ShardRetrieverCore
from retrieval.config import IndexBuildConfig, RetrieverConfig
from retrieval.merge import merge_top_k
from retrieval.shards import IndexIntegrityError, Item, Shard, build_shards, load_manifest, shard_of

DIM = 16
N = 1200
SHARDS = 2
SPECS = {
    "flat": IndexBuildConfig(type="flat"),
    "hnsw": IndexBuildConfig(type="hnsw", hnsw_m=8, hnsw_ef_construction=32),
    "ivfsq": IndexBuildConfig(type="ivfsq"),
    "ivfpq-refine": IndexBuildConfig(type="ivfpq", pq_m=4, pq_nbits=4, pq_refine=True),
}
SETTINGS = RetrieverConfig(nprobe=64, ef_search=64, refine_k_factor=16)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def owned_id(prefix: str, shard_no: int, n_shards: int = SHARDS) -> str:
    """The first id `prefix-N` that shard `shard_no` owns."""
    n = 0
    while shard_of(f"{prefix}-{n}", n_shards) != shard_no:
        n += 1
    return f"{prefix}-{n}"


@pytest.fixture(scope="module", params=list(SPECS))
def built_index(request, tmp_path_factory):
    items, _ = make_data(N, 1, DIM, seed=5)
    path = tmp_path_factory.mktemp(request.param) / "index"
    spec = SPECS[request.param]
    build_shards(synthetic_catalog(N), items, path, n_shards=SHARDS, encoder_id="t", index=spec)
    return path


@pytest.fixture
def index(built_index, tmp_path):
    """A fresh copy of the module's index of each type (tests change it)."""
    return Path(shutil.copytree(built_index, tmp_path / "index"))


def load(path, shard_no=0, **kw):
    return Shard.load(path, shard_no, settings=SETTINGS, **kw)


def test_upsert_is_found_by_the_next_search_and_after_a_reload(index):
    shard = load(index)
    new_id = owned_id("new", 0)
    v = unit(1)
    shard.upsert([Item(new_id, "Brand new", "text", ["Fresh"])], v[None])
    assert shard.search(v, 1)[0].item_id == new_id
    assert shard.search(v, 3, categories=["Fresh"])[0].item_id == new_id
    again = load(index)
    hit = again.search(v, 1)[0]
    assert (hit.item_id, hit.title, hit.categories) == (new_id, "Brand new", ["Fresh"])
    np.testing.assert_allclose(again.lookup([new_id])[new_id][1], v, rtol=1e-6)


def test_a_failed_log_append_changes_nothing_and_the_shard_reloads(index, monkeypatch):
    import os

    shard = load(index)
    kept, lost = owned_id("kept", 0), owned_id("lost", 0)
    shard.upsert([Item(kept, "Kept")], unit(2)[None])
    real_fsync = os.fsync

    def io_error(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", io_error)
    with pytest.raises(OSError):
        shard.upsert([Item(lost, "Lost")], unit(3)[None])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert lost not in shard.lookup([lost])  # not acknowledged, not applied
    after = owned_id("after", 0)
    shard.upsert([Item(after, "After")], unit(4)[None])
    again = load(index)  # the log has no torn middle line: the shard starts
    assert set(again.lookup([kept, lost, after])) == {kept, after}


def test_replacing_an_item_moves_it_and_keeps_one_copy(index):
    shard = load(index)
    item_id = shard.item_ids[7]
    old_vec = shard.lookup([item_id])[item_id][1]
    new_vec = unit(2)
    size = len(shard)
    shard.upsert([Item(item_id, "Renamed", "", ["c1"])], new_vec[None])
    assert len(shard) == size
    assert shard.search(new_vec, 1)[0].title == "Renamed"
    hits = shard.search(old_vec, 50)
    assert [h.item_id for h in hits].count(item_id) <= 1
    assert all(h.title == "Renamed" for h in hits if h.item_id == item_id)


def test_deleted_items_are_gone_from_search_lookup_and_filters(index):
    shard = load(index)
    victims = shard.item_ids[:5]
    vec = shard.lookup([victims[0]])[victims[0]][1]
    assert shard.delete([*victims, "no-such-item"]) == victims
    assert shard.delete(victims) == []
    assert shard.lookup(victims) == {}
    assert victims[0] not in [h.item_id for h in shard.search(vec, 20)]
    cat = shard.categories[0][0]
    hits = shard.search(vec, 20, categories=[cat])
    assert len(hits) == 20 and not set(victims) & {h.item_id for h in hits}
    assert load(index).lookup(victims) == {}


def test_snapshot_folds_the_log_into_new_files(index):
    shard = load(index, snapshot_every=3)
    ids = [owned_id(f"s{n}", 0) for n in range(3)]
    vecs = np.stack([unit(10 + n) for n in range(3)])
    shard.upsert([Item(i, i, "", []) for i in ids[:2]], vecs[:2])
    assert shard.files.generation == 0
    shard.delete([shard.item_ids[0]])  # third change: snapshot
    manifest = load_manifest(index)
    files = manifest.shards[0]
    assert (files.generation, files.changes_seq, files.deleted) == (1, 3, 1)
    assert (index / "shard-000.changes.jsonl").read_bytes() == b""
    assert not (index / "shard-000.faiss").exists()
    shard.upsert([Item(ids[2], ids[2], "", [])], vecs[2:])
    again = load(index)
    assert again.stats()["delta"] == 1 and again.seq == 4
    for i, v in zip(ids, vecs, strict=True):
        assert again.search(v, 1)[0].item_id == i
    assert manifest.items == N + 1  # two new, one deleted


def test_unterminated_last_line_is_dropped_and_the_rest_replayed(tmp_path):
    path = _flat(tmp_path)
    shard = load(path)
    new_id = owned_id("torn", 0)
    shard.upsert([Item(new_id, "kept", "", [])], unit(3)[None])
    log_path = path / "shard-000.changes.jsonl"
    with log_path.open("ab") as f:
        f.write(b'{"seq": 2, "op": "delete", "item')  # the process died mid-append
    again = load(path)
    assert new_id in again.lookup([new_id]) and again.seq == 1
    assert log_path.read_bytes().endswith(b"\n")
    again.delete([new_id])
    assert load(path).lookup([new_id]) == {}


def test_corrupt_change_log_is_refused_naming_file_and_line(tmp_path):
    path = _flat(tmp_path)
    shard = load(path)
    shard.upsert(
        [Item(owned_id(f"c{n}", 0), "t", "", []) for n in range(2)], np.stack([unit(4), unit(5)])
    )
    log_path = path / "shard-000.changes.jsonl"
    lines = log_path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"title":"t"', '"title":"x"')
    log_path.write_text("".join(lines))
    with pytest.raises(
        IndexIntegrityError, match=r"shard-000\.changes\.jsonl:1: crc .* does not match"
    ):
        load(path)


def test_change_log_vector_of_wrong_dim_or_gap_is_refused(tmp_path):
    from retrieval.changes import Change, ChangeLog

    path = _flat(tmp_path)
    log_path = path / "shard-000.changes.jsonl"
    item_id = owned_id("d", 0)
    ChangeLog(log_path, 8).append(
        [Change(1, "upsert", item_id, Item(item_id, "t"), np.ones(8, np.float32))]
    )
    with pytest.raises(
        IndexIntegrityError, match=r"changes\.jsonl:1: vector of dim 8, the shard has dim 16"
    ):
        load(path)
    log_path.write_bytes(b"")
    ChangeLog(log_path, DIM).append([Change(5, "delete", item_id)])
    with pytest.raises(IndexIntegrityError, match=r"changes 1\.\.4 are missing"):
        load(path)


def test_items_of_another_shard_are_refused(tmp_path):
    shard = load(_flat(tmp_path))
    with pytest.raises(ValueError, match="belongs to another shard"):
        shard.upsert([Item(owned_id("x", 1), "t")], unit(6)[None])
    with pytest.raises(ValueError, match="dim 16"):
        shard.upsert([Item(owned_id("x", 0), "t")], np.ones((1, 4), np.float32))


def test_searches_run_while_items_are_written(tmp_path):
    shard = load(_flat(tmp_path), snapshot_every=40)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        q = unit(7)
        while not stop.is_set():
            try:
                hits = shard.search(q, 10, categories=["c1", "w"])
                assert len({h.item_id for h in hits}) == len(hits) <= 10
            except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(100):
        item_id = owned_id(f"w{n}", 0)
        shard.upsert([Item(item_id, "w", "", ["w"])], unit(100 + n)[None])
        if n % 3 == 0:
            shard.delete([item_id])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert shard.files.generation == (100 + 34) // 40
    assert len(load(_flat_path(tmp_path)).search(unit(7), 200, categories=["w"])) == 66


# ---- the serving core ----------------------------------------------------------------


def test_core_reload_keeps_the_old_index_when_the_new_one_is_bad(tmp_path):
    path = _flat(tmp_path)
    core = ShardRetrieverCore(path, 0, RetrieverConfig())
    core.check_health()
    new_id = owned_id("r", 0)
    core.upsert([Item(new_id, "t")], unit(8)[None])
    assert core.reload()["live"] == len(core.shard)
    assert new_id in core.lookup([new_id])
    raw = json.loads((path / "manifest.json").read_text())
    raw["shards"][0]["index_sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(IndexIntegrityError, match=r"shard-000\.faiss: sha256"):
        core.reload()
    assert core.search(unit(8), 1)[0].item_id == new_id
    core.check_health()


def test_core_applies_search_settings_without_reloading(tmp_path):
    path = _flat(tmp_path)
    core = ShardRetrieverCore(path, 0, RetrieverConfig())
    shard = core.shard
    core.configure(RetrieverConfig(nprobe=3, ef_search=7, snapshot_every=5))
    assert core.shard is shard
    assert (shard.settings.nprobe, shard.settings.ef_search, shard.snapshot_every) == (3, 7, 5)


def test_merged_results_follow_changes_across_shards(tmp_path):
    path = _flat(tmp_path)
    shards = [load(path, s) for s in range(SHARDS)]
    v = unit(9)
    for s in range(SHARDS):
        shards[s].upsert([Item(owned_id("m", s), f"m{s}")], (v + 0.01 * s)[None] / 1.0001)
    top = merge_top_k([s.search(v, 2) for s in shards], 2)
    assert {h.item_id for h in top} == {owned_id("m", 0), owned_id("m", 1)}


def _flat_path(tmp_path):
    return tmp_path / "flat"


def _flat(tmp_path):
    path = _flat_path(tmp_path)
    if not path.exists():
        items, _ = make_data(N, 1, DIM, seed=5)
        build_shards(synthetic_catalog(N), items, path, n_shards=SHARDS, encoder_id="t")
    return path


def test_health_probe_fails_when_search_no_longer_finds_a_stored_item(tmp_path):
    import dataclasses

    import faiss

    from retrieval.index_types import ShardIndex

    core = ShardRetrieverCore(_flat(tmp_path), 0, RetrieverConfig())
    core.check_health()
    core.delete([core.shard.any_item()])
    core.check_health()  # the deleted probe item is replaced by another
    view = core.shard._view
    scrambled = faiss.IndexFlatIP(DIM)
    scrambled.add(np.stack([unit(1000 + n) for n in range(view.base_n)]))
    core.shard._view = dataclasses.replace(view, base=ShardIndex("flat", {}, scrambled))
    # The index no longer matches the stored vectors (as after memory corruption).
    core.shard.lookup = lambda ids: {i: (None, unit(5000)) for i in ids}
    with pytest.raises(RuntimeError, match="probe search for item"):
        core.check_health()
