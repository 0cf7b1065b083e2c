"""An httpx transport that sends over aiohttp, for load generation at hundreds of requests/s.

The load tester speaks httpx (`httpx.AsyncClient`, `httpx.Response`); what moves
the bytes is pluggable. httpx's own pool (httpcore) spends CPU per request that
grows with the number of connections open, so an open-loop run past the
service's capacity, where answers slow and connections pile up, can saturate the
generator itself: the latencies it reports are then its own. aiohttp's
connector and C parser cost a fraction of that, so `LoadRunner` uses this
transport by default (`--client httpx` picks httpx's own).
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends each `httpx.Request` over one `aiohttp.ClientSession` of at most `limit` connections.

    Timeouts come from the request (httpx's `connect`/`read`/`pool`); aiohttp's
    failures are raised as the httpx exception of the same meaning, so callers
    handle one family. Bodies are passed through undecoded: httpx decodes them.
    """

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # A session binds the running event loop, so it is made on first use.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.limit, limit_per_host=self.limit),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        t = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=t.get("pool"),
            sock_connect=t.get("connect"),
            sock_read=t.get("read"),
        )
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "host"]
        try:
            async with self._client().request(
                request.method,
                str(request.url),
                headers=headers,
                data=await request.aread(),
                timeout=timeout,
                allow_redirects=False,
            ) as r:
                content = await r.read()
                return httpx.Response(
                    r.status,
                    headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in r.raw_headers],
                    content=content,
                    request=request,
                )
        except TimeoutError as exc:  # aiohttp's timeouts are asyncio's (a TimeoutError)
            raise httpx.ReadTimeout(str(exc) or "timed out", request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(str(exc), request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)  # lets aiohttp close its sockets before the loop ends
