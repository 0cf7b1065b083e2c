"""`llmrec up` when the cluster it deployed to goes away while it waits (no Ray)."""

from __future__ import annotations

import pytest

from cluster import local


def test_up_stops_waiting_once_the_cluster_is_gone(tmp_path, monkeypatch):
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "manifest.json").write_text("{}")
    answers = iter([True, True] + [False] * 10)  # the dashboard answers, then is gone
    monkeypatch.setattr(local, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(local, "_ray_running", lambda: True)
    monkeypatch.setattr(local, "_dashboard_is_ours", lambda url: True)
    monkeypatch.setattr(local, "_run", lambda cmd, **kw: None)
    monkeypatch.setattr(local, "health", lambda url: (0, {}))
    monkeypatch.setattr(local, "_dashboard_answers", lambda url: next(answers))
    monkeypatch.setattr(local.time, "sleep", lambda s: None)
    with pytest.raises(local.ClusterError, match="stopped answering"):
        local.up(data_dir=tmp_path, timeout_s=600)
    assert next(answers) is False  # it gave up after a few silent checks, not at the timeout
