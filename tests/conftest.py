"""Shared fixtures: the real encoder, demo data with a built index, one Ray cluster.

Ray starts once per session, only when an integration or e2e test asks for
it, with `num_cpus=2`, and is shut down at the end of the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.bench.driver import free_port
from cluster.redis_server import RedisServer
from tests.factories import dummy_aws

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def minilm():
    from retrieval.encoder import SentenceEncoder
    from retrieval.models import resolve_encoder

    return SentenceEncoder(resolve_encoder("all-MiniLM-L6-v2"), model_id="all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory, minilm) -> Path:
    """The demo generator at 2,000 users (3,000 items, ~158k interactions; the demo itself has
    5,000) with a 4-shard index built by the real encoder."""
    from retrieval.build import build_index
    from retrieval.demo_data import make_demo_dataset

    path = tmp_path_factory.mktemp("demo")
    make_demo_dataset(path, n_users=2000)
    build_index(path, minilm, n_shards=4, progress=False, sequential_budget_s=5)
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray import serve

    port = free_port()
    # address="local": always a fresh cluster of our own, even beside a running `llmrec up`.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto's standalone one) on 127.0.0.1: `host:port`."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy AWS credentials and no instance-metadata lookup: nothing leaves the machine."""
    dummy_aws(monkeypatch)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def redis_server(tmp_path):
    """A durable redis-server of the test's own (`cluster.redis_server`), stopped after."""
    try:
        server = RedisServer(tmp_path)
    except FileNotFoundError as exc:
        pytest.fail(f"{exc}; `make test` installs it")
    yield server
    server.stop()
