"""API keys of the HTTP API: where they come from, what each may do, how they are checked.

Keys live outside the Serve config: in a file (`router.api_keys_file`) or an
environment variable of the router replicas (`router.api_keys_env`), one entry
per line (or comma) as `<scope> <key>`. Scope `read` may recommend and get
items; `write` may also upsert, delete and post feedback. A request names its
key as `Authorization: Bearer <key>`: none or an unknown one is 401, a `read`
key on a write route 403. Every configured key is compared, in constant time,
so the answer's timing does not tell how much of a guess was right.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from deployments.errors import Forbidden, Unauthorized
from retrieval.config import RouterConfig, resolve_path

__all__ = ["SCOPES", "ApiKeys", "Scope"]

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
"""Each scope may do what the ones before it may."""


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys and their scopes; no keys means the API is open."""

    keys: tuple[tuple[bytes, Scope], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def parse(cls, text: str, source: str) -> ApiKeys:
        """Entries `<scope> <key>` separated by newlines or commas; ValueError names the bad one."""
        keys = []
        for n, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            scope, _, key = entry.partition(" ")
            key = key.strip()
            if scope not in SCOPES or not key or " " in key:
                raise ValueError(
                    f"{source}: entry {n}: write `read <key>` or `write <key>` (one key each)"
                )
            keys.append((key.encode(), scope))
        return cls(tuple(keys))

    @classmethod
    def from_config(cls, config: RouterConfig, environ: Mapping[str, str] = os.environ) -> ApiKeys:
        """The keys of `api_keys_file` and `api_keys_env` together; ValueError when a named
        source is missing or malformed (a replica must not start open by mistake)."""
        keys: tuple[tuple[bytes, Scope], ...] = ()
        if config.api_keys_file:
            path = resolve_path(config.api_keys_file)
            if not path.is_file():
                raise ValueError(f"router.api_keys_file: {path} does not exist")
            keys += cls.parse(path.read_text(), str(path)).keys
        if config.api_keys_env:
            if config.api_keys_env not in environ:
                raise ValueError(f"router.api_keys_env: ${config.api_keys_env} is not set")
            keys += cls.parse(environ[config.api_keys_env], f"${config.api_keys_env}").keys
        return cls(keys)

    def check(self, headers: Mapping[str, str], needed: Scope) -> None:
        """Pass when keys are off or the request's key has `needed` (or a wider) scope."""
        if not self.keys:
            return
        scheme, _, given = headers.get("authorization", "").partition(" ")
        token = given.strip().encode() if scheme.lower() == "bearer" else b""
        granted: Scope | None = None
        for key, scope in self.keys:  # every key, so the time does not depend on which matched
            if hmac.compare_digest(token, key) and (
                granted is None or SCOPES.index(scope) > SCOPES.index(granted)
            ):
                granted = scope
        if granted is None:
            raise Unauthorized("missing or invalid API key (Authorization: Bearer <key>)")
        if SCOPES.index(granted) < SCOPES.index(needed):
            raise Forbidden(f"this API key may not {needed}: it has the {granted!r} scope")
