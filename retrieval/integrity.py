"""Files on disk: digests, atomic replacement, append-only logs, the error a bad file raises."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "IndexIntegrityError",
    "append_durably",
    "complete_lines",
    "file_lock",
    "fsync_dir",
    "replace_atomically",
    "sha256_of",
    "write_atomic",
]


log = logging.getLogger(__name__)


class IndexIntegrityError(RuntimeError):
    """A shard file is missing, corrupt or does not match the manifest or the encoder."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (made when missing): one holder at a time, across
    processes and across threads that open it separately."""
    with Path(path).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Have `write(tmp_name)` fill a temporary file beside `path`, fsync it, rename it over
    `path`: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: readers see old or new."""
    replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
    fsync_dir(Path(path).parent)


def append_durably(path: Path, data: bytes) -> None:
    """Append `data` to an append-only log and fsync; when this returns it survives a crash.

    When the write or the fsync fails (disk full, I/O error) the file is cut
    back to where it ended before, so no partial line is left for the next
    append to glue onto, and the error is raised: nothing was acknowledged.
    """
    with Path(path).open("ab") as f:
        good_end = f.tell()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError:
            _truncate(f, good_end)
            raise


def _truncate(f: BinaryIO, size: int) -> None:
    """Cut an open log back to `size` bytes; a failure here is logged (replay will cut it)."""
    try:
        f.truncate(size)
        os.fsync(f.fileno())
    except OSError as exc:
        log.error("%s: could not roll back a failed append: %s", f.name, exc)


def complete_lines(path: Path) -> list[bytes]:
    """The newline-terminated lines of an append-only log ([] when there is no file).

    A last line without its newline was cut off by an interrupted append (never
    acknowledged): it is logged and truncated away, so the next append starts a
    line of its own.
    """
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    if good_end < len(raw):
        log.warning(
            "%s: dropping an unterminated last line (%d bytes) left by an interrupted write",
            path,
            len(raw) - good_end,
        )
        with path.open("rb+") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    return raw[:good_end].splitlines()
