"""A real multi-node Ray cluster on this machine (`cluster.multinode`): a head and two worker
nodes from `ray start`, the retrievers placed on the workers by their resource, one worker
SIGKILLed under load and replaced; the service keeps answering throughout. The data dir is
on a real S3-compatible server: every replica reads the copy its node mirrored."""

from __future__ import annotations

import pytest

from cluster.multinode import node_kill_run
from cluster.placement import SHARD_RESOURCE
from retrieval.artifacts import cache_folder, push_data_dir
from tests.factories import dummy_aws, s3_bucket_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("node-cache")


@pytest.fixture(scope="module")
def uri(demo_dir, s3_endpoint):
    with pytest.MonkeyPatch.context() as mp:
        dummy_aws(mp)
        uri = s3_bucket_uri(s3_endpoint)
        push_data_dir(demo_dir, uri)
    return uri


@pytest.fixture(scope="module")
def report(uri, cache, tmp_path_factory):
    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        dummy_aws(mp)
        return node_kill_run(
            data_dir=uri,
            overrides={"cache_dir": str(cache)},
            workers=2,
            duration_s=40.0,
            steady_s=10.0,
            replace_after_s=10.0,
            users=3,
            progress=lambda _line: None,
        )


def by_deployment(rows):
    return {r["deployment"]: r for r in rows}


def test_retrievers_run_on_the_shard_nodes_and_the_rest_on_the_head(report):
    before = by_deployment(report["placement_before"])
    shards = [r for name, r in before.items() if name.startswith("ShardRetriever")]
    assert len(shards) == 2 and all(r["state"] == "RUNNING" for r in before.values())
    # One retriever replica per worker: each asks for a whole unit of the shard resource.
    assert {r["node"] for r in shards} == {"worker-1", "worker-2"}
    assert all(r["node_resources"].get(SHARD_RESOURCE) == 1.0 for r in shards)
    assert before["Router"]["node"] == before["Encoder"]["node"] == "head"


def test_a_lost_worker_is_answered_around_and_its_shards_come_back(report):
    nodes = {n["name"]: n for n in report["nodes"]}
    victim = report["killed_node"]
    assert nodes[victim]["state"] == "DEAD"
    assert nodes["worker-3"]["state"] == "ALIVE"  # the replacement
    # Every request answered; those while the node was gone name its shards as degraded.
    assert report["success_no_retry"] == 1.0
    assert report["success_while_node_gone"] == 1.0
    assert report["degraded_while_node_gone"] > 0.5
    lost = {
        name for name, r in by_deployment(report["placement_before"]).items() if r["node"] == victim
    }
    assert len(lost) == 1
    (replica,) = lost
    first = int(replica.rsplit("-", 1)[1]) * 2  # two shards per retriever replica
    assert set(report["degraded_stages"]) == {f"shard-{first}", f"shard-{first + 1}"}
    # Serve placed the lost replica on the new worker and the service is ready again.
    after = by_deployment(report["placement_after"])
    assert after[replica]["node"] == "worker-3" and after[replica]["state"] == "RUNNING"
    assert report["unrecovered_kills"] == 0
    assert report["timeline"][-1]["degraded"] == 0.0


def test_the_replicas_read_a_verified_mirror_of_the_storage(report, uri, cache, demo_dir):
    folder = cache_folder(uri, cache)
    mirrored = sorted(p.name for p in (folder / "index").glob("shard-*"))
    assert mirrored and mirrored == sorted(p.name for p in (demo_dir / "index").glob("shard-*"))
    assert (folder / "index" / "manifest.json").read_bytes() == (
        demo_dir / "index" / "manifest.json"
    ).read_bytes()
