"""Secrets kept in files, and user ids as logs may show them.

Application logs never carry a raw user id: `UserRefs` turns one into a keyed
hash (HMAC-SHA256, 16 hex characters). The same user gets the same reference
in every replica's log, so one user's lines can still be followed, but without
the key a reference cannot be turned back into the id by hashing guesses. The
key is `$LLMREC_LOG_KEY` or the file `.log_key` of the dataset folder (made
once, mode 600); erasing a user (`DELETE /v1/users/{id}`) leaves only these
references behind.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

__all__ = ["LOG_KEY_ENV", "UserRefs", "ensure_secret_file"]

LOG_KEY_ENV = "LLMREC_LOG_KEY"


def ensure_secret_file(path: Path) -> Path:
    """A secret file: made once (64 random hex characters), readable by its owner only.

    A file that exists already is kept (others may use it); only its mode is narrowed
    to 600.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


class UserRefs:
    """`refs(user_id)`: the keyed hash that stands for the user in logs."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the log key is empty")
        self._key = key

    @classmethod
    def for_data_dir(cls, data_dir: Path, environ: Mapping[str, str] = os.environ) -> UserRefs:
        """The key of `$LLMREC_LOG_KEY`, else of `data_dir/.log_key` (made when missing)."""
        if environ.get(LOG_KEY_ENV):
            return cls(environ[LOG_KEY_ENV].encode())
        return cls(ensure_secret_file(Path(data_dir) / ".log_key").read_bytes().strip())

    def __call__(self, user_id: str) -> str:
        return "u:" + hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:16]
