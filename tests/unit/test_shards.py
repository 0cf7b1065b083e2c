import json

import numpy as np
import pytest
from ray import cloudpickle

from retrieval.merge import merge_top_k
from retrieval.shards import Hit, IndexIntegrityError, Scored, Shard, load_manifest, shard_of
from tests.factories import make_shards


def exact_top_k(vectors, query, k, allowed=None):
    scores = vectors @ query
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return [str(i + 1) for i in order if np.isfinite(scores[i])]


@pytest.fixture
def index(tmp_path):
    catalog, vectors, manifest = make_shards(tmp_path / "index", n=600, dim=16, n_shards=3)
    shards = [Shard.load(tmp_path / "index", s) for s in range(3)]
    return tmp_path / "index", catalog, vectors, manifest, shards


def test_manifest_describes_every_shard(index):
    path, catalog, _, manifest, shards = index
    loaded = load_manifest(path)
    assert loaded.dim == 16 and loaded.items == 600 and loaded.n_shards == 3
    assert sum(s.items for s in loaded.shards) == 600
    assert all(len(s.index_sha256) == 64 for s in loaded.shards)
    for s, shard in enumerate(shards):
        assert all(shard_of(i, 3) == s for i in shard.item_ids)


def test_merged_shards_equal_exact_search(index):
    _, _, vectors, _, shards = index
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.standard_normal(16).astype(np.float32)
        merged = merge_top_k([s.search(q, 10) for s in shards], 10)
        assert [h.item_id for h in merged] == exact_top_k(vectors, q, 10)


def test_category_filter_and_exclusions_fill_k(index):
    _, catalog, vectors, _, shards = index
    cats = [c[0] for c in catalog["categories"].to_pylist()]
    q = vectors[0]
    exclude = [str(i + 1) for i in range(0, 600, 8)]
    allowed = np.array([c == "Horror" and str(i + 1) not in exclude for i, c in enumerate(cats)])
    merged = merge_top_k(
        [s.search(q, 10, exclude=exclude, categories=["Horror"]) for s in shards], 10
    )
    assert len(merged) == 10
    assert [h.item_id for h in merged] == exact_top_k(vectors, q, 10, allowed)
    assert all(h.categories == ["Horror"] for h in merged)


def test_search_ids_answers_what_search_does_without_the_rows(index):
    _, catalog, vectors, _, shards = index
    exclude = [str(i + 1) for i in range(0, 600, 5)]
    for q in (vectors[3], vectors[77]):
        for shard in shards:
            full = shard.search(q, 12, exclude=exclude, categories=["Horror"])
            ids_only = shard.search_ids(q, 12, exclude=exclude, categories=["Horror"])
            assert [(h.item_id, h.score) for h in full] == [tuple(s) for s in ids_only]
        merged = merge_top_k([s.search_ids(q, 10, exclude=exclude) for s in shards], 10)
        allowed = np.array([str(i + 1) not in exclude for i in range(len(vectors))])
        assert [s.item_id for s in merged] == exact_top_k(vectors, q, 10, allowed)


def test_a_found_crosses_a_hop_whole(index):
    _, _, vectors, _, shards = index
    found = shards[0].find(vectors[3], 10, also=[str(i) for i in range(1, 60)], rows_for=3)
    assert found.nearest and found.scored and len(found.rows) == 3
    back = cloudpickle.loads(cloudpickle.dumps(found))
    assert back.nearest == found.nearest and back.scored == found.scored
    assert all(type(s) is Scored for s in [*back.nearest, *back.scored])
    assert back.nearest[0].item_id == found.nearest[0].item_id
    assert back.rows.keys() == found.rows.keys()
    for item_id, (hit, vector) in found.rows.items():
        assert back.rows[item_id][0] == hit
        np.testing.assert_array_equal(back.rows[item_id][1], vector)


def test_unknown_category_returns_nothing(index):
    *_, shards = index
    assert shards[0].search(np.ones(16, np.float32), 5, categories=["Opera"]) == []


def test_lookup_returns_stored_vectors(index):
    _, _, vectors, _, shards = index
    owner = shards[shard_of("7", 3)]
    found = owner.lookup(["7", "not-there"])
    assert list(found) == ["7"]
    np.testing.assert_allclose(found["7"][1], vectors[6], rtol=1e-6)


def test_merge_keeps_best_score_of_a_repeated_item():
    a = [Hit("x", 0.9, "", "", []), Hit("y", 0.5, "", "", [])]
    b = [Hit("x", 0.8, "", "", []), Hit("z", 0.7, "", "", [])]
    assert [(h.item_id, h.score) for h in merge_top_k([a, b], 3)] == [
        ("x", 0.9),
        ("z", 0.7),
        ("y", 0.5),
    ]


def test_corrupt_shard_is_refused_naming_the_file(index):
    path, *_ = index
    target = path / "shard-001.faiss"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IndexIntegrityError, match=r"shard-001\.faiss: sha256"):
        Shard.load(path, 1)
    Shard.load(path, 0)  # the others still load


def test_truncated_and_missing_files_are_refused(index):
    path, *_ = index
    (path / "shard-002.parquet").write_bytes(b"PAR1")
    with pytest.raises(IndexIntegrityError, match="shard-002.parquet"):
        Shard.load(path, 2)
    (path / "shard-000.faiss").unlink()
    with pytest.raises(IndexIntegrityError, match="shard-000.faiss: missing"):
        Shard.load(path, 0)


def test_dimension_mismatch_with_encoder_is_refused(index):
    path, *_ = index
    with pytest.raises(IndexIntegrityError, match="dim 16 but the encoder produces 384"):
        Shard.load(path, 0, expected_dim=384)


def test_malformed_manifest_is_refused(index):
    path, *_ = index
    raw = json.loads((path / "manifest.json").read_text())
    del raw["dim"]
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(IndexIntegrityError, match="malformed manifest"):
        load_manifest(path)


def test_rebuild_replaces_the_index_whole(tmp_path):
    make_shards(tmp_path / "index", n=50, dim=8, n_shards=2)
    make_shards(tmp_path / "index", n=80, dim=8, n_shards=4, seed=3)
    assert load_manifest(tmp_path / "index").items == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_fast_searches_run_inline_and_slow_ones_move_to_a_thread():
    from deployments.retriever.deployment import SearchTimer

    timer = SearchTimer(inline_below_s=0.001, smoothing=0.5)
    assert timer.inline()  # nothing measured yet
    timer.record(0.050)  # a flat scan
    assert not timer.inline()
    for _ in range(8):
        timer.record(0.0002)
    assert timer.inline()
    assert not SearchTimer(inline_below_s=0.0).inline()  # 0: always a thread


def test_a_replicas_worker_threads_search_with_the_configured_faiss_threads(tmp_path):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import faiss

    from deployments.retriever.deployment import ShardRetriever

    make_shards(tmp_path / "index", n=60, dim=8, n_shards=2)
    # OpenMP's thread count is per thread: a thread that never set it gets the default.
    with ThreadPoolExecutor(1) as plain:
        default = plain.submit(faiss.omp_get_max_threads).result()
    wanted = default + 1
    config = {"faiss_threads": wanted, "inline_search_ms": 0.0}  # every search in a thread
    replica = ShardRetriever.func_or_class({"data_dir": str(tmp_path)}, [0, 1], 2, config)
    try:
        assert asyncio.run(replica._in_thread(faiss.omp_get_max_threads)) == wanted
        found = asyncio.run(replica.search_ids(np.ones(8, dtype=np.float32), 5, [], None))
        assert len(found.nearest) == 5
    finally:
        replica.threads.shutdown()
