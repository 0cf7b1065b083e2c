"""The Ray head `llmrec up` starts (`cluster.local.start_head`), on ports of its own:
token auth is on, so a driver or a REST call without the token is turned away."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import httpx
import pytest

from cluster import local
from cluster.bench.driver import free_port

pytestmark = pytest.mark.slow

CONNECT = (
    "import ray; ray.init(address={address!r}, log_to_driver=False); "
    "print('cpus', int(ray.cluster_resources()['CPU']))"
)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head with one CPU, its token made by `start_head` in a folder of the test's own."""
    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    ports = {
        "port": free_port(),
        "dashboard_port": free_port(),
        "metrics_port": free_port(),
        "client_port": free_port(),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        local.start_head(num_cpus=1, **ports)
    try:
        yield {"token": token, **ports}
    finally:
        local.stop_head(ports["port"])


def connect(address: str, **env: str) -> subprocess.CompletedProcess:
    """A fresh driver process that joins the cluster at `address` with `env` as its Ray auth."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return subprocess.run(
        [sys.executable, "-c", CONNECT.format(address=address)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_token_is_made_once_and_private(head):
    assert stat.S_IMODE(head["token"].stat().st_mode) == 0o600
    assert len(head["token"].read_text()) == 64


def test_a_driver_without_the_token_is_refused_and_one_with_it_joins(head):
    address = f"127.0.0.1:{head['port']}"
    for env in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        refused = connect(address, **env)
        assert refused.returncode != 0, refused.stdout
        assert "cpus" not in refused.stdout
        assert "InvalidAuthToken" in refused.stderr or "token" in refused.stderr.lower()
    joined = connect(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(head["token"]))
    assert joined.returncode == 0, joined.stderr[-2000:]
    assert "cpus 1" in joined.stdout


def test_the_dashboard_apis_need_the_token_and_listen_on_loopback_only(head):
    url = f"http://127.0.0.1:{head['dashboard_port']}"
    assert httpx.get(f"{url}/api/jobs/", timeout=30).status_code == 401  # no job submission
    bearer = {"authorization": f"Bearer {head['token'].read_text().strip()}"}
    assert httpx.get(f"{url}/api/jobs/", headers=bearer, timeout=30).status_code == 200
    import psutil

    session = local._head_session(head["port"])
    dashboard = [
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == head["dashboard_port"]
    ]
    assert session and dashboard == ["127.0.0.1"]
