"""Every index type on small clustered data: recall against exact search, filters, integrity."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pyarrow as pa
import pytest

from cluster.bench.retrieval_core import exact_top_k, make_data, synthetic_catalog
from retrieval.config import IndexBuildConfig, RetrieverConfig
from retrieval.index_types import resolve_index
from retrieval.merge import merge_top_k
from retrieval.shards import IndexIntegrityError, Shard, build_shards, load_manifest

DIM = 32
N = 6000
SHARDS = 3

# type -> (build spec, search settings, least recall@10 of the merged shards on this data);
# 4-bit PQ codes keep codebook training fast here.
TYPES = {
    "flat": (IndexBuildConfig(type="flat"), RetrieverConfig(), 1.0),
    "hnsw": (
        IndexBuildConfig(type="hnsw", hnsw_m=16, hnsw_ef_construction=64),
        RetrieverConfig(),
        0.95,
    ),
    "ivfsq": (IndexBuildConfig(type="ivfsq"), RetrieverConfig(nprobe=32), 0.95),
    "ivfpq": (IndexBuildConfig(type="ivfpq", pq_m=8, pq_nbits=4), RetrieverConfig(nprobe=32), 0.4),
    "ivfpq-refine": (
        IndexBuildConfig(type="ivfpq", pq_m=8, pq_nbits=4, pq_refine=True),
        RetrieverConfig(nprobe=32, refine_k_factor=16),
        0.95,
    ),
}


RARE = {str(i) for i in range(5, N, 500)}  # 12 items of 6000 also carry category "rare"


@pytest.fixture(scope="module")
def data():
    items, queries = make_data(N, 40, DIM, seed=3)
    catalog = synthetic_catalog(N)
    cats = [
        c + ["rare"] if i in RARE else c
        for i, c in zip(
            catalog["item_id"].to_pylist(), catalog["categories"].to_pylist(), strict=True
        )
    ]
    catalog = catalog.set_column(3, "categories", pa.array(cats, pa.list_(pa.string())))
    return items, queries, catalog


@pytest.fixture(scope="module", params=list(TYPES))
def built(request, tmp_path_factory, data):
    items, queries, catalog = data
    spec, settings, min_recall = TYPES[request.param]
    path = tmp_path_factory.mktemp(request.param) / "index"
    manifest = build_shards(catalog, items, path, n_shards=SHARDS, encoder_id="t", index=spec)
    shards = [Shard.load(path, s, settings=settings) for s in range(SHARDS)]
    return request.param, path, manifest, shards, min_recall


def merged(shards, q, k=10, **kw):
    return merge_top_k([s.search(q, k, **kw) for s in shards], k)


def recall(shards, items, queries, allowed=None, **kw):
    scores = queries @ items.T
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    truth = np.argsort(-scores, axis=1)[:, :10]
    found = [{h.item_id for h in merged(shards, q, **kw)} for q in queries]
    return np.mean([len({str(i) for i in t} & f) / 10 for t, f in zip(truth, found, strict=True)])


def test_manifest_records_type_and_params(built):
    name, path, manifest, *_ = built
    loaded = load_manifest(path)
    assert loaded.index_type == name.split("-")[0]
    assert loaded.index_params == manifest.index_params
    if loaded.index_type.startswith("ivf"):
        assert loaded.index_params["nlist"] >= 1
    assert (loaded.shards[0].vectors_file is not None) == name.endswith("refine")


def test_merged_shards_recall_against_exact_search(built, data):
    name, _, _, shards, min_recall = built
    items, queries, _ = data
    if name == "flat":
        for q in queries:
            assert [h.item_id for h in merged(shards, q)] == [
                str(i) for i in exact_top_k(items, q[None], 10)[0]
            ]
    assert recall(shards, items, queries) >= min_recall


def test_category_filter_and_exclusions_fill_k(built, data):
    name, _, _, shards, min_recall = built
    items, queries, catalog = data
    cats = np.array([c[0] for c in catalog["categories"].to_pylist()])
    exclude = [str(i) for i in range(0, N, 3)]
    allowed = (cats == "c4") & ~np.isin(np.arange(N), np.arange(0, N, 3))
    for q in queries[:10]:
        hits = merged(shards, q, exclude=exclude, categories=["c4"])
        assert len(hits) == 10
        assert all(h.categories == ["c4"] and h.item_id not in exclude for h in hits)
    got = recall(shards, items, queries, allowed[None], exclude=exclude, categories=["c4"])
    assert got >= min_recall * 0.9


def test_restrictive_filter_returns_every_allowed_item(built, data):
    """12 allowed items of 6000: below the exact cut-over, so the scan is exhaustive."""
    *_, shards, _ = built
    _, queries, _ = data
    for q in queries[:3]:
        hits = merged(shards, q, k=20, categories=["rare"])
        assert {h.item_id for h in hits} == RARE
        assert merged(shards, q, k=5, categories=["rare"], exclude=sorted(RARE)[:8]) != []


def test_moderate_filter_with_a_narrow_beam_still_fills_k(built, data):
    """One category in ten, a beam of 2 / one probed list: the short answer falls back."""
    *_, shards, _ = built
    _, queries, _ = data
    narrow = RetrieverConfig(nprobe=1, ef_search=2, exact_filter_fraction=0.0)
    old = [s.settings for s in shards]
    try:
        for s in shards:
            s.settings = narrow
        for q in queries[:5]:
            hits = merged(shards, q, k=50, categories=["c7"])
            assert len(hits) == 50 and all(h.categories == ["c7"] for h in hits)
    finally:
        for s, o in zip(shards, old, strict=True):
            s.settings = o


def test_lookup_returns_the_stored_vector(built, data):
    name, _, _, shards, _ = built
    items, *_ = data
    for s in shards:
        item_id = s.item_ids[0]
        (hit, vec) = s.lookup([item_id])[item_id]
        cos = float(vec @ items[int(item_id)]) / float(np.linalg.norm(vec))
        least = {"ivfsq": 0.99, "ivfpq": 0.75}.get(name, 0.9999)  # decoded vs stored exactly
        assert cos > least


def test_nlist_follows_the_catalog_size():
    kind, params = resolve_index(IndexBuildConfig(type="ivfsq"), 1_000_000, 4, 384)
    assert (kind, params["nlist"]) == ("ivfsq", 1024)
    assert resolve_index(IndexBuildConfig(), 2000, 4, 384)[0] == "flat"
    assert resolve_index(IndexBuildConfig(), 1_000_000, 4, 384)[0] == "ivfsq"
    with pytest.raises(ValueError, match="retriever.index.pq_m: 50 does not divide"):
        resolve_index(IndexBuildConfig(type="ivfpq", pq_m=50), 10_000, 1, 384)


# ---- integrity -----------------------------------------------------------------------


@pytest.fixture
def two_builds(tmp_path, data):
    items, _, catalog = data
    small, cat = items[:1500], catalog.slice(0, 1500)
    flat = tmp_path / "flat"
    ivf = tmp_path / "ivf"
    build_shards(cat, small, flat, n_shards=2, encoder_id="t")
    build_shards(
        cat,
        small,
        ivf,
        n_shards=2,
        encoder_id="t",
        index=IndexBuildConfig(type="ivfpq", pq_m=8, pq_nbits=4),
    )
    return flat, ivf


def _rewrite_manifest(path, **changes):
    raw = json.loads((path / "manifest.json").read_text())
    raw.update(changes)
    (path / "manifest.json").write_text(json.dumps(raw))


def test_index_of_another_type_is_refused(two_builds):
    flat, _ = two_builds
    _rewrite_manifest(flat, index_type="hnsw", index_params={"factory": "HNSW32,Flat"})
    with pytest.raises(
        IndexIntegrityError,
        match=r"shard-000\.faiss: manifest says index_type 'hnsw' .* holds IndexFlatIP",
    ):
        Shard.load(flat, 0)


def test_ivf_list_count_mismatch_is_refused(two_builds):
    _, ivf = two_builds
    params = load_manifest(ivf).index_params
    _rewrite_manifest(ivf, index_params={**params, "nlist": params["nlist"] * 2})
    with pytest.raises(IndexIntegrityError, match=r"shard-001\.faiss: \d+ lists, manifest says"):
        Shard.load(ivf, 1)


def test_index_from_a_newer_faiss_is_refused(two_builds):
    flat, _ = two_builds
    _rewrite_manifest(flat, faiss_version="1.99.0")
    with pytest.raises(IndexIntegrityError, match=r"manifest\.json: index written by faiss 1\.99"):
        Shard.load(flat, 0)


def test_truncated_index_with_matching_digest_is_refused(two_builds):
    from retrieval.integrity import sha256_of

    _, ivf = two_builds
    target = ivf / "shard-000.faiss"
    target.write_bytes(target.read_bytes()[:1000])
    manifest = json.loads((ivf / "manifest.json").read_text())
    manifest["shards"][0]["index_sha256"] = sha256_of(target)
    (ivf / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match=r"shard-000\.faiss: unreadable"):
        Shard.load(ivf, 0)


def test_corrupt_vectors_file_is_refused(tmp_path, data):
    items, _, catalog = data
    path = tmp_path / "index"
    spec = IndexBuildConfig(type="ivfpq", pq_m=8, pq_nbits=4, pq_refine=True)
    build_shards(catalog.slice(0, 1500), items[:1500], path, n_shards=1, encoder_id="t", index=spec)
    target = path / "shard-000.vectors.faiss"
    raw = bytearray(target.read_bytes())
    raw[-5] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(IndexIntegrityError, match=r"shard-000\.vectors\.faiss: sha256"):
        Shard.load(path, 0)


def test_rows_file_of_other_length_is_refused(two_builds):
    import pyarrow.parquet as pq

    from retrieval.integrity import sha256_of

    flat, _ = two_builds
    rows = pq.read_table(flat / "shard-000.parquet")
    pq.write_table(rows.slice(0, len(rows) - 1), flat / "shard-000.parquet")
    manifest = json.loads((flat / "manifest.json").read_text())
    manifest["shards"][0]["items_sha256"] = sha256_of(flat / "shard-000.parquet")
    (flat / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexIntegrityError, match=r"shard-000\.parquet: \d+ items, manifest says"):
        Shard.load(flat, 0)


def test_empty_shards_and_tiny_catalogs_build(tmp_path):
    items, _ = make_data(5, 1, DIM)
    cat = synthetic_catalog(5)
    for spec in (
        IndexBuildConfig(type="flat"),
        IndexBuildConfig(type="hnsw"),
        IndexBuildConfig(type="ivfsq"),
    ):
        path = tmp_path / spec.type
        build_shards(cat, items, path, n_shards=8, encoder_id="t", index=spec)
        found = merge_top_k([Shard.load(path, s).search(items[0], 3) for s in range(8)], 3)
        assert found[0].item_id == "0"


def test_flat_shards_of_earlier_builds_still_load(tmp_path, data):
    """Earlier builds wrote flat shards as an id map over positions, without index params."""
    import faiss

    from retrieval.integrity import sha256_of

    items, _, catalog = data
    path = tmp_path / "index"
    build_shards(catalog.slice(0, 300), items[:300], path, n_shards=1, encoder_id="t")
    old = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    old.add_with_ids(items[:300], np.arange(300))
    faiss.write_index(old, str(path / "shard-000.faiss"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][0]["index_sha256"] = sha256_of(path / "shard-000.faiss")
    del manifest["index_params"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert Shard.load(path, 0).search(items[42], 1)[0].item_id == "42"


# ---- the benchmark's pieces (Ray-free) ------------------------------------------------


def test_bench_data_is_seeded_unit_norm_and_clustered():
    a_items, a_queries = make_data(3000, 20, DIM, seed=7)
    b_items, _ = make_data(3000, 20, DIM, seed=7)
    np.testing.assert_array_equal(a_items, b_items)
    np.testing.assert_allclose(np.linalg.norm(a_items, axis=1), 1.0, rtol=1e-5)
    # A query's nearest item shares its cluster: far closer than a random pair.
    best = (a_queries @ a_items.T).max(axis=1)
    assert best.mean() > 0.6 > float(np.mean(a_items[:100] @ a_items[100:200].T))


async def test_measure_answers_every_query_once_and_times_it():
    from cluster.bench.retrieval import measure
    from cluster.bench.retrieval_core import mean_recall_at_k

    items, queries = make_data(500, 30, DIM, seed=2)
    truth = exact_top_k(items, queries, 10)
    in_flight = 0
    peak = 0

    async def search(q):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return [str(i) for i in exact_top_k(items, q[None], 10)[0]]

    answers, latencies = await measure(search, queries, 8, warmup=2)
    assert mean_recall_at_k(answers, truth, 10) == 1.0
    assert peak == 8 and len(latencies) == 30 and min(latencies) > 0
