"""`llmrec up` waiting for the app it deployed: a cluster that goes away, a rollout, a failure
(no Ray: the commands and answers it reads are stood in for)."""

from __future__ import annotations

import pytest

from cluster import local


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A dataset folder `up` accepts, on a running local head whose commands do nothing."""
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text("{}")
    monkeypatch.setattr(local, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(local, "_ray_running", lambda: True)
    monkeypatch.setattr(local, "_dashboard_is_ours", lambda url: True)
    monkeypatch.setattr(local, "_run", lambda cmd, **kw: None)
    monkeypatch.setattr(local.time, "sleep", lambda s: None)
    return tmp_path


def _serve_says(monkeypatch, states) -> None:
    states = iter(states)

    def status(address):
        return {"applications": {"llmrec": {"status": next(states)}}}

    monkeypatch.setattr(local, "serve_status", status)


def test_up_stops_waiting_once_the_cluster_is_gone(data_dir, monkeypatch):
    answers = iter([True, True] + [False] * 10)  # the dashboard answers, then is gone
    monkeypatch.setattr(local, "health", lambda url: (0, {}))
    monkeypatch.setattr(local, "_dashboard_answers", lambda url: next(answers))
    with pytest.raises(local.ClusterError, match="stopped answering"):
        local.up(data_dir=data_dir, timeout_s=600)
    assert next(answers) is False  # it gave up after a few silent checks, not at the timeout


def test_up_is_ready_when_serve_runs_the_new_version_not_when_the_old_one_answers(
    data_dir, monkeypatch
):
    states = ["DEPLOYING", "DEPLOYING", "RUNNING"]
    monkeypatch.setattr(local, "health", lambda url: (200, {"status": "ready"}))  # old replicas
    calls = []
    _serve_says(monkeypatch, states)
    real = local.serve_status
    monkeypatch.setattr(local, "serve_status", lambda address: calls.append(1) or real(address))
    assert local.up(data_dir=data_dir, timeout_s=600) == "http://127.0.0.1:8000"
    assert len(calls) == 3  # it waited through both DEPLOYING answers


def test_up_says_so_when_serve_fails_to_deploy(data_dir, monkeypatch):
    monkeypatch.setattr(local, "health", lambda url: (200, {"status": "ready"}))
    _serve_says(monkeypatch, ["DEPLOY_FAILED"])
    with pytest.raises(local.ClusterError, match="could not deploy 'llmrec'"):
        local.up(data_dir=data_dir, timeout_s=600)


def test_the_ray_token_is_made_once_and_kept_private(tmp_path, monkeypatch):
    token = tmp_path / "ray" / "auth_token"
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    env = local._ray_env()
    assert env["RAY_AUTH_MODE"] == "token"
    first = token.read_text()
    assert len(first) == 64 and token.stat().st_mode & 0o777 == 0o600
    token.chmod(0o644)  # e.g. written by another tool
    local._ray_env()
    assert token.read_text() == first and token.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the caller's choice stands
    assert local._ray_env()["RAY_AUTH_MODE"] == "disabled"
