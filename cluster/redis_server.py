"""A local `redis-server` run the way the README says to run the user store: durable.

AOF on with `appendfsync always` (an acknowledged write is on disk), no RDB
snapshots, bound to loopback on a free port, its files in `workdir`. Used by
`llmrec bench store` and by the tests, which also kill it (SIGKILL) and start
it again on the same files.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from cluster.bench.driver import free_port

__all__ = ["RedisServer"]


class RedisServer:
    """`redis-server` on 127.0.0.1 (a free port unless given), started at construction."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "no redis-server on PATH (Debian: apt-get install redis-server)"
            )
        self.binary, self.dir, self.port = binary, Path(workdir), port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self, wait_s: float = 10.0) -> None:
        """Start the server on its files and wait until it answers PING."""
        import redis

        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        args += ["--save", ""]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {wait_s:g}s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write; what it acknowledged is in its AOF."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
