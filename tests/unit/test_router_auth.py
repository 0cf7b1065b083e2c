"""API keys: their sources, scopes and checks, and the docs switch (no cluster)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.errors import Forbidden, Unauthorized
from deployments.router.auth import ApiKeys
from retrieval.config import RouterConfig

KEYS = "# team keys\nread r-key-1\nwrite w-key-2   # the ingest job\n\n"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_keys_come_from_a_file_and_an_environment_variable_together(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(KEYS)
    config = RouterConfig(api_keys_file=str(path), api_keys_env="LLMREC_KEYS")
    keys = ApiKeys.from_config(config, environ={"LLMREC_KEYS": "read env-read, write env-write"})
    assert [(k.decode(), s) for k, s in keys.keys] == [
        ("r-key-1", "read"),
        ("w-key-2", "write"),
        ("env-read", "read"),
        ("env-write", "write"),
    ]
    assert not ApiKeys.from_config(RouterConfig()).enabled  # no source: the API is open


def test_a_named_source_that_is_missing_or_malformed_stops_the_replica(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ApiKeys.from_config(RouterConfig(api_keys_file=str(tmp_path / "none.txt")))
    with pytest.raises(ValueError, match=r"\$NOPE is not set"):
        ApiKeys.from_config(RouterConfig(api_keys_env="NOPE"), environ={})
    for bad in ("admin k1", "read", "read two keys", "k1"):
        with pytest.raises(ValueError, match="entry 1"):
            ApiKeys.parse(bad, "test")


def test_scopes_decide_what_a_key_may_do():
    keys = ApiKeys.parse(KEYS, "test")
    keys.check(bearer("r-key-1"), "read")
    keys.check(bearer("w-key-2"), "read")  # write includes read
    keys.check(bearer("w-key-2"), "write")
    with pytest.raises(Forbidden, match="'read' scope") as caught:
        keys.check(bearer("r-key-1"), "write")
    assert caught.value.status == 403
    for headers in ({}, bearer("nope"), bearer("r-key-"), {"authorization": "Basic r-key-1"}):
        with pytest.raises(Unauthorized) as caught:
            keys.check(headers, "read")
        assert caught.value.status == 401
    ApiKeys().check({}, "write")  # keys off: everything passes


def test_every_key_is_compared_in_constant_time(monkeypatch):
    from deployments.router import auth

    compared = []

    def spy(a, b):
        compared.append((a, b))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = ApiKeys.parse(KEYS, "test")
    keys.check(bearer("r-key-1"), "read")  # matches the first key, yet both are compared
    assert compared == [(b"r-key-1", b"r-key-1"), (b"r-key-1", b"w-key-2")]


def test_keys_stay_out_of_the_rendered_serve_config(tmp_path):
    import yaml

    from cluster.local import DEFAULT_CONFIG, render_serve_config

    path = tmp_path / "keys.txt"
    path.write_text(KEYS)
    router = {"api_keys_file": str(path), "api_keys_env": "LLMREC_KEYS"}
    config, cfg = render_serve_config(DEFAULT_CONFIG, overrides={"router": router})
    rendered = yaml.safe_dump(config)
    assert str(path) in rendered and "LLMREC_KEYS" in rendered  # where the keys are: named
    assert "r-key-1" not in rendered and "w-key-2" not in rendered  # the keys: not there
    with pytest.raises(ValueError, match="api_keys"):  # a key list in the config is refused
        render_serve_config(DEFAULT_CONFIG, overrides={"router": {"api_keys": ["r-key-1"]}})


def test_the_docs_can_be_hidden():
    from deployments.router.deployment import _hide_docs

    app = FastAPI()

    @app.get("/v1/ping")
    def ping() -> dict:
        return {"ok": True}

    client = TestClient(app)
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    _hide_docs(app)
    assert client.get("/openapi.json").status_code == 404
    assert client.get("/docs").status_code == 404
    assert client.get("/v1/ping").json() == {"ok": True}
