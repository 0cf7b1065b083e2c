"""The API key every client command sends: `--api-key KEY`, else `$LLMREC_API_KEY`.

The service reads it from `Authorization: Bearer <key>`. The commands that talk
to it (`llmrec query`, `loadtest`, `eval --url`, `chaos`, `bench pipeline`) take
the flag with `add_api_key_argument`, resolve it with `api_key_from` and send
`auth_headers(key)` on every request. The key is never printed.
"""

from __future__ import annotations

import argparse
import os

__all__ = ["API_KEY_ENV", "add_api_key_argument", "api_key_from", "auth_headers"]

API_KEY_ENV = "LLMREC_API_KEY"


def api_key_from(flag: str | None) -> str | None:
    """The flag's key when given, else `$LLMREC_API_KEY`; None when neither is set or both empty."""
    return flag or os.environ.get(API_KEY_ENV) or None


def auth_headers(key: str | None) -> dict[str, str]:
    """`{"Authorization": "Bearer <key>"}`, or no headers without a key."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def add_api_key_argument(parser: argparse.ArgumentParser) -> None:
    """Add `--api-key KEY` to a command; its value goes through `api_key_from`."""
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"API key, sent as Authorization: Bearer KEY (default: ${API_KEY_ENV})",
    )
