"""Data dirs on shared storage: uploaded to a real S3-compatible server, mirrored per node.

The server is moto's standalone S3 on 127.0.0.1 (a free port); the AWS
credentials are dummies and the instance metadata lookup is off, so nothing
leaves the machine. Each "node" is a cache folder of its own.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from retrieval.artifacts import (
    ArtifactError,
    cache_folder,
    local_data_dir,
    manifest_of,
    mirror_data_dir,
    push_data_dir,
)
from retrieval.build import refit_collaborative
from retrieval.config import AppConfig
from retrieval.shards import IndexIntegrityError, Item, Shard, load_manifest, shard_of
from tests.factories import make_shards, make_vectors, s3_bucket_uri

DIM = 16
N_ITEMS = 240
N_SHARDS = 3


@pytest.fixture(autouse=True)
def _aws(aws_env):
    """Every test here talks to the local S3 server (tests/conftest.py) with dummy keys."""


def make_data_dir(path: Path, n_items: int = N_ITEMS, seed: int = 0) -> Path:
    """A built data dir as `llmrec ingest` + `llmrec build` leave it: catalog, interactions,
    FAISS shards with their manifest, the collaborative models."""
    catalog, _, _ = make_shards(path / "index", n=n_items, dim=DIM, n_shards=N_SHARDS, seed=seed)
    pq.write_table(catalog, path / "catalog.parquet")
    rng = np.random.default_rng(seed)
    users = [f"u{u}" for u in range(40) for _ in range(6)]
    items = [str(i) for i in rng.integers(1, n_items + 1, len(users))]
    pq.write_table(
        pa.table({"user_id": users, "item_id": items, "ts": list(range(len(users)))}),
        path / "interactions.parquet",
    )
    refit_collaborative(path, catalog["item_id"].to_pylist())
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("built"))


@pytest.fixture
def uri(s3_endpoint) -> str:
    """A fresh bucket on the server; the data dir's URI inside it."""
    return s3_bucket_uri(s3_endpoint)


def overwrite(uri: str, rel: str, data: bytes) -> None:
    fs, root = pafs.FileSystem.from_uri(uri)
    with fs.open_output_stream(f"{root}/{rel}") as f:
        f.write(data)


def files_of(folder: Path) -> dict[str, str]:
    """sha256 of every file replicas read, by path inside the data dir."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


def top_ids(index_dir: Path, query: np.ndarray, k: int = 10) -> list[list[str]]:
    return [
        [h.item_id for h in Shard.load(index_dir, s, expected_dim=DIM).search(query, k)]
        for s in range(N_SHARDS)
    ]


def test_a_node_without_a_copy_gets_a_verified_one_that_searches_like_the_original(
    built, uri, tmp_path
):
    sent = push_data_dir(built, uri)
    assert "index/manifest.json" in sent and "catalog.parquet" in sent
    assert manifest_of(uri).n_shards == N_SHARDS  # read from the storage, nothing copied

    folder = local_data_dir(uri, tmp_path / "node-b")
    assert folder == cache_folder(uri, tmp_path / "node-b") and folder.is_dir()
    assert files_of(folder) == files_of(built)  # every shard, parquet and model file
    query = make_vectors(1, DIM, seed=9)[0]
    assert top_ids(folder / "index", query) == top_ids(built / "index", query)

    # The config gives replicas this node's copy.
    cfg = AppConfig(data_dir=uri, cache_dir=str(tmp_path / "node-b"))
    assert cfg.data_path == folder and cfg.index_path == folder / "index"
    assert cfg.data_source == uri


def test_a_second_mirror_copies_nothing_and_replicas_starting_together_download_once(
    built, uri, tmp_path
):
    push_data_dir(built, uri)
    folder = tmp_path / "node"
    reports = []
    threads = [
        threading.Thread(target=lambda: reports.append(mirror_data_dir(uri, folder)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sorted(set(files_of(built)) - {"index/manifest.json"})
    assert sorted(f for r in reports for f in r.copied) == expected  # each file once
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

    again = mirror_data_dir(uri, folder)
    assert again.copied == [] and again.bytes_copied == 0 and again.removed == []
    assert sorted(again.kept) == expected
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes | {
        folder / ".mirror.json": (folder / ".mirror.json").stat().st_mtime_ns
    }


def test_a_corrupt_upload_refuses_to_load_naming_the_file_and_leaves_no_partial_file(
    built, uri, tmp_path
):
    push_data_dir(built, uri)
    good_node = local_data_dir(uri, tmp_path / "node-a")
    shard_file = load_manifest(built / "index").shards[1].index_file
    original = (built / "index" / shard_file).read_bytes()
    overwrite(uri, f"index/{shard_file}", original[:-8] + b"garbage!")  # same size, other bytes

    fresh = tmp_path / "node-b"
    with pytest.raises(IndexIntegrityError, match=rf"{shard_file}: sha256 .* does not match"):
        local_data_dir(uri, fresh)
    folder = cache_folder(uri, fresh)
    assert not (folder / "index" / shard_file).exists()
    assert not [p for p in folder.rglob("*.part")]  # no half file left behind
    assert not (folder / "index" / "manifest.json").exists()  # nothing a replica could load

    # A node whose copy matches the manifest keeps serving it.
    assert local_data_dir(uri, tmp_path / "node-a") == good_node
    assert (good_node / "index" / shard_file).read_bytes() == original


def test_a_nodes_own_changes_survive_a_restart_and_a_new_upload_replaces_them(built, uri, tmp_path):
    push_data_dir(built, uri)
    folder = local_data_dir(uri, tmp_path / "node")
    shard = Shard.load(folder / "index", 0, expected_dim=DIM)
    item = next(f"new-{n}" for n in range(1000) if shard_of(f"new-{n}", N_SHARDS) == 0)
    shard.upsert([Item(item, "New", "A new story.", ["Drama"])], make_vectors(1, DIM, seed=3))

    assert mirror_data_dir(uri, folder).copied == []  # same upload: the change log stays
    assert item in Shard.load(folder / "index", 0).lookup([item])

    rebuilt = make_data_dir(tmp_path / "rebuilt", n_items=N_ITEMS + 30, seed=1)
    push_data_dir(rebuilt, uri)
    report = mirror_data_dir(uri, folder)
    assert "index/shard-000.changes.jsonl" in report.removed
    assert files_of(folder) == files_of(rebuilt)
    assert item not in Shard.load(folder / "index", 0).lookup([item])


def test_a_local_path_is_used_where_it_is(built, tmp_path):
    cache = tmp_path / "cache"
    assert local_data_dir(str(built), cache) == built
    cfg = AppConfig(data_dir=str(built), cache_dir=str(cache))
    assert cfg.data_path == built and cfg.index_path == built / "index"
    assert cfg.data_source == str(built)
    assert not cache.exists()  # no copy, not even a folder


def test_a_file_uri_is_mirrored_too(built, tmp_path):
    folder = local_data_dir(built.as_uri(), tmp_path / "cache")
    assert folder != built and files_of(folder) == files_of(built)


def test_storage_without_a_data_dir_is_a_clear_error(uri, tmp_path):
    with pytest.raises(ArtifactError, match="nothing there"):
        local_data_dir(uri, tmp_path / "node")
    with pytest.raises(ArtifactError, match="manifest"):
        manifest_of(uri)


def test_build_app_reads_only_the_manifest_and_hands_shards_the_uri(built, uri, tmp_path):
    from deployments.app import build_app

    push_data_dir(built, uri)
    head_cache = tmp_path / "head"
    app = build_app({"data_dir": uri, "cache_dir": str(head_cache), "reranker": {"enabled": False}})
    _, _, shards, _ = app._bound_deployment.init_args
    assert len(shards) == 1  # 3 shards, 4 per replica
    data, shard_nos, n_shards, _, dim = shards[0]._bound_deployment.init_args
    assert data == {"data_dir": uri, "cache_dir": str(head_cache)}
    assert (shard_nos, n_shards, dim) == ([0, 1, 2], N_SHARDS, DIM)
    assert not head_cache.exists()  # the head copied nothing
