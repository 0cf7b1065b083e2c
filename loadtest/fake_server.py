"""A stand-in for the llmrec HTTP API, for trying scenarios and testing the load tester.

It answers `POST /v1/recommend` in the API's shape after a simulated service
time, with at most `replicas` requests in service at once (more wait), so its
capacity is `replicas / service time` and sweeps over it scale the way a real
pool would. `GET /v1/items/{id}` answers any id at once (no service time),
`GET /v1/health` is always ready, `POST /v1/feedback` is a missing
route (404), `GET /_fake/stats` counts what arrived and `POST /_fake/config`
changes `replicas` / `service_ms` / `rerank_ms` / `explain_ms` while running.

    python -m loadtest.fake_server --port 8099 --replicas 2 --service-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeService", "main"]


@dataclass
class FakeService:
    """The ASGI app; every knob can change at run time through `/_fake/config`."""

    replicas: int = 1
    service_ms: float = 5.0
    rerank_ms: float = 20.0
    explain_ms: float = 40.0
    counts: Counter = field(default_factory=Counter)
    in_service: int = 0
    max_concurrency: int = 0
    _slots: asyncio.Semaphore | None = None
    _slot_count: int = 0

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None or self._slot_count != self.replicas:
            self._slots, self._slot_count = asyncio.Semaphore(self.replicas), self.replicas
        return self._slots

    async def _recommend(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if not (body.get("user_id") or body.get("history") or body.get("query")):
            return 422, {"error": {"type": "invalid_input", "message": "give a signal"}}
        t = time.perf_counter()
        timings = {"encode": self.service_ms * 0.4, "retrieve": self.service_ms * 0.6}
        delay = self.service_ms
        if body.get("rerank"):
            timings["rerank"] = self.rerank_ms
            delay += self.rerank_ms
        if body.get("explain"):
            timings["explain"] = self.explain_ms
            delay += self.explain_ms
        async with self._semaphore():
            self.in_service += 1
            self.max_concurrency = max(self.max_concurrency, self.in_service)
            try:
                await asyncio.sleep(delay / 1000.0)
            finally:
                self.in_service -= 1
        timings["total"] = round((time.perf_counter() - t) * 1000.0, 2)
        k = int(body.get("k", 10))
        items = [
            {"item_id": str(i), "title": f"Item {i}", "score": 1.0 / i, "sources": ["ann"]}
            for i in range(1, k + 1)
        ]
        return 200, {
            "items": items,
            "reranked": bool(body.get("rerank")),
            "degraded": [],
            "timings_ms": timings,
            "request_id": uuid.uuid4().hex,
        }

    async def _route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/v1/recommend":
            try:
                return await self._recommend(json.loads(body or b"{}"))
            except ValueError:
                return 422, {"error": {"type": "invalid_input", "message": "not JSON"}}
        if method == "GET" and path.startswith("/v1/items/"):
            item_id = path.removeprefix("/v1/items/")
            return 200, {
                "item_id": item_id,
                "title": f"Item {item_id}",
                "text": "",
                "categories": [],
            }
        if method == "GET" and path == "/v1/health":
            return 200, {"status": "ready", "checks": {"fake": "ok"}}
        if method == "GET" and path == "/_fake/stats":
            return 200, {
                "requests": dict(self.counts),
                "max_concurrency": self.max_concurrency,
                "replicas": self.replicas,
            }
        if method == "POST" and path == "/_fake/config":
            for key, value in json.loads(body or b"{}").items():
                if key in ("replicas", "service_ms", "rerank_ms", "explain_ms"):
                    setattr(self, key, type(getattr(self, key))(value))
            self.counts.clear()
            self.max_concurrency = 0
            return 200, {"replicas": self.replicas, "service_ms": self.service_ms}
        return 404, {"detail": "Not Found"}

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        if not path.startswith("/_fake"):
            self.counts[path] += 1
        status, payload = await self._route(method, path, body)
        data = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--service-ms", type=float, default=5.0)
    p.add_argument("--rerank-ms", type=float, default=20.0)
    p.add_argument("--explain-ms", type=float, default=40.0)
    args = p.parse_args(argv)
    app = FakeService(args.replicas, args.service_ms, args.rerank_ms, args.explain_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
