"""Every client command sends the API key (`--api-key`, else `$LLMREC_API_KEY`) as a bearer token.

The in-process clients are checked with `httpx.MockTransport`; the ones that open their own
connections (the pipeline bench, `llmrec query`, the served eval, the sweep's health wait) against
a small local HTTP server that records the `Authorization` header of every request.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from cluster.cli import main as llmrec
from cluster.cli import parser
from loadtest.auth import API_KEY_ENV, api_key_from, auth_headers
from loadtest.chaos import ChaosPlan, run_chaos
from loadtest.overload import run_overload
from loadtest.runner import LoadRunner
from loadtest.scenario import Scenario, TaskSpec
from loadtest.sweep import Deployed, SweepPoint, run_sweep
from loadtest.traffic import TrafficData

ANSWER = {
    "items": [{"item_id": "7", "title": "Item 7", "score": 1.0, "sources": ["ann"]}],
    "reranked": False,
    "degraded": [],
    "timings_ms": {"total": 1.0},
    "upserted": ["7"],
}
"""One body that passes for every route's answer: recommend, item, upsert, feedback."""


@pytest.fixture(autouse=True)
def no_key_in_env(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def traffic() -> TrafficData:
    return TrafficData.synthetic(n_users=20, n_items=50)


def scenario(**kw) -> Scenario:
    kw.setdefault("tasks", [TaskSpec(kind="user", deadline_ms=300)])
    kw.setdefault("warmup_s", 0)
    return Scenario(**kw)


def recording_transport(seen: list[tuple[str, str | None]]) -> httpx.MockTransport:
    """Answers `ANSWER` to everything; appends (path, Authorization or None) per request."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, json=ANSWER)

    return httpx.MockTransport(handler)


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None]]

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.seen.append((self.path, self.headers.get("authorization")))
        body = json.dumps(ANSWER).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A local HTTP server on a free port: (its URL, the (path, Authorization) it received)."""
    seen: list[tuple[str, str | None]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def keys(seen: list[tuple[str, str | None]]) -> set[str | None]:
    assert seen, "no request arrived"
    return {auth for _, auth in seen}


def test_the_flag_wins_over_the_environment(monkeypatch):
    assert api_key_from(None) is None and api_key_from("") is None
    monkeypatch.setenv(API_KEY_ENV, "k-env")
    assert api_key_from("k-flag") == "k-flag"
    assert api_key_from(None) == "k-env"
    assert auth_headers("k1") == {"Authorization": "Bearer k1"}
    assert auth_headers(None) == {}


@pytest.mark.parametrize(("key", "sent"), [("k1", "Bearer k1"), (None, None)])
def test_a_load_run_sends_the_key_on_every_request(traffic, key, sent):
    seen: list[tuple[str, str | None]] = []
    sc = scenario(
        users=[2],
        think_time_s=(0.01, 0.01),
        duration_s=0.5,
        warmup_s=0.2,
        tasks=[TaskSpec(kind="user"), TaskSpec(kind="query"), TaskSpec(kind="upsert")],
    )
    runner = LoadRunner(
        "http://127.0.0.1:9",
        sc,
        traffic,
        transport=recording_transport(seen),
        headers=auth_headers(key),
    )
    asyncio.run(runner.run())
    assert len(seen) > 5 and keys(seen) == {sent}


def test_the_overload_check_sends_the_key(traffic):
    seen: list[tuple[str, str | None]] = []
    asyncio.run(
        run_overload(
            "http://127.0.0.1:9",
            scenario(users=[2], duration_s=0.5),
            traffic,
            capacity_s=0.3,
            step_s=0.3,
            transport=recording_transport(seen),
            headers=auth_headers("k1"),
        )
    )
    assert keys(seen) == {"Bearer k1"}


def test_a_chaos_run_sends_the_key_with_the_load_the_health_polls_and_the_read_backs(traffic):
    seen: list[tuple[str, str | None]] = []
    sc = scenario(users=[2], think_time_s=(0.01, 0.02), tasks=[TaskSpec(kind="upsert")])
    plan = ChaosPlan(duration_s=0.8, steady_s=0.3, kill_every_s=1.0, health_poll_s=0.1)
    run = asyncio.run(
        run_chaos(
            "http://127.0.0.1:9",
            sc,
            traffic,
            plan,
            lambda target: target,
            transport=recording_transport(seen),
            headers=auth_headers("k1"),
        )
    )
    assert run.kills and run.writes_acknowledged > 0
    paths = {path.rsplit("/", 1)[0] if path.count("/") > 2 else path for path, _ in seen}
    assert {"/v1/items", "/v1/health"} <= paths
    assert keys(seen) == {"Bearer k1"}


def test_a_sweep_sends_the_key_to_its_health_wait_and_its_load(server, traffic, tmp_path: Path):
    url, seen = server
    sc = scenario(users=[1], think_time_s=(0.01, 0.01), duration_s=0.4)
    results, error = asyncio.run(
        run_sweep(
            [SweepPoint(replicas=1, gpus=1, label="replicas=1")],
            lambda _point: Deployed(url),
            sc,
            traffic,
            out_dir=tmp_path,
            log=lambda _line: None,
            headers=auth_headers("k1"),
        )
    )
    assert error is None and results
    assert seen[0][0] == "/v1/health"
    assert keys(seen) == {"Bearer k1"}


def test_the_pipeline_bench_sends_the_key(server, traffic):
    from cluster.bench.pipeline import run_pipeline_bench

    url, seen = server
    rows = asyncio.run(
        run_pipeline_bench(
            url,
            traffic,
            concurrencies=[1],
            kinds=("floor", "user"),
            duration_s=0.3,
            warmup_s=0.0,
            api_key="k1",
        )
    )
    assert [r["kind"] for r in rows] == ["floor", "user"] and all(r["requests"] for r in rows)
    assert {path.split("/")[2] for path, _ in seen} == {"items", "recommend"}
    assert keys(seen) == {"Bearer k1"}


def test_llmrec_query_sends_the_flag_or_the_environments_key(server, monkeypatch):
    url, seen = server
    assert llmrec(["query", "--url", url, "--text", "space", "--api-key", "k-flag"]) == 0
    monkeypatch.setenv(API_KEY_ENV, "k-env")
    assert llmrec(["query", "--url", url, "--text", "space"]) == 0
    assert [auth for _, auth in seen] == ["Bearer k-flag", "Bearer k-env"]


def test_a_served_eval_sends_the_key(server):
    from deployments.evaluation import EvalOptions, _served_rankings
    from retrieval.split import Split

    url, seen = server
    opts = EvalOptions(url=url, api_key="k1", progress=False)
    split = Split(train=pa.table({}), histories={"u1": ["1"], "u2": ["2"]}, targets={"u1": "7"})
    rankings, _ = asyncio.run(_served_rankings(opts, split, ["u1", "u2"]))
    assert rankings == {"u1": ["7"], "u2": ["7"]}
    assert keys(seen) == {"Bearer k1"}
    assert "k1" not in repr(opts)


@pytest.mark.parametrize(
    "command", [["query"], ["demo"], ["loadtest"], ["eval"], ["chaos"], ["bench", "pipeline"]]
)
def test_every_client_command_documents_the_key(command, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--api-key KEY" in help_text and "(default: $LLMREC_API_KEY)" in help_text


def test_llmrec_eval_reads_the_key_from_the_environment(monkeypatch):
    from cluster.eval_cmd import _options

    monkeypatch.setenv(API_KEY_ENV, "k-env")
    args = parser().parse_args(["eval", "--data", "d", "--url", "http://127.0.0.1:9"])
    assert _options(args).api_key == "k-env"
    args = parser().parse_args(["eval", "--data", "d", "--api-key", "k1"])
    assert _options(args).api_key == "k1"
